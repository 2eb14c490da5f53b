//! The sleeper: every few hundred milliseconds, decides for the managed Deployments that
//! changed, that are due (`due.rs`) or that are draining whether to start draining, cancel a
//! drain, or scale it to 0 (`idle.rs` decides; this only acts). It also keeps
//! `kzscaler.io/state` true to the replica count when someone else changed it, and acts on
//! `kzscaler.io/action`. Only the leader acts; a replica that becomes leader looks at every
//! Deployment once and starts every idle clock afresh. Between events a quiet fleet costs
//! nothing: each look asks for the next one when time alone would change the decision.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kzscaler_core::wire::State;
use tokio::sync::{RwLock, watch};

use crate::activate::{Note, Scaler};
use crate::cache::{Cache, Key};
// Every idle and drain duration is measured on the monotonic clock.
use crate::clock::mono_ms;
use crate::due::Due;
use crate::idle::{Activity, Facts, Step, corrected_state, decide, next_look};
use crate::lease::Leadership;
use crate::metrics::Metrics;
use kzscaler_core::names;

/// How long the recorded state may disagree with the replicas before it is corrected: the
/// time for the watch to bring back what a finished wake wrote (wakes in flight are skipped).
const CORRECT_AFTER_MS: u64 = 1_000;

/// Activity shared by the API (reports, activations) and the sleeper.
#[derive(Debug, Default)]
pub struct Idle {
    activity: Mutex<Activity>,
}

impl Idle {
    /// Counts activity on a Deployment reported by its own pods (inbound), if managed.
    pub fn touch_deployment(&self, cache: &Cache, namespace: &str, name: &str) {
        let key = Key {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        if cache.managed(&key).is_some()
            && let Ok(mut a) = self.activity.lock()
        {
            a.request(&key, mono_ms());
        }
    }

    /// Counts activity on the Deployment behind `cluster`, if managed.
    pub fn touch_cluster(&self, cache: &Cache, cluster: &str) {
        if let Some((key, _, _)) = cache.destination(cluster)
            && let Ok(mut a) = self.activity.lock()
        {
            a.request(key, mono_ms());
        }
    }
}

/// Puts idle Deployments to sleep, race-free (see `idle.rs`).
#[derive(Debug)]
pub struct Sleeper<S> {
    /// The replica cache.
    pub cache: Arc<RwLock<Cache>>,
    /// Ticked when the snapshot changes here (draining marks).
    pub changes: watch::Sender<u64>,
    /// Scales and records.
    pub scaler: Arc<S>,
    /// Activity.
    pub idle: Arc<Idle>,
    /// How long draining lasts (at least two filter poll periods).
    pub drain_period: Duration,
    /// Whether this replica leads: only the leader acts.
    pub leadership: watch::Receiver<Leadership>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Wakes in flight (they record the state themselves).
    pub activator: Arc<crate::activate::Activator<S>>,
}

/// What the sleeper remembers between looks.
#[derive(Debug, Default)]
struct Memory {
    /// Since when each Deployment is draining.
    draining: HashMap<Key, u64>,
    /// Since when each Deployment's recorded state disagrees with its replicas.
    mismatched: HashMap<Key, u64>,
    /// `kzscaler.io/action` values acted on, and when: not acted on again until the watch
    /// shows the annotation gone (or 5 s passed).
    acted: HashMap<Key, (String, u64)>,
    /// When each Deployment needs a look again, by time alone.
    due: Due,
    /// Leading at the last look.
    leading: bool,
}

impl Memory {
    /// A Deployment no longer managed: nothing of it is kept.
    fn forget(&mut self, key: &Key) {
        self.draining.remove(key);
        self.mismatched.remove(key);
        self.acted.remove(key);
        self.due.forget(key);
    }
}

/// How long an action just acted on is not acted on again (the watch brings its removal).
const ACTED_MS: u64 = 5_000;

/// How soon to look again at what waits for something without an event of its own (a wake in
/// flight, a committed sleep, a failed write).
const RETRY_MS: u64 = 1_000;

impl<S: Scaler> Sleeper<S> {
    /// Runs forever.
    pub async fn run(self) {
        let mut memory = Memory::default();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        // A slow look must not be followed at once by another on the same stale cache.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.look(&mut memory).await;
        }
    }

