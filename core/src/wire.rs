//! The filter ↔ controller HTTP API (version 1). Both sides use these types, so they cannot drift.
//!
//! ```text
//! GET  /v1/snapshot   (If-None-Match: "<version>")  → 200 Snapshot | 304
//! POST /v1/activate   ActivateRequest               → 200 ActivateResponse (state says ready or not)
//! POST /v1/activity   ActivityReport                → 204 (400 for a bad body)
//! ```

use serde::{Deserialize, Serialize};

/// The API version prefix of every path.
pub const API_PREFIX: &str = "/v1";
/// Path of the snapshot.
pub const SNAPSHOT_PATH: &str = "/v1/snapshot";
/// Path of activate.
pub const ACTIVATE_PATH: &str = "/v1/activate";
/// Path of activity reports.
pub const ACTIVITY_PATH: &str = "/v1/activity";

/// What a destination is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Has ready replicas; requests pass untouched.
    Awake,
    /// About to sleep: activity now cancels the sleep.
    Draining,
    /// Scaled to 0: a request must activate it.
    Asleep,
    /// Scaled up, no ready endpoint yet: requests are held.
    Waking,
    /// A state a newer controller sends that this build does not know. Never sent; a
    /// destination in it is never held (its requests pass as if awake), and the rest of the
    /// snapshot still applies.
    #[serde(other)]
    Unknown,
}

impl State {
    /// Whether a request to a destination in this state must be held and activate called
    /// when the caller's Envoy has no endpoint for it. Draining counts: once the Deployment
    /// is scaled to 0 its endpoints go before the next snapshot poll says asleep.
    pub fn must_hold(self) -> bool {
        matches!(self, State::Asleep | State::Waking | State::Draining)
    }

    /// Whether a request must be held even though this Envoy has endpoints: while draining,
    /// every request asks the controller first (activate cancels the sleep and answers at
    /// once), so none can reach an endpoint that a committed sleep is about to remove.
    pub fn hold_despite_endpoints(self) -> bool {
        self == State::Draining
    }
}

/// One managed destination (a Service port whose Service selects a managed Deployment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// The outbound cluster name, `outbound|<port>||<svc>.<ns>.svc.<domain>`: the filter's key.
    pub cluster: String,
    /// Namespace of the Service and Deployment.
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// The Deployment it selects.
    pub deployment: String,
    /// What it is doing now.
    pub state: State,
    /// Longest time a request may be held while it wakes, in milliseconds.
    pub wake_timeout_ms: u64,
    /// Path prefixes whose requests never count as activity (`kzscaler.io/ignore-paths`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_paths: Vec<String>,
}

/// Every managed destination, with a version that changes whenever the content does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Changes whenever `destinations` does; sent as the ETag.
    pub version: u64,
    /// Sorted by cluster name.
    pub destinations: Vec<Destination>,
}

/// A filter asks the controller to wake the Deployment behind a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivateRequest {
    /// The outbound cluster name of the held request.
    pub cluster: String,
    /// How long the caller will wait, in milliseconds; the controller answers before then.
    pub deadline_ms: u64,
    /// Whether the held requests count as activity (false when all are probes or ignored
    /// paths: they may wake a sleeping Deployment but never cancel a sleep).
    #[serde(default = "yes")]
    pub activity: bool,
}

fn yes() -> bool {
    true
}

/// The controller's answer to [`ActivateRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivateResponse {
    /// The destination's state when answering: `awake` means a ready endpoint exists.
    pub state: State,
    /// Why it is not awake, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Requests counted by one filter since its last report; sent only when non-zero.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityReport {
    /// Per outbound cluster: requests started since the last report.
    #[serde(default)]
    pub outbound: Vec<ClusterCount>,
    /// Requests served by the reporting pod's own workload (its inbound side), when that
    /// workload is managed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inbound: Vec<InboundCount>,
}

/// Requests to one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterCount {
    /// The outbound cluster name.
    pub cluster: String,
    /// Requests since the last report.
    pub requests: u64,
    /// Requests to it in flight now (a long stream keeps its service awake).
    #[serde(default)]
    pub in_flight: u64,
}

/// Inbound requests served by a pod of a managed Deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundCount {
    /// Namespace of the pod.
    pub namespace: String,
    /// Its Deployment (Istio's `WORKLOAD_NAME` node metadata).
    pub deployment: String,
    /// Requests served since the last report.
    pub requests: u64,
    /// Requests in flight now (long streams keep a service awake).
    #[serde(default)]
    pub in_flight: u64,
}

/// Prefix of the counter key of inbound requests (`inbound|<namespace>/<deployment>`); the
/// same prefix starts Istio's inbound cluster names.
pub const INBOUND_PREFIX: &str = "inbound|";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_json_is_stable() {
        let snap = Snapshot {
            version: 7,
            destinations: vec![Destination {
                cluster: "outbound|80||web.shop.svc.cluster.local".into(),
                namespace: "shop".into(),
                service: "web".into(),
                deployment: "web".into(),
                state: State::Asleep,
                wake_timeout_ms: 60_000,
                ignore_paths: vec![],
            }],
        };
        let json = serde_json::to_string(&snap).unwrap();
        assert_eq!(
            json,
            r#"{"version":7,"destinations":[{"cluster":"outbound|80||web.shop.svc.cluster.local","namespace":"shop","service":"web","deployment":"web","state":"asleep","wake_timeout_ms":60000}]}"#
        );
        assert_eq!(serde_json::from_str::<Snapshot>(&json).unwrap(), snap);
    }

    #[test]
    fn every_state_but_awake_holds_without_endpoints() {
        assert!(State::Asleep.must_hold());
        assert!(State::Waking.must_hold());
        assert!(State::Draining.must_hold());
        assert!(!State::Awake.must_hold());
        assert!(State::Draining.hold_despite_endpoints());
        assert!(!State::Awake.hold_despite_endpoints());
        assert!(!State::Asleep.hold_despite_endpoints());
    }

    #[test]
    fn a_state_this_build_does_not_know_reads_as_unknown_and_never_holds() {
        let s: State = serde_json::from_str(r#""hibernating""#).unwrap();
        assert_eq!(s, State::Unknown);
        assert!(!s.must_hold() && !s.hold_despite_endpoints());
        assert!(serde_json::from_str::<State>("7").is_err(), "not a string");
    }
}
