//! The sleeper: every few hundred milliseconds, decides for each managed Deployment whether to
//! start draining, cancel a drain, or scale it to 0 (`idle.rs` decides; this only acts). It
//! also keeps `kzscaler.io/state` true to the replica count when someone else changed it.
//! Only the leader acts; a replica that becomes leader starts every idle clock afresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kzscaler_core::wire::State;
use tokio::sync::{RwLock, watch};

use crate::activate::{Note, Scaler};
use crate::cache::{Cache, Key};
// Every idle and drain duration is measured on the monotonic clock.
use crate::clock::mono_ms;
use crate::idle::{Activity, Facts, Step, corrected_state, decide};
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

/// What the sleeper remembers between passes.
#[derive(Debug, Default)]
struct Memory {
    /// Since when each Deployment is draining.
    draining: HashMap<Key, u64>,
    /// Since when each Deployment's recorded state disagrees with its replicas.
    mismatched: HashMap<Key, u64>,
    /// `kzscaler.io/action` values acted on, and when: not acted on again until the watch
    /// shows the annotation gone (or 5 s passed).
    acted: HashMap<Key, (String, u64)>,
    /// Leading in the last pass.
    leading: bool,
}

/// How long an action just acted on is not acted on again (the watch brings its removal).
const ACTED_MS: u64 = 5_000;

