//! Watches that keep a reflector store current and say when anything changed. Shared by the
//! controller and the test bed's kubelet.

use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Resource};
use tokio::sync::Notify;

/// Keeps `writer`'s store in step with `api` (all objects), with the default backoff on
/// errors, and notifies `changed` after every applied or deleted object. Errors are logged
/// with `what` and retried, never fatal.
pub fn spawn_reflector<K>(
    writer: reflector::store::Writer<K>,
    api: Api<K>,
    changed: Arc<Notify>,
    what: &'static str,
) where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    spawn_reflector_with(writer, api, watcher::Config::default(), changed, what);
}

/// [`spawn_reflector`] for the objects `config` selects (e.g. by label).
pub fn spawn_reflector_with<K>(
    writer: reflector::store::Writer<K>,
    api: Api<K>,
    config: watcher::Config,
    changed: Arc<Notify>,
    what: &'static str,
) where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let stream = reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .touched_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!(what, error = %e, "watch error; retrying"),
            }
        }
    });
}

/// Logs to standard error, colour only on a terminal; `RUST_LOG` overrides `info,kube=warn`.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
}
