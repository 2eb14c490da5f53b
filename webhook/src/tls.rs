//! The serving certificate: read with `rustls-pki-types`' `PemObject`, and reloaded when its
//! files change (cert-manager or `hack/webhook-certs.sh` rotate them) without a restart.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Loads a certificate chain and its key, naming the file and what is wrong.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("reading certificates from {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate file {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "certificate file {}: no PEM CERTIFICATE found",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("private key file {}: {e}", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| format!("private key file {}: {e}", key.display()))?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

/// Serves the latest good certificate; a reload that fails keeps the previous one.
pub struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    stamp: RwLock<(Option<SystemTime>, Option<SystemTime>)>,
}

impl fmt::Debug for Reloading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl Reloading {
    /// Loads the files once; fails if they cannot be used.
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Arc<Self>, String> {
        let current = load(&cert, &key)?;
        let stamp = (mtime(&cert), mtime(&key));
        Ok(Arc::new(Self {
            cert,
            key,
            current: RwLock::new(current),
            stamp: RwLock::new(stamp),
        }))
    }

    /// Reloads if either file changed since the last load. Returns whether it swapped.
    pub fn reload_if_changed(&self) -> bool {
        let now = (mtime(&self.cert), mtime(&self.key));
        if self.stamp.read().is_ok_and(|s| *s == now) {
            return false;
        }
        match load(&self.cert, &self.key) {
            Ok(ck) => {
                if let (Ok(mut c), Ok(mut s)) = (self.current.write(), self.stamp.write()) {
                    *c = ck;
                    *s = now;
                }
                tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                true
            }
            Err(e) => {
                // Often a half-written rotation: keep serving the old one and try again.
                tracing::warn!(error = %e, "serving certificate not reloaded; keeping the previous one");
                false
            }
        }
    }

    /// Checks the files every `period`, forever.
    pub fn watch(self: &Arc<Self>, period: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                this.reload_if_changed();
            }
        });
    }

    /// The certificate served now.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let (cp, kp) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cp, c.cert.pem()).unwrap();
        std::fs::write(&kp, c.signing_key.serialize_pem()).unwrap();
        (cp, kp)
    }

    #[test]
    fn reloads_a_rotated_certificate_and_keeps_the_old_one_on_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let (cp, kp) = write_cert(dir.path(), "one.example");
        let r = Reloading::new(cp.clone(), kp.clone()).unwrap();
        let first = r.current().unwrap().cert[0].clone();
        assert!(!r.reload_if_changed(), "nothing changed");

        std::thread::sleep(Duration::from_millis(20));
        write_cert(dir.path(), "two.example");
        assert!(r.reload_if_changed());
        let second = r.current().unwrap().cert[0].clone();
        assert_ne!(first, second);

        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&cp, "not a certificate").unwrap();
        assert!(!r.reload_if_changed());
        assert_eq!(
            r.current().unwrap().cert[0],
            second,
            "still the last good one"
        );
    }

    #[test]
    fn missing_files_are_named() {
        let err = load(
            Path::new("/nonexistent/tls.crt"),
            Path::new("/nonexistent/tls.key"),
        )
        .unwrap_err();
        assert!(err.contains("/nonexistent/tls.crt"), "{err}");
    }
}
