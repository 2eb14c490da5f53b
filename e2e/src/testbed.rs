//! What a test needs from a running test bed, found through `.local/env` (written by
//! `hack/local-up.sh`) or the same variables in the environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// A running test bed.
#[derive(Clone)]
pub struct TestBed {
    /// A client with the test bed's admin credentials.
    pub client: Client,
    /// host:port of the caller's sidecar (Istio's HTTP proxy listener).
    pub envoy: String,
    /// The test bed's state folder (logs are in `logs/`).
    pub state_dir: PathBuf,
    /// host:port of the kzscaler controller's filter API, when it runs.
    pub controller: Option<String>,
    /// host:port of the caller's Envoy admin interface.
    pub envoy_admin: Option<String>,
    /// The kubeconfig file.
    pub kubeconfig: PathBuf,
    /// The API server's URL (`KZSCALER_APISERVER`).
    pub apiserver: Option<String>,
    /// host:port of the test bed's OCI registry (`KZSCALER_REGISTRY`).
    pub registry: Option<String>,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for TestBed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBed")
            .field("envoy", &self.envoy)
            .field("state_dir", &self.state_dir)
            .finish()
    }
}

/// A response seen through Envoy.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers, lower-case names.
    pub headers: BTreeMap<String, String>,
    /// Body as text.
    pub body: String,
}

/// A test bed binary (`.local/bin/<name>`, linked by `hack/build-testbed.sh`): `envoy`, `kubectl`.
pub fn testbed_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = repo_root().join(".local/bin").join(name);
    if !path.is_file() {
        bail!("{} not found: run hack/build-testbed.sh", path.display());
    }
    Ok(path)
}

/// The test bed's Envoy.
pub fn envoy_binary() -> anyhow::Result<PathBuf> {
    testbed_binary("envoy")
}

/// The workspace's debug build of a binary (`cargo build` builds it; `hack/local-up.sh` does).
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = repo_root().join("target/debug").join(name);
    if !path.is_file() {
        bail!(
            "{} not found: run cargo build --bins (hack/local-up.sh does)",
            path.display()
        );
    }
    Ok(path)
}

/// The filter module built by `cargo build -p kzscaler-filter --target wasm32-wasip1 --profile wasm`.
pub fn filter_module() -> anyhow::Result<PathBuf> {
    let path = repo_root().join("target/wasm32-wasip1/wasm/kzscaler_filter.wasm");
    if !path.is_file() {
        bail!(
            "{} not found: build it with cargo build -p kzscaler-filter --target wasm32-wasip1 --profile wasm (hack/test.sh does)",
            path.display()
        );
    }
    Ok(path)
}

/// The repository this crate is in.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Reads `export KEY=VALUE` lines (values optionally single- or double-quoted).
pub fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("export ").unwrap_or(l);
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

impl TestBed {
    /// Connects to the running test bed, or says how to start one.
    pub async fn connect() -> anyhow::Result<Self> {
        let env_file = repo_root().join(".local/env");
        let file = std::fs::read_to_string(&env_file)
            .map(|t| parse_env_file(&t))
            .unwrap_or_default();
        let var = |k: &str| std::env::var(k).ok().or_else(|| file.get(k).cloned());
        let (Some(kubeconfig), Some(envoy), Some(state_dir)) = (
            var("KUBECONFIG"),
            var("KZSCALER_ENVOY"),
            var("KZSCALER_STATE_DIR"),
        ) else {
            bail!(
                "the test bed is not running: {} not found and KUBECONFIG, KZSCALER_ENVOY, \
                 KZSCALER_STATE_DIR not set. Start it with hack/local-up.sh",
                env_file.display()
            );
        };
        let kc = Kubeconfig::read_from(&kubeconfig)
            .with_context(|| format!("reading kubeconfig {kubeconfig}"))?;
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .with_context(|| format!("kubeconfig {kubeconfig}"))?;
        let client = Client::try_from(config)?;
        client
            .apiserver_version()
            .await
            .with_context(|| format!("the API server in {kubeconfig} does not answer: is the test bed up (hack/local-up.sh)?"))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = HttpClient::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            client,
            envoy,
            state_dir: PathBuf::from(state_dir),
            controller: var("KZSCALER_CONTROLLER"),
            envoy_admin: var("KZSCALER_ENVOY_ADMIN"),
            kubeconfig: PathBuf::from(kubeconfig),
            apiserver: var("KZSCALER_APISERVER"),
            registry: var("KZSCALER_REGISTRY"),
            http,
        })
    }

    /// The last `lines` lines of a test bed log (`logs/<name>.log`), for failure reports.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let path = self.state_dir.join("logs").join(format!("{name}.log"));
        match std::fs::read_to_string(&path) {
            Ok(t) => {
                let all: Vec<&str> = t.lines().collect();
                let from = all.len().saturating_sub(lines);
                format!(
                    "--- {} (last {} lines)\n{}\n",
                    path.display(),
                    lines,
                    all[from..].join("\n")
                )
            }
            Err(e) => format!("--- {}: {e}\n", path.display()),
        }
    }

    /// GET `path` through Envoy with this `Host`, HTTP/1.1, within `timeout`.
    pub async fn get(&self, host: &str, path: &str, timeout: Duration) -> anyhow::Result<Reply> {
        self.get_from(&self.envoy, host, path, timeout).await
    }

    /// GET `http://<addr><path>` with this `Host`, within `timeout`.
    pub async fn get_from(
        &self,
        addr: &str,
        host: &str,
        path: &str,
        timeout: Duration,
    ) -> anyhow::Result<Reply> {
        let req = http::Request::get(format!("http://{addr}{path}"))
            .header("host", host)
            .body(Full::new(Bytes::new()))?;
        let resp = tokio::time::timeout(timeout, self.http.request(req))
            .await
            .with_context(|| {
                format!("GET {path} (Host: {host}) through Envoy: no answer within {timeout:?}")
            })?
            .with_context(|| format!("GET {path} (Host: {host}) from {addr}"))?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = tokio::time::timeout(timeout, resp.into_body().collect())
            .await
            .context("reading the body through Envoy")??
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::parse_env_file;

    #[test]
    fn reads_the_env_file_local_up_writes() {
        let env = parse_env_file(
            "# written by hack/local-up.sh\nexport KUBECONFIG=\"/x/kubeconfig\"\nexport KZSCALER_ENVOY=127.0.0.1:15001\nexport PATH='/a:/b'\n",
        );
        assert_eq!(env["KUBECONFIG"], "/x/kubeconfig");
        assert_eq!(env["KZSCALER_ENVOY"], "127.0.0.1:15001");
        assert_eq!(env["PATH"], "/a:/b");
        assert_eq!(env.len(), 3);
    }
}
