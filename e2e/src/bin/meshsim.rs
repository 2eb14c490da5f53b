//! `kzscaler-meshsim`: plays istiod and kubelet for the data path of the local test bed.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use kzscaler_e2e::meshsim::{envoy::WasmFilter, run};

/// Keeps a real Envoy configured like the outbound side of an Istio sidecar, from the test
/// bed's Services and EndpointSlices, and runs a real HTTP or gRPC backend for every ready
/// endpoint. Reach a Service through Envoy with `curl -H 'Host: web.ns' http://LISTEN/`.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Folder for Envoy's bootstrap, CDS/RDS/EDS files and log.
    #[arg(long, env = "MESHSIM_DIR")]
    dir: PathBuf,
    /// The Envoy binary.
    #[arg(long, default_value = "envoy")]
    envoy: PathBuf,
    /// Envoy's HTTP listener (HTTP/1.1 and h2c).
    #[arg(long, default_value = "127.0.0.1:15001")]
    listen: SocketAddr,
    /// Envoy's admin interface.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// The cluster domain of Service host names.
    #[arg(long, default_value = "cluster.local")]
    domain: String,
    /// A Wasm module to load as the HTTP filter (the kzscaler filter).
    #[arg(long)]
    wasm: Option<PathBuf>,
    /// The plugin configuration (JSON) for --wasm, as a WasmPlugin's pluginConfig would carry it.
    #[arg(long, default_value = "{}", requires = "wasm")]
    plugin_config: String,
    /// Envoy worker threads.
    #[arg(long, default_value_t = 2)]
    concurrency: u32,
    /// Write Envoy's pid to this file (the test bed stops Envoy by it).
    #[arg(long)]
    envoy_pid_file: Option<PathBuf>,
    /// The kzscaler controller's filter API (host:port); Envoy reaches it through the cluster
    /// outbound|8080||kzscaler-controller.kzscaler-system.svc.cluster.local, as a sidecar would.
    /// Repeat it for several replicas: Envoy then sends to the one whose /leaderz answers 200,
    /// as the controller's Service selects the leader's pod in a cluster.
    #[arg(long)]
    controller: Vec<SocketAddr>,
    /// Also play the inbound side of a pod of a Deployment: NAMESPACE/DEPLOYMENT=ADDR puts
    /// Istio's node metadata (NAMESPACE, WORKLOAD_NAME) in the bootstrap and an inbound
    /// listener on ADDR in front of an application backend.
    #[arg(long, value_parser = parse_pod)]
    pod: Option<(String, String, SocketAddr)>,
}

fn parse_pod(s: &str) -> Result<(String, String, SocketAddr), String> {
    let expected = "expected NAMESPACE/DEPLOYMENT=HOST:PORT, e.g. shop/web=127.0.0.1:15006";
    let (workload, addr) = s.split_once('=').ok_or(format!("{s:?}: {expected}"))?;
    let (ns, deployment) = workload
        .split_once('/')
        .ok_or(format!("{s:?}: {expected}"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("{s:?}: address {addr:?}: {e}; {expected}"))?;
    Ok((ns.to_owned(), deployment.to_owned(), addr))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kzscaler_controller::watch::init_logging();
    let args = Args::parse();
    if let Some(w) = &args.wasm
        && !w.is_file()
    {
        anyhow::bail!("--wasm {}: no such file", w.display());
    }
    if serde_json::from_str::<serde_json::Value>(&args.plugin_config).is_err() {
        anyhow::bail!("--plugin-config {:?}: not JSON", args.plugin_config);
    }
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes client: set KUBECONFIG to the test bed's (source .local/env)")?;
    run::run(
        client,
        run::Options {
            dir: args.dir,
            envoy: args.envoy,
            listen: args.listen,
            admin: args.admin,
            domain: args.domain,
            wasm: args.wasm.map(|module| WasmFilter {
                module,
                config: args.plugin_config,
            }),
            concurrency: args.concurrency,
            envoy_pid_file: args.envoy_pid_file,
            controller: args.controller,
            pod: args.pod,
        },
    )
    .await
}
