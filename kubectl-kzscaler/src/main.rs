//! `kubectl-kzscaler`: kubectl finds it on PATH as the plugin `kubectl kzscaler`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kubectl_kzscaler::commands::{self, Output, Scope};

/// See and steer what kzscaler does: which Deployments sleep, why, and how long wakes take.
///
/// Everything goes through the API server (annotations, Events, pods), with your kubeconfig.
#[derive(Debug, Parser)]
#[command(name = "kubectl kzscaler", bin_name = "kubectl kzscaler", version = kzscaler_core::VERSION)]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The namespace (default: the context's, else "default").
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// Every namespace (status only).
    #[arg(short = 'A', long, global = true)]
    all_namespaces: bool,
    /// Output format of status: wide, json or yaml.
    #[arg(short, long, global = true, value_enum)]
    output: Option<Output>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One row per managed Deployment: state, replicas, idle timeout, last request, last
    /// sleep and last wake; then, per namespace, who carries the filter.
    Status,
    /// Wake an asleep Deployment now (the controller scales it up).
    Wake {
        /// The Deployment.
        name: String,
        /// Return without waiting for a ready replica.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Put an awake Deployment to sleep now (after the usual drain; a request cancels it).
    Sleep {
        /// The Deployment.
        name: String,
        /// Return without waiting for 0 replicas.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Keep a Deployment awake: it is never put to sleep (kzscaler.io/paused: "true").
    Pause {
        /// The Deployment.
        name: String,
    },
    /// Let a paused Deployment sleep again when idle.
    Resume {
        /// The Deployment.
        name: String,
    },
    /// Why a Deployment is in its state: timeouts, last request and wake, HPA, Events.
    Explain {
        /// The Deployment.
        name: String,
    },
}

async fn scope(args: &Args) -> anyhow::Result<Scope> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options).await?
        }
        None => kube::Config::from_kubeconfig(&options)
            .await
            .context("no kubeconfig: set KUBECONFIG or pass --kubeconfig")?,
    };
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    Ok(Scope {
        client: kube::Client::try_from(config)?,
        namespace,
        all: args.all_namespaces,
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
    let scope = scope(&args).await?;
    let wait = |no_wait: bool, secs: u64| (!no_wait).then(|| Duration::from_secs(secs));
    match &args.command {
        Command::Status => commands::status(&scope, args.output).await,
        Command::Wake {
            name,
            no_wait,
            timeout,
        } => commands::wake(&scope, name, wait(*no_wait, *timeout)).await,
        Command::Sleep {
            name,
            no_wait,
            timeout,
        } => commands::sleep(&scope, name, wait(*no_wait, *timeout)).await,
        Command::Pause { name } => commands::pause(&scope, name, true).await,
        Command::Resume { name } => commands::pause(&scope, name, false).await,
        Command::Explain { name } => commands::explain_one(&scope, name).await,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}
