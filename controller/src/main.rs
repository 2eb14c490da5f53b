//! `kzscaler-controller`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kzscaler_controller::ManagedSpec;

/// kzscaler's controller: keeps the replica cache of managed Deployments, wakes them when a
/// filter calls activate (one scale PATCH however many callers), and serves the filter API.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address of the filter API, /healthz, /readyz and /metrics.
    #[arg(long, env = "KZSCALER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The cluster domain in Service host names.
    #[arg(long, default_value = "cluster.local")]
    domain: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check kzscaler.io/* Deployment annotations given as KEY=VALUE and print their settings.
    CheckAnnotations {
        /// Annotations, e.g. kzscaler.io/scale-to-zero=true kzscaler.io/idle-timeout=10m
        #[arg(required = true)]
        annotations: Vec<String>,
    },
}

fn check(pairs: &[String]) -> anyhow::Result<()> {
    let mut annotations = BTreeMap::new();
    for a in pairs {
        let (k, v) = a
            .split_once('=')
            .with_context(|| format!("argument {a:?} is not KEY=VALUE"))?;
        annotations.insert(k.to_owned(), v.to_owned());
    }
    match ManagedSpec::from_annotations(&annotations)? {
        Some(spec) => println!("{spec:#?}"),
        None => println!("not managed: kzscaler.io/scale-to-zero is not \"true\""),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::CheckAnnotations { annotations }) = &args.command {
        return check(annotations);
    }
    kzscaler_controller::watch::init_logging();
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes client: set KUBECONFIG or run in a cluster")?;
    kzscaler_controller::run::run(
        client,
        kzscaler_controller::run::Options {
            listen: args.listen,
            domain: args.domain,
        },
    )
    .await
}