impl<S: Scaler> Sleeper<S> {
    /// Runs forever.
    pub async fn run(self) {
        let mut memory = Memory::default();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        // A slow pass must not be followed at once by another on the same stale cache.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let leading = self.leadership.borrow().leader;
            if leading != memory.leading {
                self.lead(leading, &mut memory).await;
            }
            if leading {
                self.act_on_requests(&mut memory.acted).await;
                self.correct_states(&mut memory.mismatched, &memory.draining)
                    .await;
                self.pass(&mut memory.draining).await;
            }
        }
    }

    /// Leadership changed: start clean either way.
    async fn lead(&self, leading: bool, memory: &mut Memory) {
        if let Ok(mut a) = self.idle.activity.lock() {
            a.clear();
        }
        memory.mismatched.clear();
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
    async fn act_on_requests(&self, acted: &mut HashMap<Key, (String, u64)>) {
        let asked: Vec<(Key, String, i32, u32)> = {
            let cache = self.cache.read().await;
            cache
                .all_managed()
                .iter()
                .filter_map(|(k, m)| {
                    let a = m.action.clone()?;
                    Some((k.clone(), a, m.desired, m.wake_replicas()))
                })
                .collect()
        };
        let now = mono_ms();
        acted.retain(|k, (a, at)| {
            now.saturating_sub(*at) < ACTED_MS
                && asked.iter().any(|(ak, aa, ..)| ak == k && aa == a)
        });
        for (key, action, desired, wake_to) in asked {
            if acted.contains_key(&key) || (action == "wake" && self.activator.is_waking(&key)) {
                continue;
            }
            let (state, note) = match action.as_str() {
                "wake" if desired == 0 => {
                    if let Err(e) = self.scaler.scale(&key, wake_to).await {
                        tracing::warn!(deployment = %key, error = %e, "could not wake on request; retrying in 5s");
                        acted.insert(key.clone(), (action.clone(), now));
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
                "wake" => (None, None),
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
            if action == "wake"
                && let Ok(mut a) = self.idle.activity.lock()
            {
                a.touch(&key, now);
            }
            let mut patch = serde_json::json!({ names::ACTION: null });
            if let Some(s) = state {
                patch[names::STATE] = serde_json::json!(s);
            }
            acted.insert(key.clone(), (action.clone(), now));
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
    async fn correct_states(
        &self,
        mismatched: &mut HashMap<Key, u64>,
        draining: &HashMap<Key, u64>,
    ) {
        let now = mono_ms();
        let wrong: Vec<(Key, &'static str, i32)> = {
            let cache = self.cache.read().await;
            cache
                .all_managed()
                .iter()
                .filter(|(k, _)| !self.activator.is_waking(k))
                .filter_map(|(k, m)| {
                    corrected_state(
                        m.desired,
                        m.recorded_state.as_deref(),
                        draining.contains_key(k),
                    )
                    .map(|s| (k.clone(), s, m.desired))
                })
                .collect()
        };
        mismatched.retain(|k, _| wrong.iter().any(|(w, ..)| w == k));
        for (key, state, desired) in wrong {
            let since = *mismatched.entry(key.clone()).or_insert(now);
            if now.saturating_sub(since) < CORRECT_AFTER_MS {
                continue;
            }
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
                    mismatched.remove(&key);
                }
                Err(e) => {
                    tracing::warn!(deployment = %key, error = %e, "could not correct the state; retrying")
                }
            }
        }
    }

    async fn pass(&self, draining: &mut HashMap<Key, u64>) {
        let mut to_sleep = Vec::new();
        let mut marks: Vec<(Key, &'static str)> = Vec::new();
        let mut changed = false;
        {
            // The cache lock first: no await while the activity lock is held. The decision
            // reads the cache under the same lock that marks a committed sleep.
            let mut cache = self.cache.write().await;
            let now = mono_ms();
            // A committed sleep waits for the cache to show 0 replicas: nothing to decide.
            // Only what the decision reads: the rest is looked up when needed (this runs
            // four times a second over every managed Deployment).
            let managed: Vec<(Key, i32, State, Duration, bool)> = cache
                .all_managed()
                .iter()
                .filter(|(k, _)| !cache.is_closing(k))
                .map(|(k, m)| {
                    (
                        k.clone(),
                        m.desired,
                        m.state(),
                        m.spec.idle_timeout,
                        m.spec.paused,
                    )
                })
                .collect();
            let Ok(mut activity) = self.idle.activity.lock() else {
                return;
            };
            let all = cache.all_managed();
            activity.retain(|k| all.contains_key(k));
            draining.retain(|k, _| all.contains_key(k));
            for (key, desired, state, idle_timeout, paused) in &managed {
                let recreated = cache
                    .managed(key)
                    .is_some_and(|m| activity.forget_if_recreated(key, &m.uid));
                if recreated {
                    // Deleted and created again: nothing of the old one's drain carries over.
                    draining.remove(key);
                    changed |= cache.set_draining(key, false);
                }
                if *state != State::Awake {
                    // The idle clock starts when it is awake again, however it woke (a wake,
                    // or replicas set by hand).
                    activity.touch(key, now);
                }
                let facts = Facts {
                    now,
                    last_active: activity.last_active(key, now),
                    idle_timeout: *idle_timeout,
                    paused: *paused,
                    awake: *state == State::Awake,
                    draining_since: draining.get(key).copied(),
                    drain_period: self.drain_period,
                };
                match decide(facts) {
                    Step::Stay => {}
                    Step::Drain => {
                        tracing::info!(deployment = %key, idle_ms = now - facts.last_active, "idle: draining before sleep");
                        draining.insert(key.clone(), now);
                        changed |= cache.set_draining(key, true);
                        marks.push((key.clone(), "draining"));
                    }
                    Step::Undrain => {
                        if *state == State::Awake {
                            tracing::info!(deployment = %key, "activity while draining: sleep cancelled");
                        }
                        draining.remove(key);
                        changed |= cache.set_draining(key, false);
                        if *state == State::Awake {
                            marks.push((key.clone(), "awake"));
                        }
                    }
                    Step::Sleep => {
                        // Committed, in the same lock as the decision: see Cache::set_closing.
                        cache.set_closing(key, true);
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
                        let version = cache
                            .managed(key)
                            .map(|m| m.resource_version.clone())
                            .unwrap_or_default();
                        to_sleep.push((key.clone(), *desired, idle_ms, last_request, version));
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
                    // leader): decide again on the next pass, from what the watch brings. The
                    // drain stays, so activity meanwhile still cancels it.
                    self.metrics.sleep("stale");
                    tracing::info!(deployment = %key, error = %e, "not put to sleep: deciding again");
                    self.cache.write().await.set_closing(&key, false);
                }
                Err(e) => {
                    self.metrics.sleep("failed");
                    let reason = e.metric_label();
                    tracing::warn!(deployment = %key, error = %e, reason, "could not put it to sleep; will retry after the idle timeout");
                    draining.remove(&key);
                    if let Ok(mut a) = self.idle.activity.lock() {
                        a.touch(&key, mono_ms());
                    }
                    {
                        let mut cache = self.cache.write().await;
                        cache.set_closing(&key, false);
                        cache.set_draining(&key, false);
                    }
                    self.changes.send_modify(|v| *v += 1);
                    let patch = serde_json::json!({ names::STATE: "awake" });
                    let _ = self.scaler.annotate(&key, patch, None).await;
                }
            }
        }
    }
}
