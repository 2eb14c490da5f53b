//! The sleeper: every few hundred milliseconds, decides for each managed Deployment whether to
//! start draining, cancel a drain, or scale it to 0 (`idle.rs` decides; this only acts). It
//! also keeps `kzscaler.io/state` true to the replica count when someone else changed it.
//! Only the leader acts; a replica that becomes leader starts every idle clock afresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kzscaler_core::wire::State;
use tokio::sync::{RwLock, watch};

use crate::activate::Scaler;
use crate::cache::{Cache, Key};
use crate::idle::{Activity, Facts, Step, corrected_state, decide};
use crate::lease::Leadership;
use crate::metrics::Metrics;

/// How long the recorded state may disagree with the replica count before it is corrected
/// (a wake writes `awake` itself once the endpoints are ready).
const CORRECT_AFTER_MS: u64 = 3_000;

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

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
            a.touch(&key, now_ms());
        }
    }

    /// Counts activity on the Deployment behind `cluster`, if managed.
    pub fn touch_cluster(&self, cache: &Cache, cluster: &str) {
        if let Some((key, _, _)) = cache.destination(cluster)
            && let Ok(mut a) = self.activity.lock()
        {
            a.touch(key, now_ms());
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
}

/// What the sleeper remembers between passes.
#[derive(Debug, Default)]
struct Memory {
    /// Since when each Deployment is draining.
    draining: HashMap<Key, u64>,
    /// Since when each Deployment's recorded state disagrees with its replicas.
    mismatched: HashMap<Key, u64>,
    /// Leading in the last pass.
    leading: bool,
}

impl<S: Scaler> Sleeper<S> {
    /// Runs forever.
    pub async fn run(self) {
        let mut memory = Memory::default();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let leading = self.leadership.borrow().leader;
            if leading != memory.leading {
                self.lead(leading, &mut memory).await;
            }
            if leading {
                self.pass(&mut memory.draining).await;
                self.correct_states(&mut memory.mismatched).await;
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

    /// Rewrites `kzscaler.io/state` where it has disagreed with the replicas for a while.
    async fn correct_states(&self, mismatched: &mut HashMap<Key, u64>) {
        let now = now_ms();
        let wrong: Vec<(Key, &'static str, i32)> = {
            let cache = self.cache.read().await;
            cache
                .all_managed()
                .iter()
                .filter_map(|(k, m)| {
                    corrected_state(m.desired, m.recorded_state.as_deref())
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
                    "kzscaler.io/state said asleep but the Deployment has {desired} replica(s), set outside kzscaler: treated as awake; the idle timeout starts now"
                )
            } else {
                "kzscaler.io/state said awake but the Deployment has 0 replicas, set outside kzscaler: treated as asleep; a request wakes it".to_owned()
            };
            match self.scaler.correct_state(&key, state, why).await {
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
        let now = now_ms();
        let managed: Vec<(Key, i32, State, Duration, bool)> = {
            let cache = self.cache.read().await;
            cache
                .all_managed()
                .iter()
                .map(|(k, m)| {
                    (
                        k.clone(),
                        m.desired,
                        m.state(),
                        m.spec.idle_timeout,
                        m.spec.paused,
                    )
                })
                .collect()
        };
        let mut to_sleep = Vec::new();
        let mut changed = false;
        {
            // The cache lock first: no await while the activity lock is held.
            let mut cache = self.cache.write().await;
            let Ok(mut activity) = self.idle.activity.lock() else {
                return;
            };
            activity.retain(|k| managed.iter().any(|(m, ..)| m == k));
            draining.retain(|k, _| managed.iter().any(|(m, ..)| m == k));
            for (key, desired, state, idle_timeout, paused) in &managed {
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
                    }
                    Step::Undrain => {
                        if *state == State::Awake {
                            tracing::info!(deployment = %key, "activity while draining: sleep cancelled");
                        }
                        draining.remove(key);
                        changed |= cache.set_draining(key, false);
                    }
                    Step::Sleep => {
                        let idle_ms = now.saturating_sub(facts.last_active);
                        to_sleep.push((key.clone(), *desired, idle_ms));
                    }
                }
            }
        }
        if changed {
            self.changes.send_modify(|v| *v += 1);
        }
        for (key, desired, idle_ms) in to_sleep {
            let replicas = u32::try_from(desired).unwrap_or(1);
            match self.scaler.sleep(&key, replicas, idle_ms).await {
                // Stays marked draining until the cache shows 0 replicas (then the mark goes).
                Ok(()) => {
                    self.metrics.sleep("ok");
                    tracing::info!(deployment = %key, replicas, idle_ms, "asleep: scaled to 0")
                }
                Err(e) => {
                    self.metrics.sleep("failed");
                    tracing::warn!(deployment = %key, error = %e, "could not put it to sleep; will retry after the idle timeout");
                    draining.remove(&key);
                    if let Ok(mut a) = self.idle.activity.lock() {
                        a.touch(&key, now);
                    }
                    if self.cache.write().await.set_draining(&key, false) {
                        self.changes.send_modify(|v| *v += 1);
                    }
                }
            }
        }
    }
}
