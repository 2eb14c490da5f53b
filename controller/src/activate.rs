//! `activate`: wake the Deployment behind a destination, once, however many callers ask.
//!
//! ```text
//!  caller 1 ─┐                        ┌─ first caller for an asleep Deployment:
//!  caller 2 ─┼─ activate(cluster) ──▶ │  one WakeOp: PATCH deployments/scale, then watch
//!  caller N ─┘        │               └─ the cache for pod ready and endpoint ready
//!                     └── everyone waits on cache changes until a ready endpoint or the deadline
//! ```

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use kzscaler_core::wire::State;
use tokio::sync::{RwLock, watch};

use crate::cache::{Cache, Key};
use crate::metrics::Metrics;

/// What a wake does to the cluster. The real one talks to the API server (`run.rs`).
pub trait Scaler: Send + Sync + 'static {
    /// Wakes `key`: sets `deployments/scale` to `replicas` if it is still at 0 (a
    /// compare-and-swap on the scale's resourceVersion; already scaled up is success).
    fn scale(&self, key: &Key, replicas: u32) -> impl Future<Output = crate::Result<()>> + Send;
    /// Records a finished wake on the Deployment (annotation and Event).
    fn record_wake(&self, key: &Key, wake: &WakeRecord) -> impl Future<Output = ()> + Send;
    /// Puts `key` to sleep: records `replicas` to wake back to, then scales to 0, only if
    /// the Deployment is still at the `resource_version` the decision was made on (anything
    /// written since, a wake by another leader included, refuses it:
    /// [`crate::Error::StaleSleep`]).
    fn sleep(&self, key: &Key, how: Sleep<'_>) -> impl Future<Output = crate::Result<()>> + Send;
    /// Merges `annotations` (`null` removes one) into the Deployment's, and publishes `note`
    /// as an Event about it.
    fn annotate(
        &self,
        key: &Key,
        annotations: serde_json::Value,
        note: Option<Note>,
    ) -> impl Future<Output = crate::Result<()>> + Send;
}

/// A sleep as decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sleep<'a> {
    /// The replicas a wake restores.
    pub replicas: u32,
    /// How long it was idle, in ms (0: asked to sleep).
    pub idle_ms: u64,
    /// When the last request was seen (wall ms), if one was since the controller started.
    pub last_request: Option<u64>,
    /// The Deployment's resourceVersion the decision was made on.
    pub resource_version: &'a str,
}

/// An Event to publish about a Deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Warning rather than Normal.
    pub warning: bool,
    /// The Event's reason, e.g. `StateCorrected`.
    pub reason: &'static str,
    /// The Event's message, with the numbers.
    pub message: String,
}

/// How long a wake took, phase by phase, from the first activate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WakeRecord {
    /// Replicas asked for.
    pub replicas: u32,
    /// Until the scale PATCH returned.
    pub scale_ms: u64,
    /// Until the Deployment reported a ready replica.
    pub pod_ready_ms: Option<u64>,
    /// Until an EndpointSlice listed a ready endpoint.
    pub endpoint_ready_ms: Option<u64>,
}

/// The answer to one activate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A ready endpoint exists.
    Ready,
    /// Not a managed destination.
    NotManaged,
    /// The deadline passed first; the state then.
    TimedOut(State),
    /// The scale call failed.
    ScaleFailed(String),
}

/// Coalesces activations: at most one wake in flight per Deployment.
#[derive(Debug)]
pub struct Activator<S> {
    cache: Arc<RwLock<Cache>>,
    changes: watch::Receiver<u64>,
    scaler: Arc<S>,
    inflight: Mutex<HashMap<Key, Arc<WakeOp>>>,
    metrics: Arc<Metrics>,
}

/// A wake in flight; how it ends is published to everyone waiting on it.
#[derive(Debug)]
struct WakeOp {
    state: watch::Sender<OpState>,
    /// The Deployment's uid: one created again under the same name does not join it.
    uid: String,
    /// The pods of the ready endpoints when it began: the Deployment was at 0 replicas, so
    /// they are on their way out (the EndpointSlices lag the scale to 0). Only an endpoint of
    /// another pod makes this wake ready, until [`STALE_GRACE`] has passed.
    stale: BTreeSet<String>,
    began: Instant,
}

/// How long the pods ready when a wake began are taken for pods on their way out. A scale to
/// 0 and the wake's scale back up can follow each other so closely that the Deployment
/// controller never removes the pod (seen on the test bed: 12 ms apart); its endpoint then
/// stays ready, where a pod being deleted loses its ready condition within this time.
pub const STALE_GRACE: Duration = Duration::from_secs(2);