    /// One round: the Deployments that changed, are due or are draining.
    async fn look(&self, memory: &mut Memory) {
        let leading = self.leadership.borrow().leader;
        // Taken whether leading or not, so the set never grows while following.
        let mut keys: BTreeSet<Key> = self
            .cache
            .write()
            .await
            .take_touched()
            .into_iter()
            .collect();
        if leading != memory.leading {
            self.lead(leading, memory).await;
            if leading {
                // A new leader looks at everything once; from then on, at what changes.
                keys.extend(self.cache.read().await.all_managed().keys().cloned());
            }
        }
        if !leading {
            return;
        }
        keys.extend(memory.due.take(mono_ms()));
        // Activity cancels a drain: draining ones are looked at every round (they are few).
        keys.extend(memory.draining.keys().cloned());
        if keys.is_empty() {
            return;
        }
        self.metrics.sleeper_looks(keys.len());
        self.act_on_requests(&keys, memory).await;
        self.correct_states(&keys, memory).await;
        self.pass(&keys, memory).await;
    }

    /// Leadership changed: start clean either way.
    async fn lead(&self, leading: bool, memory: &mut Memory) {
        if let Ok(mut a) = self.idle.activity.lock() {
            a.clear();
        }
        memory.mismatched.clear();
        memory.acted.clear();
        memory.due.clear();
        let mut changed = false;
        {
            let mut cache = self.cache.write().await;
            for key in memory.draining.keys() {
                changed |= cache.set_draining(key, false);
            }
        }
        memory.draining.clear();
        if changed {
            self.changes.send_modify(|v| *v += 1);
        }
        memory.leading = leading;
    }

    /// Acts on `kzscaler.io/action` (set by `kubectl kzscaler wake|sleep`) and removes it.
    async fn act_on_requests(&self, keys: &BTreeSet<Key>, memory: &mut Memory) {
        let now = mono_ms();
        let mut asked: Vec<(Key, String, i32, u32)> = Vec::new();
        {
            let cache = self.cache.read().await;
            for key in keys {
                let action = cache
                    .managed(key)
                    .and_then(|m| m.action.clone().map(|a| (a, m.desired, m.wake_replicas())));
                let Some((action, desired, wake_to)) = action else {
                    memory.acted.remove(key);
                    continue;
                };
                if let Some((a, at)) = memory.acted.get(key) {
                    if *a == action && now.saturating_sub(*at) < ACTED_MS {
                        // Acted on; the watch brings the annotation's removal, or it is
                        // acted on again then.
                        memory.due.at(key, at.saturating_add(ACTED_MS));
                        continue;
                    }
                    memory.acted.remove(key);
                }
                asked.push((key.clone(), action, desired, wake_to));
            }
        }
        for (key, action, desired, wake_to) in asked {
            if action == "wake" && self.activator.is_waking(&key) {
                memory.due.at(&key, now.saturating_add(RETRY_MS));
                continue;
            }
            let (state, note) = match action.as_str() {
                "wake" if desired == 0 => {
                    if let Err(e) = self.scaler.scale(&key, wake_to).await {
                        tracing::warn!(deployment = %key, error = %e, "could not wake on request; retrying in 5s");
                        memory.acted.insert(key.clone(), (action.clone(), now));
                        memory.due.at(&key, now.saturating_add(ACTED_MS));
                        continue;
                    }
                    (
                        Some("awake"),
                        Some(Note {
                            warning: false,
                            reason: "Woke",
                            message: format!(
                                "woken on request ({}: wake): scaled 0 -> {wake_to}",
                                names::ACTION
                            ),
                        }),
                    )
                }
                "wake" => {
                    // Awake already: the request counts as activity.
                    if let Ok(mut a) = self.idle.activity.lock() {
                        a.touch(&key, now);
                    }
                    (None, None)
                }
                "sleep" => {
                    // As if idle for a whole timeout: the usual drain, then the scale to 0.
                    // A request during the drain still cancels it.
                    if let Ok(mut a) = self.idle.activity.lock() {
                        a.touch(&key, 0);
                    }
                    (None, None)
                }
                other => (
                    None,
                    Some(Note {
                        warning: true,
                        reason: "InvalidAnnotation",
                        message: format!(
                            "annotation {}: {other:?} is not valid: expected \"wake\" or \"sleep\"; removed",
                            names::ACTION
                        ),
                    }),
                ),
            };
            let mut patch = serde_json::json!({ names::ACTION: null });
            if let Some(s) = state {
                patch[names::STATE] = serde_json::json!(s);
            }
            memory.acted.insert(key.clone(), (action.clone(), now));
            memory.due.at(&key, now.saturating_add(ACTED_MS));
            match self.scaler.annotate(&key, patch, note).await {
                Ok(()) => {
                    tracing::info!(deployment = %key, action = %action, "acted on a kubectl kzscaler request")
                }
                Err(e) => {
                    tracing::warn!(deployment = %key, error = %e, "could not remove {}", names::ACTION)
                }
            }
        }
    }

