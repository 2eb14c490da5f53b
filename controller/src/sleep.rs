//! The sleeper: every few hundred milliseconds, decides for each managed Deployment whether to
//! start draining, cancel a drain, or scale it to 0 (`idle.rs` decides; this only acts).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kzscaler_core::wire::State;
use tokio::sync::{RwLock, watch};

use crate::activate::Scaler;
use crate::cache::{Cache, Key};
use crate::idle::{Activity, Facts, Step, decide};

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
}

impl<S: Scaler> Sleeper<S> {
    /// Runs forever.
    pub async fn run(self) {
        let mut draining: HashMap<Key, u64> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            self.pass(&mut draining).await;
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
                    tracing::info!(deployment = %key, replicas, idle_ms, "asleep: scaled to 0")
                }
                Err(e) => {
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
