//! The HTTPS server: axum routes behind rustls.
//!
//! | path | what |
//! |---|---|
//! | `POST /mutate` | Pod CREATE reviews |
//! | `POST /validate` | Deployment CREATE/UPDATE reviews |
//! | `GET /healthz`, `GET /readyz` | 200 `ok` (ready once a certificate is loaded) |
//! | `GET /metrics` | Prometheus text |

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use kube::core::admission::AdmissionResponse;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::admission::{self, Outcome};
use crate::metrics::Metrics;
use crate::tls::Reloading;

/// What the handlers share.
#[derive(Debug)]
pub struct App {
    /// Metrics.
    pub metrics: Metrics,
    /// The WasmPlugin name the annotation names.
    pub wasmplugin: String,
    /// What Deployment validation enforces.
    pub policy: admission::Policy,
    /// Set at shutdown: /readyz answers 503 so the endpoint goes while reviews still land.
    pub draining: AtomicBool,
}

fn review(resp: AdmissionResponse) -> Response {
    // Always 200 with a review: the API server reads the decision from the body.
    match serde_json::to_vec(&resp.into_review()) {
        Ok(b) => ([(header::CONTENT_TYPE, "application/json")], b).into_response(),
        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn log(kind: &'static str, outcome: Outcome) {
    match outcome {
        Outcome::Error => tracing::warn!(review = kind, "unreadable admission review"),
        Outcome::Denied => tracing::info!(review = kind, "denied"),
        _ => tracing::debug!(review = kind, result = outcome.label()),
    }
}

async fn mutate(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let (resp, outcome) = admission::mutate(&body, &app.wasmplugin);
    app.metrics.count("mutate", outcome);
    log("mutate", outcome);
    review(resp)
}

async fn validate(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let (resp, outcome) = admission::validate(&body, app.policy);
    app.metrics.count("validate", outcome);
    log("validate", outcome);
    review(resp)
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.draining.load(Ordering::Relaxed) {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n",
        )
            .into_response()
    } else {
        "ok\n".into_response()
    }
}

/// The routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/validate", post(validate))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(app): State<Arc<App>>| async move { app.metrics.encode() }),
        )
        .with_state(app)
}

/// Limits of the HTTPS server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest a client may take to finish its TLS handshake.
    pub handshake_timeout: Duration,
    /// Most connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// After the shutdown signal: how long reviews keep being accepted (the API server may
    /// still send some until the endpoint is gone), then how long in-flight ones may take.
    pub shutdown_delay: Duration,
    /// Longest wait for in-flight reviews once accepting stopped.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_connections: 1_024,
            shutdown_delay: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(20),
        }
    }
}

/// Serves `router` over TLS with the reloading certificate until `shutdown` completes; then
/// (after [`Limits::shutdown_delay`]) it stops accepting, asks open connections to close
/// once their request is answered, and returns when they have (or at
/// [`Limits::drain_timeout`]). A review in flight is never cut: failurePolicy Ignore would
/// admit its pod without the filter's label.
pub async fn serve(
    listen: SocketAddr,
    certs: Arc<Reloading>,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    tracing::info!(%listen, "serving admission reviews over TLS");
    serve_on(listener, certs, router, limits, shutdown).await;
    Ok(())
}

/// [`serve`] on a bound listener.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    certs: Arc<Reloading>,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let accepting = async {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            };
            let (acceptor, svc) = (acceptor.clone(), TowerToHyperService::new(router.clone()));
            let mut stop = stop_rx.clone();
            connections.spawn(async move {
                let _permit = permit;
                let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, timeout = ?limits.handshake_timeout, "TLS handshake timed out");
                        return;
                    }
                };
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // An HTTP/1 client that sends its headers too slowly gives its slot back (the
                // API server sends a review at once). One that sends nothing at all after its
                // handshake keeps its slot until it goes: protocol detection waits for it.
                builder
                    .http1()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(limits.handshake_timeout);
                let conn = builder.serve_connection(TokioIo::new(tls), svc);
                tokio::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
                        // Answer what is in flight, then close (GOAWAY / Connection: close).
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
            // Reap finished connections so the set does not grow with every one served.
            while connections.try_join_next().is_some() {}
        }
    };
    tokio::select! {
        () = accepting => {}
        () = async {
            shutdown.await;
            tracing::info!(delay = ?limits.shutdown_delay, "shutting down: still accepting reviews for the delay");
            tokio::time::sleep(limits.shutdown_delay).await;
        } => {}
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let open = connections.len();
    tracing::info!(open, timeout = ?limits.drain_timeout, "stopped accepting; finishing in-flight reviews");
    let drained = tokio::time::timeout(limits.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "drain timeout: closing the remaining connections"
        );
        connections.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Bed {
        addr: SocketAddr,
        connector: tokio_rustls::TlsConnector,
        _dir: tempfile::TempDir,
    }

    /// A server with a `/slow` route (400 ms) on 127.0.0.1, shut down by `stop`.
    async fn start(
        limits: Limits,
        stop: tokio::sync::oneshot::Receiver<()>,
    ) -> (Bed, tokio::task::JoinHandle<()>) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cp, kp) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cp, c.cert.pem()).unwrap();
        std::fs::write(&kp, c.signing_key.serialize_pem()).unwrap();
        let certs = Reloading::new(cp, kp).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(c.cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let router = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                "done\n"
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_on(listener, certs, router, limits, async {
            let _ = stop.await;
        }));
        let bed = Bed {
            addr,
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            _dir: dir,
        };
        (bed, server)
    }

    fn quick(limits: Limits) -> Limits {
        Limits {
            shutdown_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(5),
            ..limits
        }
    }

    #[tokio::test]
    async fn a_review_in_flight_at_shutdown_is_answered_and_then_the_server_stops() {
        let (stop_tx, stop) = tokio::sync::oneshot::channel();
        let (bed, server) = start(quick(Limits::default()), stop).await;
        let tcp = tokio::net::TcpStream::connect(bed.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = bed.connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"GET /slow HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = stop_tx.send(()); // SIGTERM while the review is in flight
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer))
            .await
            .expect("the connection is closed after the answer")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("done\n"),
            "{answer}"
        );
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve returns once drained")
            .unwrap();
        assert!(
            tokio::net::TcpStream::connect(bed.addr).await.is_err(),
            "no longer accepting"
        );
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_handshake_is_dropped() {
        let (_stop_tx, stop) = tokio::sync::oneshot::channel();
        let limits = quick(Limits {
            handshake_timeout: Duration::from_millis(200),
            max_connections: 1,
            ..Limits::default()
        });
        let (bed, _server) = start(limits, stop).await;
        let mut silent = tokio::net::TcpStream::connect(bed.addr).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
            .await
            .expect("closed by the server, not left open")
            .unwrap_or(0);
        assert_eq!(n, 0);
        // Its slot (max_connections 1) is free again: a real client is served.
        let tcp = tokio::net::TcpStream::connect(bed.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio::time::timeout(Duration::from_secs(5), bed.connector.connect(name, tcp))
            .await
            .expect("served once the silent client is gone");
        assert!(tls.is_ok());
    }
}
