//! When an awake Deployment goes to sleep: the pure decision, and the activity it is made from.
//!
//! ```text
//!  awake ──idle ≥ idle-timeout──▶ draining (in the snapshot) ──drain period, no activity──▶ sleep
//!    ▲                               │ activity or activate
//!    └───────────────────────────────┘
//! ```
//! The drain period is at least two filter poll periods, so every filter has seen `draining`
//! (and holds requests once the endpoints go) before the scale to 0.

use std::collections::HashMap;
use std::time::Duration;

use crate::cache::Key;

/// What to do with one Deployment now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing.
    Stay,
    /// Mark it draining.
    Drain,
    /// Activity came: unmark it.
    Undrain,
    /// Scale it to 0.
    Sleep,
}

/// The facts one decision needs, all in milliseconds since the epoch.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    /// Now.
    pub now: u64,
    /// Last counted activity (or when the controller first saw it).
    pub last_active: u64,
    /// `kzscaler.io/idle-timeout`.
    pub idle_timeout: Duration,
    /// `kzscaler.io/paused`.
    pub paused: bool,
    /// Awake: replicas and a ready endpoint.
    pub awake: bool,
    /// Since when it is draining, if it is.
    pub draining_since: Option<u64>,
    /// How long draining lasts before the scale to 0.
    pub drain_period: Duration,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The decision for one Deployment.
pub fn decide(f: Facts) -> Step {
    let draining = f.draining_since.is_some();
    if !f.awake || f.paused {
        return if draining { Step::Undrain } else { Step::Stay };
    }
    match f.draining_since {
        // `>=`: activity in the very millisecond the drain began still cancels it.
        Some(since) if f.last_active >= since => Step::Undrain,
        Some(since) if f.now.saturating_sub(since) >= ms(f.drain_period) => Step::Sleep,
        Some(_) => Step::Stay,
        None if f.now.saturating_sub(f.last_active) >= ms(f.idle_timeout) => Step::Drain,
        None => Step::Stay,
    }
}

/// When the decision for a Deployment can next change by time alone, after `step` was taken
/// on `f`: the end of its drain or of its idle timeout. `None` when only an event can change
/// it (not awake, paused, or a sleep committed: the watch brings the change).
pub fn next_look(f: Facts, step: Step) -> Option<u64> {
    let draining_since = match step {
        Step::Stay => f.draining_since,
        Step::Drain => Some(f.now),
        Step::Undrain => None,
        Step::Sleep => return None,
    };
    if !f.awake || f.paused {
        return None;
    }
    Some(match draining_since {
        Some(since) => since.saturating_add(ms(f.drain_period)),
        None => f.last_active.saturating_add(ms(f.idle_timeout)),
    })
}

/// The [`kzscaler_core::names::STATE`] annotation that matches the replica count, when the
/// recorded one does not: `spec.replicas` > 0 is awake (a user scaled an asleep Deployment by
/// hand, or a controller stopped mid-wake), 0 is asleep (scaled down by hand).
/// A `draining` record is stale when this controller is not draining it (a controller
/// stopped mid-drain).
pub fn corrected_state(
    desired: i32,
    recorded: Option<&str>,
    draining: bool,
) -> Option<&'static str> {
    match (desired > 0, recorded) {
        (true, Some("asleep")) => Some("awake"),
        (true, Some("draining")) if !draining => Some("awake"),
        (false, Some("awake" | "draining")) => Some("asleep"),
        _ => None,
    }
}

/// Last activity per Deployment. A Deployment first seen now counts as active now, so a
/// restarted controller never puts anything to sleep before a whole idle timeout.
#[derive(Debug, Default)]
pub struct Activity {
    last: HashMap<Key, u64>,
    /// Last real request (reports, activations), as opposed to clock starts.
    requests: HashMap<Key, u64>,
    /// The uid each Deployment had when its clock started.
    uids: HashMap<Key, String>,
}

