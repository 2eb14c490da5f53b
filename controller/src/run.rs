//! Wiring: watches feed the cache, the API server does the scaling, axum serves filters.
//!
//! ```text
//!  watch Deployments ─┐
//!  watch Services ────┤ reflector stores ──changed──▶ rebuild (cache.rs) ──▶ Cache + version
//!  watch EndpointSlices┤                                   │                 │
//!  watch HPAs ────────┘                          Events for problems      activate waiters
//! ```

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector;
use kube::{Api, Client, Resource};
use kzscaler_core::wire::State;
use serde_json::json;
use tokio::sync::{Notify, RwLock, watch};

use crate::activate::{Activator, Scaler, WakeRecord};
use crate::api::{self, Api as HttpApi};
use crate::cache::{Built, Cache, Key, Problem};
use crate::metrics::Metrics;
use crate::watch::spawn_reflector;

use kzscaler_core::names;
pub use kzscaler_core::names::LAST_WAKE;

/// Options of the controller process.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the filter API, health and metrics listen.
    pub listen: SocketAddr,
    /// The cluster domain of Service host names.
    pub domain: String,
    /// The filter module to serve on `/v1/module`.
    pub module: Option<Arc<Vec<u8>>>,
    /// WasmPlugin management, when on.
    pub wasmplugin: Option<(crate::wasmplugin::Settings, Duration)>,
    /// How long a Deployment stays draining before it is scaled to 0 (at least two filter
    /// poll periods).
    pub drain_period: Duration,
}

/// Scales and records through the API server.
#[derive(Clone)]
pub struct KubeScaler {
    client: Client,
    recorder: Recorder,
}

impl std::fmt::Debug for KubeScaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeScaler")
    }
}

fn reporter() -> Reporter {
    Reporter {
        controller: "kzscaler-controller".into(),
        instance: std::env::var("POD_NAME").ok(),
    }
}

