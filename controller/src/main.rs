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
        },
    )
    .await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
