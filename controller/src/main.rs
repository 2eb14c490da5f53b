//! `kzscaler-controller`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kzscaler_controller::ManagedSpec;
use sha2::Digest as _;

/// kzscaler's controller: keeps the replica cache of managed Deployments, wakes them when a
/// filter calls activate (one scale PATCH however many callers), and serves the filter API.
#[derive(Debug, Parser)]
#[command(version = kzscaler_core::VERSION)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address of the filter API, /healthz, /readyz and /metrics.
    #[arg(long, env = "KZSCALER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The cluster domain in Service host names.
    #[arg(long, default_value = "cluster.local")]
    domain: String,
    /// The filter's .wasm: served on /v1/module, and its sha256 goes into the WasmPlugins.
    #[arg(long, env = "KZSCALER_MODULE_FILE")]
    module_file: Option<PathBuf>,
    /// Where sidecars fetch the module from (the WasmPlugin's url): this controller's
    /// /v1/module by default, or an oci:// image (then give --module-sha256 or none).
    #[arg(
        long,
        env = "KZSCALER_MODULE_URL",
        default_value = "http://kzscaler-controller.kzscaler-system.svc:8080/v1/module"
    )]
    module_url: String,
    /// The module's sha256 (hex), when --module-file is not given.
    #[arg(long, env = "KZSCALER_MODULE_SHA256")]
    module_sha256: Option<String>,
    /// The filter's plugin configuration (JSON) carried by the WasmPlugins.
    #[arg(long, env = "KZSCALER_PLUGIN_CONFIG", default_value = "{}")]
    plugin_config: String,
    /// Do not create WasmPlugins in opted-in namespaces.
    #[arg(long)]
    no_wasmplugins: bool,
    /// How often WasmPlugins are compared with what they should be, in seconds.
    #[arg(long, default_value_t = 10)]
    wasmplugin_resync_seconds: u64,
    /// How long a Deployment is marked draining before it is scaled to 0, in ms. Default:
    /// two filter poll periods (from --plugin-config) plus 500 ms.
    #[arg(long)]
    drain_period_ms: Option<u64>,
    /// Act without leader election (only ever run one replica then).
    #[arg(long)]
    no_leader_elect: bool,
    /// The Lease that elects the one replica that acts.
    #[arg(long, default_value = kzscaler_core::names::LEASE_NAME)]
    lease_name: String,
    /// The Lease's namespace (default: this pod's namespace, else kzscaler-system).
    #[arg(long, env = "POD_NAMESPACE", default_value = kzscaler_core::names::SYSTEM_NAMESPACE)]
    lease_namespace: String,
    /// How long a leader that stopped renewing keeps the Lease, in seconds (the longest
    /// failover).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_duration_seconds: u64,
    /// This replica's name in the Lease and in Events (default: the pod name, else
    /// <hostname>-<pid>).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Label this pod (POD_NAMESPACE/POD_NAME from the downward API) kzscaler.io/leader=true
    /// while it leads; the controller's Service selects that label.
    #[arg(long)]
    label_pod: bool,
    /// Manage only Deployments and WasmPlugins in namespaces this label selector matches
    /// (e.g. `team=shop`, `!legacy`); all namespaces by default.
    #[arg(long)]
    namespace_selector: Option<String>,
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
    let plugin_config: serde_json::Value =
        serde_json::from_str(&args.plugin_config).with_context(|| {
            format!(
                "--plugin-config {:?}: not JSON (expected e.g. {{\"poll_period_ms\": 1000}})",
                args.plugin_config
            )
        })?;
    let module = match &args.module_file {
        Some(p) => Some(Arc::new(
            std::fs::read(p).with_context(|| format!("--module-file {}", p.display()))?,
        )),
        None => None,
    };
    let sha256 = match (&module, &args.module_sha256) {
        (Some(bytes), _) => Some(hex(&sha2::Sha256::digest(bytes.as_slice()))),
        (None, Some(s)) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(s.to_lowercase())
        }
        (None, Some(s)) => anyhow::bail!("--module-sha256 {s:?}: expected 64 hex digits"),
        (None, None) => None,
    };
    let wasmplugin = (!args.no_wasmplugins).then(|| {
        (
            kzscaler_controller::wasmplugin::Settings {
                url: args.module_url.clone(),
                sha256,
                plugin_config: plugin_config.clone(),
            },
            Duration::from_secs(args.wasmplugin_resync_seconds.max(1)),
        )
    });
    let poll_ms = plugin_config
        .get("poll_period_ms")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(1_000);
    let drain_period = Duration::from_millis(args.drain_period_ms.unwrap_or(2 * poll_ms + 500));
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "kzscaler-controller".to_owned());
        format!("{host}-{}", std::process::id())
    });
    let election = (!args.no_leader_elect).then(|| kzscaler_controller::lease::Settings {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        identity: identity.clone(),
        duration: Duration::from_secs(args.lease_duration_seconds),
    });
    let pod = if args.label_pod {
        match (std::env::var("POD_NAMESPACE"), &args.identity) {
            (Ok(ns), Some(name)) => Some((ns, name.clone())),
            _ => anyhow::bail!(
                "--label-pod needs POD_NAMESPACE and POD_NAME (or --identity) set to this pod's namespace and name"
            ),
        }
    } else {
        None
    };
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes client: set KUBECONFIG or run in a cluster")?;
    kzscaler_controller::run::run(
        client,
        kzscaler_controller::run::Options {
            listen: args.listen,
            domain: args.domain,
            module,
            wasmplugin,
            drain_period,
            identity,
            election,
            pod,
            namespace_selector: args.namespace_selector,
        },
    )
    .await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
