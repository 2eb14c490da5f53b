//! `kzscaler-kubelet`: runs the containers of the test bed's (kwok) pods in network namespaces
//! of their own: test backends, forwards to local processes, and Istio sidecars.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use kzscaler_e2e::kubelet::{netns::Network, pods, sidecar::Istio};

/// Plays the kubelet of the test bed's fake nodes. Every running pod gets a network namespace
/// (`<prefix>-<address>`) on a bridge in `<prefix>-node`; its containers run there. Needs root
/// (it creates network namespaces) and iproute2.
#[derive(Debug, Parser)]
#[command(version = kzscaler_core::VERSION)]
struct Args {
    /// Folder for per-pod files and logs (`<dir>/<namespace>/<pod>/pilot-agent.log`).
    #[arg(long)]
    dir: PathBuf,
    /// Prefix of the network namespaces' names.
    #[arg(long, default_value = "kzscaler")]
    netns_prefix: String,
    /// Prefix length of the pod CIDR (kwok's --cidr).
    #[arg(long, default_value_t = 16)]
    pod_prefix_len: u8,
    /// pilot-agent, for `istio-proxy` containers.
    #[arg(long, requires_all = ["envoy", "bootstrap_template"])]
    pilot_agent: Option<PathBuf>,
    /// The Envoy binary pilot-agent starts.
    #[arg(long)]
    envoy: Option<PathBuf>,
    /// Istio's bootstrap template (tools/packaging/common/envoy_bootstrap.json).
    #[arg(long)]
    bootstrap_template: Option<PathBuf>,
    /// istiod's plaintext xDS address.
    #[arg(long, default_value = "127.0.0.1:15010")]
    discovery: String,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    domain: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kzscaler_controller::watch::init_logging();
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("--dir {}: cannot create it", args.dir.display()))?;
    let istio = match (args.pilot_agent, args.envoy, args.bootstrap_template) {
        (Some(agent), Some(envoy), Some(bootstrap_template)) => Some(Istio {
            agent,
            envoy,
            bootstrap_template,
            discovery: args.discovery,
            domain: args.domain,
        }),
        _ => None,
    };
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes client: set KUBECONFIG to the test bed's (source .local/env)")?;
    pods::run(
        client,
        pods::Options {
            network: Network {
                prefix: args.netns_prefix,
                prefix_len: args.pod_prefix_len,
            },
            dir: args.dir,
            istio,
        },
    )
    .await
}
