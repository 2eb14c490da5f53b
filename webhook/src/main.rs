//! `kzscaler-webhook`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use kzscaler_webhook::admission::Policy;
use kzscaler_webhook::server::{App, Limits, router, serve};
use kzscaler_webhook::tls::Reloading;
use tokio::signal::unix::{SignalKind, signal};

/// kzscaler's admission webhook. Mutating (POST /mutate): pods created in namespaces labelled
/// kzscaler.io/injection=enabled get the label kzscaler.io/filter=true (which the namespace's
/// WasmPlugin selects) and the annotation kzscaler.io/wasmplugin=<ns>/<name>. Validating
/// (POST /validate): Deployments with unusable kzscaler.io/* annotations are refused with a
/// message naming the annotation, the value and what was expected.
#[derive(Debug, Parser)]
#[command(version = kzscaler_core::VERSION)]
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
    /// The shortest kzscaler.io/idle-timeout admitted (Go duration): at least the
    /// controller's drain period (its --drain-period-ms; by default 2.5s).
    #[arg(long, env = "KZSCALER_MIN_IDLE_TIMEOUT", default_value = "3s", value_parser = duration)]
    min_idle_timeout: Duration,
    /// Longest a client may take for its TLS handshake (Go duration).
    #[arg(long, default_value = "10s", value_parser = duration)]
    handshake_timeout: Duration,
    /// Most connections served at once; more wait in the listen backlog.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// On SIGTERM: how long reviews are still accepted (while /readyz says 503 and the
    /// endpoint goes), before accepting stops and in-flight reviews finish (Go duration).
    #[arg(long, default_value = "5s", value_parser = duration)]
    shutdown_delay: Duration,
}

fn duration(value: &str) -> Result<Duration, String> {
    kzscaler_core::parse_duration(value).map_err(|e| {
        format!(
            "{value:?} is not a Go duration like 5s or 1m30s: {}",
            e.reason
        )
    })
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
        policy: Policy {
            min_idle_timeout: args.min_idle_timeout,
        },
        draining: AtomicBool::new(false),
    });
    let mut sigterm = signal(SignalKind::terminate())?;
    let shutdown = {
        let app = app.clone();
        async move {
            tokio::select! {
                _ = sigterm.recv() => tracing::info!("SIGTERM"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
            }
            app.draining.store(true, Ordering::Relaxed);
        }
    };
    let limits = Limits {
        handshake_timeout: args.handshake_timeout,
        max_connections: args.max_connections,
        shutdown_delay: args.shutdown_delay,
        ..Limits::default()
    };
    serve(args.listen, certs, router(app), limits, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
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
