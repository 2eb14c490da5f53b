//! Envoy with only the kzscaler filter, from a static bootstrap: no control plane. For
//! component tests of the module in the real Envoy, and for benchmarks that feed one Envoy's
//! filter a controller of their own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};

use crate::testbed::{envoy_binary, filter_module};

/// A running Envoy, killed when dropped.
#[derive(Debug)]
pub struct Standalone {
    child: std::process::Child,
    /// The HTTP listener (the filter, then the router with an empty route table).
    pub listen: SocketAddr,
    /// The admin port.
    pub admin: SocketAddr,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
}

impl Standalone {
    /// Starts Envoy in `dir` with `concurrency` workers and the filter given `plugin_config`
    /// (the JSON a WasmPlugin's `pluginConfig` becomes). `controller`, when given, is a static
    /// cluster named [`CONTROLLER_CLUSTER`] for the filter's calls.
    pub fn start(
        dir: &Path,
        plugin_config: &str,
        concurrency: u32,
        controller: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        let (listen, admin) = (crate::kz::free_addr()?, crate::kz::free_addr()?);
        let socket = |a: SocketAddr| json!({"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}});
        let clusters: Vec<Value> = controller
            .map(|c| {
                json!({
                    "name": CONTROLLER_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {"cluster_name": CONTROLLER_CLUSTER, "endpoints": [
                        {"lb_endpoints": [{"endpoint": {"address": socket(c)}}]}]}
                })
            })
            .into_iter()
            .collect();
        let bootstrap = json!({
            "node": {"id": "filter-test", "cluster": "filter-test"},
            "admin": {"address": socket(admin)},
            "static_resources": {
                "clusters": clusters,
                "listeners": [{
                "name": "http",
                "address": socket(listen),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "http",
                        "route_config": {"name": "none", "virtual_hosts": []},
                        "http_filters": [
                            {"name": "kzscaler", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                                "config": {
                                    "name": "kzscaler", "root_id": "kzscaler",
                                    "vm_config": {"vm_id": "kzscaler", "runtime": "envoy.wasm.runtime.v8",
                                        "code": {"local": {"filename": filter_module()?}}},
                                    // As Istio passes a WasmPlugin's pluginConfig.
                                    "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin_config},
                                    "failure_policy": "FAIL_OPEN"
                                }}},
                            {"name": "envoy.filters.http.router", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                        ]
                    }
                }]}]
            }]}
        });
        let path = dir.join("bootstrap.json");
        std::fs::write(&path, serde_json::to_vec(&bootstrap)?)?;
        let log = dir.join("envoy.log");
        let out = std::fs::File::create(&log)?;
        let child = std::process::Command::new(envoy_binary()?)
            .arg("-c")
            .arg(&path)
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--disable-hot-restart", "--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(Self {
            child,
            listen,
            admin,
            log,
        })
    }

    /// Whether it has exited, and how.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The static cluster [`Standalone::start`] points at the controller it is given.
pub const CONTROLLER_CLUSTER: &str = "kzscaler-controller";