impl WakeOp {
    /// Whether a ready endpoint of `pod` makes this wake ready.
    fn counts(&self, pod: &str) -> bool {
        !self.stale.contains(pod) || self.began.elapsed() >= STALE_GRACE
    }

    /// How long until stale pods count, when some are ready now: the waits must end then.
    fn grace_left(&self, ready: &BTreeSet<String>) -> Option<Duration> {
        let left = STALE_GRACE.saturating_sub(self.began.elapsed());
        (!left.is_zero() && ready.iter().any(|p| self.stale.contains(p))).then_some(left)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OpState {
    Running,
    /// The scale call failed.
    Failed(String),
    /// Ended: ready, timed out, or scaled back to 0 under it (then the next activate scales
    /// again).
    Ended,
}

impl<S: Scaler> Activator<S> {
    /// `changes` ticks whenever the cache is updated.
    pub fn new(
        cache: Arc<RwLock<Cache>>,
        changes: watch::Receiver<u64>,
        scaler: Arc<S>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            cache,
            changes,
            scaler,
            inflight: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Wakes the destination's Deployment if it sleeps, and waits for a ready endpoint of the
    /// destination's own Service, of a pod of this wake, for at most `deadline` (capped at the
    /// destination's wake timeout).
    pub async fn activate(self: &Arc<Self>, cluster: &str, deadline: Duration) -> Outcome {
        let start = Instant::now();
        let mut changes = self.changes.clone();
        // A sleep being committed: its endpoints are about to go. Wait for it to land, then
        // wake it as usual (the Sleeper marks it in the same lock as its decision, so an
        // activate either cancels the sleep or sees the mark).
        loop {
            let closing = {
                let cache = self.cache.read().await;
                match cache.destination(cluster) {
                    None => return Outcome::NotManaged,
                    Some((key, ..)) => cache.is_closing(key),
                }
            };
            if !closing {
                break;
            }
            let left = deadline.saturating_sub(start.elapsed());
            match tokio::time::timeout(left, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return Outcome::TimedOut(State::Draining),
            }
        }
        let (key, deadline) = {
            let cache = self.cache.read().await;
            let Some((key, dest, _)) = cache.destination(cluster) else {
                return Outcome::NotManaged;
            };
            (
                key.clone(),
                deadline.min(Duration::from_millis(dest.wake_timeout_ms)),
            )
        };
        let mut op: Option<(Arc<WakeOp>, watch::Receiver<OpState>)> = None;
        // The last wake joined: the pods it found going away.
        let mut joined: Option<Arc<WakeOp>> = None;
        loop {
            let grace: Option<Duration>;
            let now = op.as_ref().map(|(_, rx)| rx.borrow().clone());
            match now {
                Some(OpState::Failed(msg)) => return Outcome::ScaleFailed(msg),
                Some(OpState::Ended) => op = None,
                Some(OpState::Running) | None => {}
            }
            {
                let cache = self.cache.read().await;
                let Some((_, _, m)) = cache.destination(cluster) else {
                    return Outcome::NotManaged;
                };
                let ready = cache.ready_pods(cluster);
                let fresh = ready.is_some_and(|pods| {
                    pods.iter()
                        .any(|p| joined.as_ref().is_none_or(|o| o.counts(p)))
                });
                grace = joined
                    .as_ref()
                    .zip(ready)
                    .and_then(|(o, pods)| o.grace_left(pods));
                if m.desired > 0 && fresh {
                    return Outcome::Ready;
                }
                if op.is_none()
                    && let Some(o) = self.ensure_waking(
                        &key,
                        &m.uid,
                        m.desired,
                        m.wake_replicas(),
                        m.spec.wake_timeout,
                        &m.ready_pods,
                    )
                {
                    joined = Some(o.clone());
                    let rx = o.state.subscribe();
                    op = Some((o, rx));
                }
            }
            let left = deadline.saturating_sub(start.elapsed());
            let op_changed = async {
                match op.as_mut() {
                    Some((_, rx)) => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let cache_changed = async {
                // Err: the cache is gone (shutting down); only the deadline is left.
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            let woke = async {
                tokio::select! {
                    () = cache_changed => {}
                    () = op_changed => {}
                    () = tokio::time::sleep(grace.unwrap_or(Duration::MAX)), if grace.is_some() => {}
                }
            };
            if left.is_zero() || tokio::time::timeout(left, woke).await.is_err() {
                let state = self
                    .cache
                    .read()
                    .await
                    .destination(cluster)
                    .map_or(State::Asleep, |(_, d, _)| d.state);
                return Outcome::TimedOut(state);
            }
        }
    }

    /// Whether a wake of `key` is in flight (its record is not written yet).
    pub fn is_waking(&self, key: &Key) -> bool {
        self.inflight.lock().is_ok_and(|m| m.contains_key(key))
    }

    /// Starts a wake unless one runs or the Deployment already has replicas. Returns the
    /// wake in flight, if any.
    #[allow(clippy::too_many_arguments)]
    fn ensure_waking(
        self: &Arc<Self>,
        key: &Key,
        uid: &str,
        desired: i32,
        replicas: u32,
        wake_timeout: Duration,
        ready_pods: &BTreeSet<String>,
    ) -> Option<Arc<WakeOp>> {
        let Ok(mut inflight) = self.inflight.lock() else {
            return None;
        };
        if let Some(op) = inflight.get(key)
            && op.uid == uid
        {
            return Some(op.clone());
        }
        if desired > 0 {
            // Someone scaled it already (a person, an HPA, a wake that finished): just wait.
            return None;
        }
        let op = Arc::new(WakeOp {
            state: watch::Sender::new(OpState::Running),
            uid: uid.to_owned(),
            stale: ready_pods.clone(),
            began: Instant::now(),
        });
        inflight.insert(key.clone(), op.clone());
        let this = self.clone();
        let key = key.clone();
        let task_op = op.clone();
        tokio::spawn(async move {
            let end = this.run_wake(&key, replicas, wake_timeout, &task_op).await;
            if let Ok(mut inflight) = this.inflight.lock()
                && inflight.get(&key).is_some_and(|o| Arc::ptr_eq(o, &task_op))
            {
                inflight.remove(&key);
            }
            task_op.state.send_replace(end);
        });
        Some(op)
    }

    /// One wake: PATCH the scale, then follow the cache until a ready endpoint of a pod of
    /// this wake (or the wake timeout, or a scale back to 0), recording each phase. Stays
    /// registered until then, so a late caller cannot PATCH a second time.
    async fn run_wake(
        &self,
        key: &Key,
        replicas: u32,
        wake_timeout: Duration,
        op: &WakeOp,
    ) -> OpState {
        let start = Instant::now();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        tracing::info!(deployment = %key, replicas, stale_endpoints = op.stale.len(), "waking: scaling up");
        if let Err(e) = self.scaler.scale(key, replicas).await {
            tracing::warn!(deployment = %key, error = %e, "wake failed: scale call refused");
            self.metrics.wake_failed();
            return OpState::Failed(format!("scaling {key} to {replicas} failed: {e}"));
        }
        let mut record = WakeRecord {
            replicas,
            scale_ms: ms(start.elapsed()),
            pod_ready_ms: None,
            endpoint_ready_ms: None,
        };
        let mut changes = self.changes.clone();
        let limit = wake_timeout.max(Duration::from_secs(5));
        let mut scaled_up_seen = false;
        loop {
            let grace;
            {
                let cache = self.cache.read().await;
                let Some(m) = cache.managed(key).filter(|m| m.uid == op.uid) else {
                    return OpState::Ended; // no longer managed, or deleted and created again
                };
                scaled_up_seen |= m.desired > 0;
                if scaled_up_seen && m.desired == 0 {
                    tracing::info!(deployment = %key, "scaled back to 0 during the wake: it ends; the next activate wakes it again");
                    return OpState::Ended;
                }
                if record.pod_ready_ms.is_none() && m.ready_replicas > 0 {
                    record.pod_ready_ms = Some(ms(start.elapsed()));
                }
                if m.ready_pods.iter().any(|p| op.counts(p)) {
                    record.endpoint_ready_ms = Some(ms(start.elapsed()));
                    record.pod_ready_ms.get_or_insert(ms(start.elapsed()));
                    break;
                }
                grace = op.grace_left(&m.ready_pods);
            }
            let left = limit.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            let wait = left.min(grace.unwrap_or(Duration::MAX));
            match tokio::time::timeout(wait, changes.changed()).await {
                Ok(Ok(())) => {}
                // The grace of the stale pods passed: look again.
                Err(_) if wait < left => {}
                _ => break,
            }
        }
        self.metrics.wake_recorded(&record);
        tracing::info!(deployment = %key, replicas, scale_ms = record.scale_ms,
            pod_ready_ms = ?record.pod_ready_ms, endpoint_ready_ms = ?record.endpoint_ready_ms, "wake finished");
        self.scaler.record_wake(key, &record).await;
        OpState::Ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Index;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts scale calls and, like the real cluster, makes the Deployment ready a moment later.
    struct FakeCluster {
        scales: AtomicUsize,
        cache: Arc<RwLock<Cache>>,
        tx: watch::Sender<u64>,
        ready_after: Duration,
        refuse: bool,
    }

    fn built(replicas: i32, ready: bool) -> Index {
        built_with(replicas, if ready { &["10.0.0.1"] } else { &[] })
    }

    /// The Deployment at `replicas`, its Service's slice listing `ready` endpoints.
    fn built_with(replicas: i32, ready: &[&str]) -> Index {
        use serde_json::json;
        let d: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "web",
                         "annotations": {"kzscaler.io/scale-to-zero": "true"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}}},
            "status": {"readyReplicas": if ready.is_empty() { 0 } else { replicas }}
        }))
        .unwrap();
        let s: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
        }))
        .unwrap();
        let e: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "web-x", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": ready.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true}})).collect::<Vec<_>>()
        }))
        .unwrap();
        Index::from_objects(
            &[Arc::new(d)],
            &[Arc::new(s)],
            &[Arc::new(e)],
            &[],
            "cluster.local",
        )
    }

    impl Scaler for FakeCluster {
        async fn scale(&self, key: &Key, replicas: u32) -> crate::Result<()> {
            self.scales.fetch_add(1, Ordering::SeqCst);
            if self.refuse {
                return Err(crate::Error::kube(
                    format!("waking {key}"),
                    kube::Error::Api(Box::new(kube::core::Status {
                        code: 403,
                        message: "deployments.apps \"web\" is forbidden".into(),
                        ..Default::default()
                    })),
                ));
            }
            let n = i32::try_from(replicas).unwrap();
            self.cache.write().await.replace_index(built(n, false));
            self.tx.send_modify(|v| *v += 1);
            let (cache, tx, after) = (self.cache.clone(), self.tx.clone(), self.ready_after);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                cache.write().await.replace_index(built(n, true));
                tx.send_modify(|v| *v += 1);
            });
            Ok(())
        }
        async fn record_wake(&self, _key: &Key, _wake: &WakeRecord) {}
        async fn sleep(&self, _key: &Key, _how: Sleep<'_>) -> crate::Result<()> {
            Ok(())
        }
        async fn annotate(
            &self,
            _: &Key,
            _: serde_json::Value,
            _: Option<Note>,
        ) -> crate::Result<()> {
            Ok(())
        }
    }

    fn setup(
        ready_after: Duration,
        refuse: bool,
    ) -> (Arc<Activator<FakeCluster>>, Arc<FakeCluster>) {
        let cache = Arc::new(RwLock::new(Cache::default()));
        let (tx, rx) = watch::channel(0);
        let fake = Arc::new(FakeCluster {
            scales: AtomicUsize::new(0),
            cache: cache.clone(),
            tx,
            ready_after,
            refuse,
        });
        if let Ok(mut c) = cache.try_write() {
            c.replace_index(built(0, false));
        }
        let act = Activator::new(cache, rx, fake.clone(), Arc::new(Metrics::default()));
        (act, fake)
    }

    const WEB: &str = "outbound|80||web.shop.svc.cluster.local";

    #[tokio::test]
    async fn thousand_concurrent_activations_scale_once() {
        let (act, fake) = setup(Duration::from_millis(50), false);
        let calls: Vec<_> = (0..1000)
            .map(|_| {
                let act = act.clone();
                tokio::spawn(async move { act.activate(WEB, Duration::from_secs(5)).await })
            })
            .collect();
        for c in calls {
            assert_eq!(c.await.unwrap(), Outcome::Ready);
        }
        assert_eq!(fake.scales.load(Ordering::SeqCst), 1);
        // Awake now: another activate answers at once, without scaling.
        assert_eq!(
            act.activate(WEB, Duration::from_secs(1)).await,
            Outcome::Ready
        );
        assert_eq!(fake.scales.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_activate_during_a_committed_sleep_waits_for_it_and_wakes_it_again() {
        let (act, fake) = setup(Duration::from_millis(20), false);
        let key = Key {
            namespace: "shop".into(),
            name: "web".into(),
        };
        {
            let mut c = fake.cache.write().await;
            c.replace_index(built(1, true));
            c.set_closing(&key, true);
        }
        let waiting = {
            let act = act.clone();
            tokio::spawn(async move { act.activate(WEB, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "no 'ready' for an endpoint about to go"
        );
        assert_eq!(fake.scales.load(Ordering::SeqCst), 0);
        // The sleep lands: 0 replicas clears the mark, and the waiting activate wakes it.
        fake.cache.write().await.replace_index(built(0, false));
        fake.tx.send_modify(|v| *v += 1);
        assert_eq!(waiting.await.unwrap(), Outcome::Ready);
        assert_eq!(fake.scales.load(Ordering::SeqCst), 1);
        assert!(!fake.cache.read().await.is_closing(&key));
    }

    async fn set(fake: &FakeCluster, b: Index) {
        fake.cache.write().await.replace_index(b);
        fake.tx.send_modify(|v| *v += 1);
    }

    #[tokio::test]
    async fn a_wake_right_after_a_sleep_is_ready_only_on_a_pod_of_its_own() {
        let (act, fake) = setup(Duration::from_secs(60), false);
        // The sleep landed (0 replicas), but the slice still lists the old pod as ready.
        set(&fake, built_with(0, &["10.0.0.9"])).await;
        let waiting = {
            let act = act.clone();
            tokio::spawn(async move { act.activate(WEB, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fake.scales.load(Ordering::SeqCst), 1);
        set(&fake, built_with(1, &["10.0.0.9"])).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "not ready on the pod that is going away"
        );
        set(&fake, built_with(1, &["10.0.0.9", "10.0.0.2"])).await;
        assert_eq!(waiting.await.unwrap(), Outcome::Ready);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_kept_through_a_quick_sleep_and_wake_counts_once_it_stays_ready() {
        let (act, fake) = setup(Duration::from_secs(60), false);
        set(&fake, built_with(0, &["10.0.0.9"])).await;
        let started = Instant::now();
        let waiting = {
            let act = act.clone();
            tokio::spawn(async move { act.activate(WEB, Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fake.scales.load(Ordering::SeqCst), 1);
        // The Deployment controller saw 0 and 1 as one change: the pod stays, ready.
        set(&fake, built_with(1, &["10.0.0.9"])).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "not at once: it may be going away");
        assert_eq!(waiting.await.unwrap(), Outcome::Ready);
        let took = started.elapsed();
        assert!(
            took >= STALE_GRACE && took < STALE_GRACE + Duration::from_secs(1),
            "ready once it stayed ready for the grace, not at the deadline: {took:?}"
        );
        assert_eq!(fake.scales.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_deployment_scaled_to_0_during_a_wake_is_woken_again() {
        let (act, fake) = setup(Duration::from_secs(60), false);
        let waiting = {
            let act = act.clone();
            tokio::spawn(async move { act.activate(WEB, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fake.scales.load(Ordering::SeqCst), 1);
        // Someone scales it back to 0 before a pod is ready: that wake is over.
        set(&fake, built_with(0, &[])).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            fake.scales.load(Ordering::SeqCst),
            2,
            "the waiting activate scales again instead of waiting out a dead wake"
        );
        set(&fake, built_with(1, &["10.0.0.2"])).await;
        assert_eq!(waiting.await.unwrap(), Outcome::Ready);
    }

    #[tokio::test]
    async fn deadline_passing_first_says_so() {
        let (act, _) = setup(Duration::from_secs(30), false);
        let out = act.activate(WEB, Duration::from_millis(100)).await;
        assert_eq!(out, Outcome::TimedOut(State::Waking));
    }

    #[tokio::test]
    async fn refuses_unmanaged_destinations() {
        let (act, fake) = setup(Duration::ZERO, false);
        let out = act
            .activate(
                "outbound|80||db.shop.svc.cluster.local",
                Duration::from_secs(1),
            )
            .await;
        assert_eq!(out, Outcome::NotManaged);
        assert_eq!(fake.scales.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_refused_scale_is_reported() {
        let (act, _) = setup(Duration::ZERO, true);
        match act.activate(WEB, Duration::from_secs(1)).await {
            Outcome::ScaleFailed(msg) => assert!(msg.contains("forbidden"), "{msg}"),
            other => panic!("expected ScaleFailed, got {other:?}"),
        }
    }
}