    /// Rewrites `kzscaler.io/state` where it has disagreed with the replicas for a while.
    async fn correct_states(&self, keys: &BTreeSet<Key>, memory: &mut Memory) {
        let now = mono_ms();
        let mut wrong: Vec<(Key, &'static str, i32)> = Vec::new();
        {
            let cache = self.cache.read().await;
            for key in keys {
                let corrected = cache.managed(key).and_then(|m| {
                    corrected_state(
                        m.desired,
                        m.recorded_state.as_deref(),
                        memory.draining.contains_key(key),
                    )
                    .map(|s| (s, m.desired))
                });
                let Some((state, desired)) = corrected else {
                    memory.mismatched.remove(key);
                    continue;
                };
                if self.activator.is_waking(key) {
                    // The wake records the state itself: judge once it is over.
                    memory.mismatched.remove(key);
                    memory.due.at(key, now.saturating_add(RETRY_MS));
                    continue;
                }
                let since = *memory.mismatched.entry(key.clone()).or_insert(now);
                if now.saturating_sub(since) < CORRECT_AFTER_MS {
                    memory.due.at(key, since.saturating_add(CORRECT_AFTER_MS));
                    continue;
                }
                wrong.push((key.clone(), state, desired));
            }
        }
        for (key, state, desired) in wrong {
            let why = if state == "awake" {
                format!(
                    "kzscaler.io/state did not say awake but the Deployment has {desired} replica(s), set outside kzscaler (or by a controller that stopped): treated as awake; the idle timeout starts now"
                )
            } else {
                "kzscaler.io/state said awake but the Deployment has 0 replicas, set outside kzscaler: treated as asleep; a request wakes it".to_owned()
            };
            let note = Note {
                warning: false,
                reason: "StateCorrected",
                message: why,
            };
            let patch = serde_json::json!({ names::STATE: state });
            match self.scaler.annotate(&key, patch, Some(note)).await {
                Ok(()) => {
                    tracing::info!(deployment = %key, state, replicas = desired, "replicas changed outside kzscaler: state corrected");
                    memory.mismatched.remove(&key);
                }
                Err(e) => {
                    tracing::warn!(deployment = %key, error = %e, "could not correct the state; retrying");
                    memory.due.at(&key, mono_ms().saturating_add(RETRY_MS));
                }
            }
        }
    }

    /// Decides for `keys`: drain, cancel a drain, or sleep.
    async fn pass(&self, keys: &BTreeSet<Key>, memory: &mut Memory) {
        let mut to_sleep = Vec::new();
        let mut marks: Vec<(Key, &'static str)> = Vec::new();
        let mut changed = false;
        {
            // The cache lock first: no await while the activity lock is held. The decision
            // reads the cache under the same lock that marks a committed sleep.
            let mut cache = self.cache.write().await;
            let now = mono_ms();
            let Ok(mut activity) = self.idle.activity.lock() else {
                return;
            };
            for key in keys {
                let Some(m) = cache.managed(key) else {
                    // Deleted, or no longer annotated.
                    activity.forget(key);
                    memory.forget(key);
                    continue;
                };
                if cache.is_closing(key) {
                    // A committed sleep waits for the cache to show 0 replicas (an event), or
                    // for its mark to expire (no event): look again then.
                    memory.due.at(key, now.saturating_add(RETRY_MS));
                    continue;
                }
                let (desired, state, idle_timeout, paused) =
                    (m.desired, m.state(), m.spec.idle_timeout, m.spec.paused);
                let (uid, version) = (m.uid.clone(), m.resource_version.clone());
                if activity.forget_if_recreated(key, &uid) {
                    // Deleted and created again: nothing of the old one's drain carries over.
                    memory.draining.remove(key);
                    changed |= cache.set_draining(key, false);
                }
                let awake = state == State::Awake;
                if !awake {
                    // The idle clock starts when it is awake again, however it woke (a wake,
                    // or replicas set by hand).
                    activity.hold(key);
                }
                let facts = Facts {
                    now,
                    last_active: if awake {
                        activity.last_active(key, now)
                    } else {
                        now
                    },
                    idle_timeout,
                    paused,
                    awake,
                    draining_since: memory.draining.get(key).copied(),
                    drain_period: self.drain_period,
                };
                let step = decide(facts);
                if let Some(at) = next_look(facts, step) {
                    memory.due.at(key, at);
                }
                match step {
                    Step::Stay => {}
                    Step::Drain => {
                        tracing::info!(deployment = %key, idle_ms = now - facts.last_active, "idle: draining before sleep");
                        memory.draining.insert(key.clone(), now);
                        changed |= cache.set_draining(key, true);
                        marks.push((key.clone(), "draining"));
                    }
                    Step::Undrain => {
                        if awake {
                            tracing::info!(deployment = %key, "activity while draining: sleep cancelled");
                        }
                        memory.draining.remove(key);
                        changed |= cache.set_draining(key, false);
                        if awake {
                            marks.push((key.clone(), "awake"));
                            // If that write fails and the record of the drain stays, the next
                            // look starts the correction's clock.
                            memory.due.at(key, now);
                        }
                    }
                    Step::Sleep => {
                        // Committed, in the same lock as the decision: see Cache::set_closing.
                        cache.set_closing(key, true);
                        memory.due.at(key, now.saturating_add(RETRY_MS));
                        // 0: asked to sleep (kubectl kzscaler sleep), not idle.
                        let idle_ms = if facts.last_active == 0 {
                            0
                        } else {
                            now.saturating_sub(facts.last_active)
                        };
                        // Recorded with the sleep, the one write it makes: the record of the
                        // last request follows transitions, never traffic.
                        let last_request = activity
                            .last_request(key)
                            .map(|m| crate::clock::wall_of(m, now, crate::clock::wall_ms()));
                        to_sleep.push((key.clone(), desired, idle_ms, last_request, version));
                    }
                }
            }
        }
        if changed {
            self.changes.send_modify(|v| *v += 1);
        }
        // kzscaler.io/state shows draining too (kubectl kzscaler status reads it).
        for (key, state) in marks {
            let patch = serde_json::json!({ names::STATE: state });
            if let Err(e) = self.scaler.annotate(&key, patch, None).await {
                tracing::warn!(deployment = %key, error = %e, "could not record the state {state}");
            }
        }
        for (key, desired, idle_ms, last_request, version) in to_sleep {
            let replicas = u32::try_from(desired).unwrap_or(1);
            let how = crate::activate::Sleep {
                replicas,
                idle_ms,
                last_request,
                resource_version: &version,
            };
            match self.scaler.sleep(&key, how).await {
                // Stays marked draining until the cache shows 0 replicas (then the mark goes).
                Ok(()) => {
                    self.metrics.sleep("ok");
                    tracing::info!(deployment = %key, replicas, idle_ms, "asleep: scaled to 0")
                }
                Err(e @ crate::Error::StaleSleep { .. }) => {
                    // Written to since the decision (a last-request record, a person, another
                    // leader): decide again at the next look, from what the watch brings. The
                    // drain stays, so activity meanwhile still cancels it.
                    self.metrics.sleep("stale");
                    tracing::info!(deployment = %key, error = %e, "not put to sleep: deciding again");
                    self.cache.write().await.set_closing(&key, false);
                    memory.due.at(&key, mono_ms());
                }
                Err(e) => {
                    self.metrics.sleep("failed");
                    let reason = e.metric_label();
                    tracing::warn!(deployment = %key, error = %e, reason, "could not put it to sleep; will retry after the idle timeout");
                    memory.draining.remove(&key);
                    if let Ok(mut a) = self.idle.activity.lock() {
                        a.touch(&key, mono_ms());
                    }
                    {
                        let mut cache = self.cache.write().await;
                        cache.set_closing(&key, false);
                        cache.set_draining(&key, false);
                    }
                    // The next look schedules the retry from the clock just restarted.
                    memory.due.at(&key, mono_ms());
                    self.changes.send_modify(|v| *v += 1);
                    let patch = serde_json::json!({ names::STATE: "awake" });
                    let _ = self.scaler.annotate(&key, patch, None).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activate::{Activator, Sleep, WakeRecord};
    use crate::lease::Leadership;
    use serde_json::json;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Records sleeps and annotation writes; while `failing`, both fail.
    #[derive(Default)]
    struct Recorder {
        sleeps: Mutex<Vec<Key>>,
        annotations: Mutex<Vec<(Key, serde_json::Value)>>,
        failing: AtomicBool,
    }

    fn refused(what: &str) -> crate::Error {
        crate::Error::kube(
            what.to_owned(),
            kube::Error::Api(Box::new(kube::core::Status {
                code: 500,
                message: "etcdserver: request timed out".into(),
                ..Default::default()
            })),
        )
    }

    impl Scaler for Recorder {
        async fn scale(&self, _: &Key, _: u32) -> crate::Result<()> {
            Ok(())
        }
        async fn record_wake(&self, _: &Key, _: &WakeRecord) {}
        async fn sleep(&self, key: &Key, _: Sleep<'_>) -> crate::Result<()> {
            if let Ok(mut s) = self.sleeps.lock() {
                s.push(key.clone());
            }
            if self.failing.load(Ordering::SeqCst) {
                return Err(refused("sleeping"));
            }
            Ok(())
        }
        async fn annotate(
            &self,
            key: &Key,
            patch: serde_json::Value,
            _: Option<Note>,
        ) -> crate::Result<()> {
            if let Ok(mut a) = self.annotations.lock() {
                a.push((key.clone(), patch));
            }
            if self.failing.load(Ordering::SeqCst) {
                return Err(refused("annotating"));
            }
            Ok(())
        }
    }

    fn key(name: &str) -> Key {
        Key {
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    /// Deployment `name` at `replicas` with an idle timeout of `idle` and `annotations`, with a
    /// Service whose slice lists a ready endpoint per replica.
    fn apply_with(
        index: &mut crate::index::Index,
        name: &str,
        replicas: i32,
        idle: &str,
        annotations: serde_json::Value,
    ) {
        let mut ann =
            json!({"kzscaler.io/scale-to-zero": "true", "kzscaler.io/idle-timeout": idle});
        if let (Some(a), Some(extra)) = (ann.as_object_mut(), annotations.as_object()) {
            a.extend(extra.clone());
        }
        let d = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": name, "uid": format!("uid-{name}"),
                         "annotations": ann},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}}},
            "status": {"readyReplicas": replicas}
        }))
        .unwrap();
        let s = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}
        }))
        .unwrap();
        let endpoints: Vec<_> = (0..replicas)
            .map(|i| json!({"addresses": [format!("10.0.0.{i}")], "targetRef": {"name": format!("{name}-{i}")}, "conditions": {"ready": true}}))
            .collect();
        let e = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": format!("{name}-x"),
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": endpoints
        }))
        .unwrap();
        index.apply_deployment(&d);
        index.apply_service(&s);
        index.apply_slice(&e);
    }

    /// [`apply_with`] an idle timeout of 1 s.
    fn apply(index: &mut crate::index::Index, name: &str, replicas: i32) {
        apply_with(index, name, replicas, "1s", json!({}));
    }

    struct Bed {
        sleeper: Sleeper<Recorder>,
        scaler: Arc<Recorder>,
        leader: watch::Sender<Leadership>,
        memory: Memory,
    }

    impl Bed {
        /// `asleep` Deployments at 0 replicas and `awake` ones at 1, all with a 1 s idle
        /// timeout; this replica leads.
        fn new(asleep: usize, awake: &[&str]) -> Self {
            Self::with(|index| {
                for i in 0..asleep {
                    apply(index, &format!("quiet-{i}"), 0);
                }
                for name in awake {
                    apply(index, name, 1);
                }
            })
        }

        fn with(objects: impl FnOnce(&mut crate::index::Index)) -> Self {
            let mut cache = Cache::default();
            objects(cache.index_mut());
            cache.publish();
            // What a new leader looks at is everything, not what the index just loaded.
            cache.take_touched();
            let cache = Arc::new(RwLock::new(cache));
            let scaler = Arc::new(Recorder::default());
            let metrics = Arc::new(Metrics::default());
            let (changes, rx) = watch::channel(0);
            let activator = Activator::new(cache.clone(), rx, scaler.clone(), metrics.clone());
            let (leader, leadership) = watch::channel(Leadership {
                leader: true,
                holder: "me".into(),
                until: None,
            });
            let sleeper = Sleeper {
                cache,
                changes,
                scaler: scaler.clone(),
                idle: Arc::new(Idle::default()),
                drain_period: Duration::from_millis(300),
                leadership,
                metrics,
                activator,
            };
            Self {
                sleeper,
                scaler,
                leader,
                memory: Memory::default(),
            }
        }

        /// One round; how many Deployments it looked at.
        async fn look(&mut self) -> u64 {
            let before = looks(&self.sleeper.metrics);
            self.sleeper.look(&mut self.memory).await;
            looks(&self.sleeper.metrics) - before
        }

        /// Applies objects as the watch would, and publishes them.
        async fn change(&self, objects: impl FnOnce(&mut crate::index::Index)) {
            let mut cache = self.sleeper.cache.write().await;
            objects(cache.index_mut());
            cache.publish();
        }

        async fn draining(&self, name: &str) -> bool {
            self.sleeper.cache.read().await.is_draining(&key(name))
        }

        fn slept(&self) -> Vec<Key> {
            self.scaler.sleeps.lock().unwrap().clone()
        }

        /// The state annotations written, in order.
        fn states_written(&self) -> Vec<String> {
            self.scaler
                .annotations
                .lock()
                .unwrap()
                .iter()
                .filter_map(|(_, p)| p.get(names::STATE)?.as_str().map(str::to_owned))
                .collect()
        }

        fn fail(&self, failing: bool) {
            self.scaler.failing.store(failing, Ordering::SeqCst);
        }
    }

    fn looks(m: &Metrics) -> u64 {
        let text = m.encode();
        text.lines()
            .find_map(|l| l.strip_prefix("kzscaler_sleeper_looks_total "))
            .map_or(0, |n| n.trim().parse().unwrap())
    }

    #[tokio::test]
    async fn a_quiet_fleet_is_looked_at_once_then_only_what_changes_or_is_due() {
        // `busy` idles for 3 s: a stalled test machine must not make it due early.
        let mut bed = Bed::with(|index| {
            for i in 0..1_000 {
                apply(index, &format!("quiet-{i}"), 0);
            }
            apply_with(index, "busy", 1, "3s", json!({}));
        });
        assert_eq!(
            bed.look().await,
            1_001,
            "a new leader looks at everything once"
        );
        assert_eq!(bed.look().await, 0, "nothing changed, nothing due");

        // The same objects again change nothing; one Deployment of the thousand changes:
        // one look.
        bed.change(|index| {
            apply(index, "quiet-3", 0);
            apply_with(index, "quiet-7", 0, "5s", json!({}));
        })
        .await;
        assert_eq!(bed.look().await, 1, "only the one that changed");

        // The awake one comes due after its idle timeout, drains, then sleeps.
        tokio::time::sleep(Duration::from_millis(3_050)).await;
        assert_eq!(bed.look().await, 1, "only the one due");
        assert!(bed.draining("busy").await);
        assert!(bed.slept().is_empty());
        tokio::time::sleep(Duration::from_millis(350)).await;
        bed.look().await;
        assert_eq!(
            bed.slept(),
            vec![key("busy")],
            "slept after the drain period"
        );
        // The watch brings the 0: the drain mark goes, and nothing is looked at any more.
        bed.change(|index| apply_with(index, "busy", 0, "3s", json!({})))
            .await;
        assert_eq!(bed.look().await, 1);
        assert!(!bed.draining("busy").await);
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        // The committed sleep's own check comes due, now moot; then nothing is.
        bed.look().await;
        assert!(bed.memory.due.is_empty(), "asleep: nothing due");
        assert_eq!(bed.look().await, 0);
    }

    #[tokio::test]
    async fn a_replica_that_becomes_leader_looks_at_everything_once() {
        let mut bed = Bed::new(50, &["busy"]);
        bed.leader.send_modify(|l| l.leader = false);
        assert_eq!(bed.look().await, 0, "a follower looks at nothing");
        bed.change(|index| apply(index, "quiet-3", 1)).await;
        assert_eq!(bed.look().await, 0);
        bed.leader.send_modify(|l| l.leader = true);
        assert_eq!(bed.look().await, 51);
        assert_eq!(bed.look().await, 0);
    }

    #[tokio::test]
    async fn a_woken_deployments_idle_clock_starts_when_it_is_awake() {
        let mut bed = Bed::with(|index| apply_with(index, "web", 1, "2s", json!({})));
        bed.look().await;
        // Put to sleep (by hand): its clock is held from here.
        bed.change(|index| apply_with(index, "web", 0, "2s", json!({})))
            .await;
        bed.look().await;
        // A request wakes it: recorded, but the clock stays held while it wakes.
        {
            let cache = bed.sleeper.cache.read().await;
            bed.sleeper.idle.touch_deployment(&cache, "shop", "web");
        }
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        // Awake 2.1 s after the clock last ran and after the request.
        bed.change(|index| apply_with(index, "web", 1, "2s", json!({})))
            .await;
        assert_eq!(bed.look().await, 1);
        assert!(
            !bed.draining("web").await,
            "idle from when it woke, not from before it slept nor from the request"
        );
        tokio::time::sleep(Duration::from_millis(2_050)).await;
        bed.look().await;
        assert!(
            bed.draining("web").await,
            "idle for its timeout since it woke"
        );
    }

    #[tokio::test]
    async fn activity_while_draining_cancels_it_at_the_next_round() {
        let mut bed = Bed::new(0, &["busy"]);
        bed.look().await;
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        bed.look().await;
        assert!(bed.draining("busy").await);
        {
            let cache = bed.sleeper.cache.read().await;
            bed.sleeper.idle.touch_deployment(&cache, "shop", "busy");
        }
        bed.look().await;
        assert!(!bed.draining("busy").await);
        tokio::time::sleep(Duration::from_millis(350)).await;
        bed.look().await;
        assert!(bed.slept().is_empty(), "the drain was cancelled");
        assert_eq!(bed.states_written(), ["draining", "awake"]);
    }

    #[tokio::test]
    async fn a_failed_sleep_is_tried_again_after_a_new_idle_timeout() {
        let mut bed = Bed::new(0, &["busy"]);
        bed.look().await;
        bed.fail(true);
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        bed.look().await;
        tokio::time::sleep(Duration::from_millis(350)).await;
        bed.look().await;
        assert_eq!(bed.slept().len(), 1, "tried once");
        assert!(
            !bed.draining("busy").await,
            "the drain ends with the failure"
        );
        bed.fail(false);
        bed.look().await;
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        bed.look().await;
        assert!(bed.draining("busy").await, "idle again: drains again");
        tokio::time::sleep(Duration::from_millis(350)).await;
        bed.look().await;
        assert_eq!(bed.slept().len(), 2, "and sleeps");
    }

    #[tokio::test]
    async fn a_state_set_outside_is_corrected_after_a_second_and_retried_when_the_write_fails() {
        let mut bed = Bed::with(|index| {
            apply_with(
                index,
                "web",
                1,
                "1h",
                json!({"kzscaler.io/state": "asleep"}),
            );
        });
        bed.fail(true);
        bed.look().await;
        assert!(bed.states_written().is_empty(), "not before a second");
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        bed.look().await;
        assert_eq!(bed.states_written(), ["awake"], "tried, and refused");
        bed.fail(false);
        bed.look().await;
        assert_eq!(bed.states_written().len(), 1, "retried a second later");
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        bed.look().await;
        assert_eq!(bed.states_written(), ["awake", "awake"]);
    }

    #[tokio::test]
    async fn a_deleted_deployment_leaves_nothing_behind() {
        let mut bed = Bed::new(0, &["busy"]);
        bed.look().await;
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        bed.look().await;
        assert!(bed.memory.draining.contains_key(&key("busy")));
        bed.change(|index| index.delete_deployment("shop", "busy"))
            .await;
        assert_eq!(bed.look().await, 1);
        assert!(bed.memory.due.is_empty() && bed.memory.draining.is_empty());
        assert!(
            !bed.sleeper
                .idle
                .activity
                .lock()
                .unwrap()
                .knows(&key("busy"))
        );
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        assert_eq!(bed.look().await, 0);
        assert!(bed.slept().is_empty());
    }
}
