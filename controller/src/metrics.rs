//! Prometheus metrics, served on `/metrics`.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `kzscaler_activate_requests_total` | counter | `result` = ready, timeout, not_managed, scale_failed, bad_request | activate calls answered |
//! | `kzscaler_wakes_total` | counter | `result` = ok, failed | wakes started by the controller (one scale PATCH each) |
//! | `kzscaler_wake_phase_seconds` | histogram | `phase` = scale, pod_ready, endpoint_ready | time from the first activate to the end of each phase of a wake |
//! | `kzscaler_snapshot_requests_total` | counter | `status` = 200, delta, 304, bad_request, not_leader, not_ready | snapshot polls by filters |
//! | `kzscaler_index_update_seconds` | histogram | `step` = apply, publish | time to apply one watch event to the index, and to publish a batch of them as a snapshot version |
//! | `kzscaler_destinations` | gauge | `state` = awake, draining, asleep, waking | managed destinations by state |
//! | `kzscaler_sleeps_total` | counter | `result` = ok, failed, stale | idle Deployments scaled to 0 |
//! | `kzscaler_sleeper_looks_total` | counter | | Deployments the sleeper looked at (changed, due, or draining): follows change, not the fleet's size |
//! | `kzscaler_leader` | gauge | | 1 while this replica holds the Lease and acts, 0 while it follows |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::activate::WakeRecord;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

fn phase_histogram() -> Histogram {
    Histogram::new([
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    ])
}

/// The controller's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    activate: Family<ResultLabel, Counter>,
    wakes: Family<ResultLabel, Counter>,
    phases: Family<PhaseLabel, Histogram, fn() -> Histogram>,
    snapshot: Family<StatusLabel, Counter>,
    destinations: Family<StateLabel, Gauge>,
    sleeps: Family<ResultLabel, Counter>,
    leader: Gauge,
    looks: Counter,
    index: Family<StepLabel, Histogram, fn() -> Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: &'static str,
}

fn index_histogram() -> Histogram {
    Histogram::new([
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kzscaler");
        let activate = Family::<ResultLabel, Counter>::default();
        let wakes = Family::<ResultLabel, Counter>::default();
        let phases = Family::<PhaseLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            phase_histogram as fn() -> Histogram,
        );
        let snapshot = Family::<StatusLabel, Counter>::default();
        let destinations = Family::<StateLabel, Gauge>::default();
        let sleeps = Family::<ResultLabel, Counter>::default();
        let leader = Gauge::default();
        let looks = Counter::default();
        let index = Family::<StepLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            index_histogram as fn() -> Histogram,
        );
        registry.register(
            "index_update_seconds",
            "Time to apply one watch event to the index (apply), and to publish a batch as a snapshot version (publish)",
            index.clone(),
        );
        registry.register(
            "activate_requests",
            "Activate calls answered, by result",
            activate.clone(),
        );
        registry.register(
            "wakes",
            "Wakes started by the controller (one scale PATCH each)",
            wakes.clone(),
        );
        registry.register(
            "wake_phase_seconds",
            "Time from the first activate to the end of each phase of a wake",
            phases.clone(),
        );
        registry.register(
            "snapshot_requests",
            "Snapshot polls by filters, by HTTP status",
            snapshot.clone(),
        );
        registry.register(
            "destinations",
            "Managed destinations by state",
            destinations.clone(),
        );
        registry.register(
            "sleeps",
            "Idle Deployments scaled to 0, by result",
            sleeps.clone(),
        );
        registry.register(
            "sleeper_looks",
            "Deployments the sleeper looked at (changed, due, or draining)",
            looks.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the Lease and acts, 0 while it follows",
            leader.clone(),
        );
        Self {
            registry,
            activate,
            wakes,
            phases,
            snapshot,
            destinations,
            sleeps,
            leader,
            looks,
            index,
        }
    }
}

impl Metrics {
    /// Counts an activate answer.
    pub fn activate(&self, result: &'static str) {
        self.activate.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts a failed wake.
    pub fn wake_failed(&self) {
        self.wakes
            .get_or_create(&ResultLabel { result: "failed" })
            .inc();
    }

    /// Records a finished wake's phases.
    pub fn wake_recorded(&self, w: &WakeRecord) {
        self.wakes
            .get_or_create(&ResultLabel { result: "ok" })
            .inc();
        let secs = |ms: u64| ms as f64 / 1000.0;
        self.phases
            .get_or_create(&PhaseLabel { phase: "scale" })
            .observe(secs(w.scale_ms));
        if let Some(ms) = w.pod_ready_ms {
            self.phases
                .get_or_create(&PhaseLabel { phase: "pod_ready" })
                .observe(secs(ms));
        }
        if let Some(ms) = w.endpoint_ready_ms {
            self.phases
                .get_or_create(&PhaseLabel {
                    phase: "endpoint_ready",
                })
                .observe(secs(ms));
        }
    }

    /// Counts a snapshot poll.
    pub fn snapshot(&self, status: &'static str) {
        self.snapshot.get_or_create(&StatusLabel { status }).inc();
    }

    /// Sets the number of destinations in each state.
    pub fn destinations(&self, counts: [(&'static str, i64); 4]) {
        for (state, n) in counts {
            self.destinations
                .get_or_create(&StateLabel { state })
                .set(n);
        }
    }

    /// Counts a sleep (`ok` or `failed`).
    pub fn sleep(&self, result: &'static str) {
        self.sleeps.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts the Deployments of one sleeper round.
    pub fn sleeper_looks(&self, n: usize) {
        self.looks.inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Observes the time of one index step (`apply` or `publish`).
    pub fn index_update(&self, step: &'static str, seconds: f64) {
        self.index
            .get_or_create(&StepLabel { step })
            .observe(seconds);
    }

    /// Sets whether this replica leads.
    pub fn leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_names_and_labels() {
        let m = Metrics::default();
        m.activate("ready");
        m.wake_recorded(&WakeRecord {
            replicas: 1,
            scale_ms: 12,
            pod_ready_ms: Some(300),
            endpoint_ready_ms: Some(400),
        });
        let text = m.encode();
        assert!(
            text.contains("kzscaler_activate_requests_total{result=\"ready\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kzscaler_wakes_total{result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kzscaler_wake_phase_seconds_count{phase=\"endpoint_ready\"} 1"),
            "{text}"
        );
    }
}