impl Activity {
    /// Records a request (reported by a filter) now.
    pub fn request(&mut self, key: &Key, now: u64) {
        // Only a running clock moves: a Deployment that is not awake (the request wakes it)
        // has none, and idleness counts from when it is awake.
        if let Some(at) = self.last.get_mut(key) {
            *at = now;
        }
        self.requests.insert(key.clone(), now);
    }

    /// Holds the clock of a Deployment that is not awake: nothing is kept for it, and its
    /// clock starts at the first [`Activity::last_active`] that finds it awake, however it
    /// woke (a wake, or replicas set by hand). A sleeping fleet costs no memory here.
    pub fn hold(&mut self, key: &Key) {
        self.last.remove(key);
        self.uids.remove(key);
    }

    /// The last real request seen, if any.
    pub fn last_request(&self, key: &Key) -> Option<u64> {
        self.requests.get(key).copied()
    }

    /// Records activity now.
    pub fn touch(&mut self, key: &Key, now: u64) {
        match self.last.get_mut(key) {
            Some(at) => *at = now,
            None => {
                self.last.insert(key.clone(), now);
            }
        }
    }

    /// Last activity, starting the clock if unknown.
    pub fn last_active(&mut self, key: &Key, now: u64) -> u64 {
        match self.last.get(key) {
            Some(at) => *at,
            None => {
                self.last.insert(key.clone(), now);
                now
            }
        }
    }

    /// Notes the uid of the Deployment `key` names now; when it is another Deployment than
    /// before (deleted and created again under its name), its clock is forgotten and `true`
    /// returned: the new one starts its own idle time, and nothing of the old one carries over.
    pub fn forget_if_recreated(&mut self, key: &Key, uid: &str) -> bool {
        match self.uids.get_mut(key) {
            Some(old) if old == uid => false,
            Some(old) => {
                uid.clone_into(old);
                self.last.remove(key);
                self.requests.remove(key);
                true
            }
            None => {
                self.uids.insert(key.clone(), uid.to_owned());
                false
            }
        }
    }

    /// Forgets every clock: each restarts at its next [`Activity::last_active`], as after a
    /// restart (a replica that just became leader has seen no activity reports).
    pub fn clear(&mut self) {
        self.last.clear();
        self.requests.clear();
        self.uids.clear();
    }

    /// Whether anything is kept about a Deployment.
    pub fn knows(&self, key: &Key) -> bool {
        self.last.contains_key(key)
            || self.requests.contains_key(key)
            || self.uids.contains_key(key)
    }