impl Scaler for KubeScaler {
    async fn scale(&self, key: &Key, replicas: u32) -> Result<(), String> {
        Api::<Deployment>::namespaced(self.client.clone(), &key.namespace)
            .patch_scale(
                &key.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn record_wake(&self, key: &Key, wake: &WakeRecord) {
        let api = Api::<Deployment>::namespaced(self.client.clone(), &key.namespace);
        let value = serde_json::to_string(wake).unwrap_or_default();
        let patch = json!({"metadata": {"annotations": {LAST_WAKE: value, names::STATE: "awake"}}});
        let dep = match api
            .patch(&key.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(deployment = %key, error = %e, "could not record the wake on the Deployment");
                return;
            }
        };
        let fmt = |ms: Option<u64>| ms.map_or("not seen".to_owned(), |ms| format!("{ms}ms"));
        let note = format!(
            "woke to {} replica{}: scale call {}ms, first pod ready {}, endpoint ready {}",
            wake.replicas,
            if wake.replicas == 1 { "" } else { "s" },
            wake.scale_ms,
            fmt(wake.pod_ready_ms),
            fmt(wake.endpoint_ready_ms)
        );
        let ev = Event {
            type_: EventType::Normal,
            reason: "Woke".into(),
            note: Some(note),
            action: "Wake".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &dep.object_ref(&())).await {
            tracing::warn!(deployment = %key, error = %e, "could not publish the Woke event");
        }
    }

    async fn sleep(&self, key: &Key, replicas: u32, idle_ms: u64) -> Result<(), String> {
        let api = Api::<Deployment>::namespaced(self.client.clone(), &key.namespace);
        let at = k8s_openapi::jiff::Timestamp::now().to_string();
        let patch = json!({"metadata": {"annotations": {
            names::STATE: "asleep",
            names::REPLICAS_BEFORE_SLEEP: replicas.to_string(),
            names::SLEPT_AT: at,
        }}});
        let dep = api
            .patch(&key.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(|e| format!("recording the sleep on {key}: {e}"))?;
        self.scale(key, 0).await?;
        let ev = Event {
            type_: EventType::Normal,
            reason: "Slept".into(),
            note: Some(format!(
                "no activity for {:.1}s: scaled {replicas} -> 0; a request will wake it to {replicas}",
                idle_ms as f64 / 1000.0
            )),
            action: "Sleep".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &dep.object_ref(&())).await {
            tracing::warn!(deployment = %key, error = %e, "could not publish the Slept event");
        }
        Ok(())
    }
}

/// Runs the controller until SIGTERM or SIGINT.
pub async fn run(client: Client, opts: Options) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
    let cache = Arc::new(RwLock::new(Cache::starting_at(start_ms)));
    let (changes_tx, changes_rx) = watch::channel(0u64);
    let ready = Arc::new(AtomicBool::new(false));
    let recorder = Recorder::new(client.clone(), reporter());
    let scaler = Arc::new(KubeScaler {
        client: client.clone(),
        recorder: recorder.clone(),
    });
    let activator = Activator::new(cache.clone(), changes_rx, scaler.clone(), metrics.clone());
    let idle = Arc::new(crate::sleep::Idle::default());

    let (deps, deps_w) = reflector::store::<Deployment>();
    let (svcs, svcs_w) = reflector::store::<Service>();
    let (slices, slices_w) = reflector::store::<EndpointSlice>();
    let (hpas, hpas_w) = reflector::store::<HorizontalPodAutoscaler>();
    let changed = Arc::new(Notify::new());
    spawn_reflector(
        deps_w,
        Api::all(client.clone()),
        changed.clone(),
        "deployments",
    );
    spawn_reflector(
        svcs_w,
        Api::all(client.clone()),
        changed.clone(),
        "services",
    );
    spawn_reflector(
        slices_w,
        Api::all(client.clone()),
        changed.clone(),
        "endpointslices",
    );
    spawn_reflector(
        hpas_w,
        Api::all(client.clone()),
        changed.clone(),
        "horizontalpodautoscalers",
    );

    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    let app = api::router(Arc::new(HttpApi {
        cache: cache.clone(),
        activator,
        metrics: metrics.clone(),
        ready: ready.clone(),
        module: opts.module.clone(),
        idle: idle.clone(),
    }));
    tokio::spawn(
        crate::sleep::Sleeper {
            cache: cache.clone(),
            changes: changes_tx.clone(),
            scaler,
            idle,
            drain_period: opts.drain_period,
        }
        .run(),
    );
    if let Some((settings, resync)) = opts.wasmplugin.clone() {
        tokio::spawn(crate::wasmplugin::run(
            client.clone(),
            Arc::new(settings),
            resync,
        ));
    }
    tracing::info!(listen = %opts.listen, "serving the filter API, /healthz, /readyz and /metrics");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    {
        let (d, s, e, h) = (deps.clone(), svcs.clone(), slices.clone(), hpas.clone());
        let ready = ready.clone();
        tokio::spawn(async move {
            let all = async {
                d.wait_until_ready().await?;
                s.wait_until_ready().await?;
                e.wait_until_ready().await?;
                h.wait_until_ready().await
            };
            match all.await {
                Ok(()) => {
                    ready.store(true, Ordering::Relaxed);
                    tracing::info!("first lists in: ready");
                }
                Err(e) => tracing::error!(error = %e, "a watch ended before its first list"),
            }
        });
    }

    let mut reported: BTreeSet<Problem> = BTreeSet::new();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            () = changed.notified() => {}
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        // Let a burst of watch events land before rebuilding.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let built = Built::from_objects(
            &deps.state(),
            &svcs.state(),
            &slices.state(),
            &hpas.state(),
            &opts.domain,
        );
        let fresh = {
            let mut c = cache.write().await;
            if c.update(built) {
                tracing::debug!(
                    version = c.snapshot().version,
                    destinations = c.snapshot().destinations.len(),
                    "snapshot changed"
                );
            }
            let mut counts = [
                ("awake", 0i64),
                ("draining", 0),
                ("asleep", 0),
                ("waking", 0),
            ];
            for d in &c.snapshot().destinations {
                let i = match d.state {
                    State::Awake => 0,
                    State::Draining => 1,
                    State::Asleep => 2,
                    State::Waking => 3,
                };
                counts[i].1 += 1;
            }
            metrics.destinations(counts);
            c.new_problems(&mut reported)
        };
        changes_tx.send_modify(|v| *v += 1);
        for (p, reference) in fresh {
            tracing::warn!(kind = p.kind, object = %p.key, reason = p.reason, message = %p.message, "skipping a misconfigured object");
            let ev = Event {
                type_: EventType::Warning,
                reason: p.reason.into(),
                note: Some(p.message.clone()),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&ev, &reference).await {
                tracing::warn!(object = %p.key, error = %e, "could not publish an event");
            }
        }
    }
    tracing::info!("stopping");
    server.abort();
    Ok(())
}
