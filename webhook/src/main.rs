//! `kzscaler-webhook`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kzscaler_webhook::server::{App, router, serve};
use kzscaler_webhook::tls::Reloading;

/// kzscaler's admission webhook. Mutating (POST /mutate): pods created in namespaces labelled
/// kzscaler.io/injection=enabled get the label kzscaler.io/filter=true (which the namespace's
/// WasmPlugin selects) and the annotation kzscaler.io/wasmplugin=<ns>/<name>. Validating
/// (POST /validate): Deployments with unusable kzscaler.io/* annotations are refused with a
/// message naming the annotation, the value and what was expected.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// HTTPS address.
    #[arg(long, env = "KZSCALER_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// PEM certificate chain (reloaded when it changes).
    #[arg(
        long,
        env = "KZSCALER_WEBHOOK_TLS_CERT",
        default_value = "/etc/kzscaler/tls/tls.crt"
    )]
    tls_cert: PathBuf,
    /// PEM private key (reloaded when it changes).
    #[arg(
        long,
        env = "KZSCALER_WEBHOOK_TLS_KEY",
        default_value = "/etc/kzscaler/tls/tls.key"
    )]
    tls_key: PathBuf,
    /// How often the certificate files are checked for changes, in seconds.
    #[arg(long, default_value_t = 5)]
    reload_seconds: u64,
    /// Name of the WasmPlugin the controller keeps in each opted-in namespace.
    #[arg(long, default_value = kzscaler_webhook::admission::WASMPLUGIN_NAME)]
    wasmplugin: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber_init();
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs =
        Reloading::new(args.tls_cert.clone(), args.tls_key.clone()).map_err(anyhow::Error::msg)?;
    certs.watch(Duration::from_secs(args.reload_seconds.max(1)));
    let app = Arc::new(App {
        metrics: Default::default(),
        wasmplugin: args.wasmplugin,
    });
    tokio::select! {
        r = serve(args.listen, certs, router(app)) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

fn tracing_subscriber_init() {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}