    /// Forgets a Deployment that is no longer managed.
    pub fn forget(&mut self, key: &Key) {
        self.last.remove(key);
        self.requests.remove(key);
        self.uids.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_state_follows_replicas_set_by_hand() {
        assert_eq!(corrected_state(2, Some("asleep"), false), Some("awake"));
        assert_eq!(corrected_state(0, Some("awake"), false), Some("asleep"));
        assert_eq!(corrected_state(1, Some("awake"), false), None);
        assert_eq!(corrected_state(0, Some("asleep"), false), None);
        // Never recorded: nothing to correct (kzscaler has not acted on it yet).
        assert_eq!(corrected_state(0, None, false), None);
        assert_eq!(corrected_state(3, None, false), None);
    }

    #[test]
    fn a_draining_record_left_by_a_stopped_controller_is_corrected() {
        assert_eq!(corrected_state(1, Some("draining"), true), None);
        assert_eq!(corrected_state(1, Some("draining"), false), Some("awake"));
        assert_eq!(corrected_state(0, Some("draining"), false), Some("asleep"));
    }

    fn facts() -> Facts {
        Facts {
            now: 100_000,
            last_active: 100_000,
            idle_timeout: Duration::from_secs(10),
            paused: false,
            awake: true,
            draining_since: None,
            drain_period: Duration::from_secs(2),
        }
    }

    #[test]
    fn drains_after_the_idle_timeout_then_sleeps_after_the_drain_period() {
        let f = Facts {
            now: 109_999,
            last_active: 100_000,
            ..facts()
        };
        assert_eq!(decide(f), Step::Stay);
        let f = Facts { now: 110_000, ..f };
        assert_eq!(decide(f), Step::Drain);
        let f = Facts {
            draining_since: Some(110_000),
            now: 111_999,
            ..f
        };
        assert_eq!(decide(f), Step::Stay);
        assert_eq!(decide(Facts { now: 112_000, ..f }), Step::Sleep);
    }

    #[test]
    fn activity_while_draining_cancels_the_sleep() {
        let f = Facts {
            draining_since: Some(110_000),
            last_active: 110_500,
            now: 113_000,
            ..facts()
        };
        assert_eq!(decide(f), Step::Undrain);
    }

    #[test]
    fn paused_or_not_awake_never_sleeps() {
        let idle = Facts {
            now: 1_000_000,
            last_active: 0,
            ..facts()
        };
        assert_eq!(
            decide(Facts {
                paused: true,
                ..idle
            }),
            Step::Stay
        );
        assert_eq!(
            decide(Facts {
                awake: false,
                ..idle
            }),
            Step::Stay
        );
        assert_eq!(
            decide(Facts {
                paused: true,
                draining_since: Some(1),
                ..idle
            }),
            Step::Undrain
        );
    }

    #[test]
    fn the_next_look_is_the_end_of_the_idle_timeout_or_of_the_drain() {
        let f = Facts {
            now: 105_000,
            ..facts()
        };
        assert_eq!(next_look(f, Step::Stay), Some(110_000), "idle timeout");
        assert_eq!(next_look(f, Step::Drain), Some(107_000), "drain from now");
        let draining = Facts {
            draining_since: Some(104_000),
            ..f
        };
        assert_eq!(next_look(draining, Step::Stay), Some(106_000));
        assert_eq!(
            next_look(draining, Step::Undrain),
            Some(110_000),
            "activity cancelled the drain: the idle timeout again"
        );
        assert_eq!(next_look(f, Step::Sleep), None, "the watch brings the 0");
        assert_eq!(next_look(Facts { awake: false, ..f }, Step::Stay), None);
        assert_eq!(next_look(Facts { paused: true, ..f }, Step::Stay), None);
    }

    #[test]
    fn the_clock_of_a_deployment_not_awake_starts_when_it_is_looked_at_awake() {
        let mut a = Activity::default();
        let k = Key {
            namespace: "shop".into(),
            name: "web".into(),
        };
        assert_eq!(a.last_active(&k, 1_000), 1_000);
        a.hold(&k);
        a.request(&k, 2_000);
        assert_eq!(a.last_request(&k), Some(2_000), "the request is recorded");
        assert_eq!(
            a.last_active(&k, 9_000),
            9_000,
            "awake at 9 s (the wake took 7 s): idle from then, not from the request"
        );
        a.request(&k, 9_500);
        assert_eq!(a.last_active(&k, 12_000), 9_500, "awake: requests count");
        a.forget(&k);
        assert_eq!(a.last_request(&k), None);
    }

    #[test]
    fn unknown_deployments_start_their_clock_now() {
        let mut a = Activity::default();
        let k = Key {
            namespace: "shop".into(),
            name: "web".into(),
        };
        assert_eq!(a.last_active(&k, 5), 5);
        assert_eq!(a.last_active(&k, 50), 5);
        a.touch(&k, 60);
        assert_eq!(a.last_active(&k, 70), 60);
    }

    #[test]
    fn a_deployment_created_again_under_its_name_starts_its_own_idle_clock() {
        let key = Key {
            namespace: "shop".into(),
            name: "web".into(),
        };
        let mut a = Activity::default();
        assert!(!a.forget_if_recreated(&key, "uid-1"));
        assert_eq!(a.last_active(&key, 1_000), 1_000);
        assert!(!a.forget_if_recreated(&key, "uid-1"), "the same Deployment");
        assert_eq!(a.last_active(&key, 600_000), 1_000, "idle since 1 s");
        assert!(a.forget_if_recreated(&key, "uid-2"));
        assert_eq!(
            a.last_active(&key, 600_000),
            600_000,
            "the new Deployment is not ten minutes idle"
        );
    }
}
