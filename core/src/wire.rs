//! The filter ↔ controller HTTP API (version 1). Both sides use these types, so they cannot drift.
//!
//! ```text
//! GET  /v1/snapshot   (If-None-Match: "<version>")  → 200 Snapshot | 304
//! GET  /v1/snapshot?since=V&term=T[&wait=S]         → 200 Delta (or Snapshot) | 304
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
    /// The controller's leadership term this version belongs to: a delta is answered only
    /// for a version of the same term (0 from a controller that gives no deltas).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub term: u64,
    /// Sorted by cluster name.
    pub destinations: Vec<Destination>,
    /// The HTTP route timeouts of the VirtualServices that route to managed destinations,
    /// sorted by namespace and name: a plain-HTTP caller's deadline, as Istio sets it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_services: Vec<RouteTimeouts>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Query parameter of [`SNAPSHOT_PATH`]: the version the filter holds. With it (and
/// [`TERM_PARAM`]) the controller answers a [`Delta`] from that version, a full [`Snapshot`]
/// when it no longer knows what changed since, or 304 when nothing did.
pub const SINCE_PARAM: &str = "since";
/// Query parameter: the term of the version in [`SINCE_PARAM`].
pub const TERM_PARAM: &str = "term";
/// Query parameter: seconds to wait for a change before answering 304 (a long poll).
pub const WAIT_PARAM: &str = "wait";
/// The longest long poll the controller keeps open, in seconds.
pub const MAX_WAIT_SECS: u64 = 60;

/// The `Content-Type` of a [`Delta`] answer (a full snapshot is `application/json`).
pub const DELTA_CONTENT_TYPE: &str = "application/vnd.kzscaler.delta+json";

/// What changed from version `since` to `version` (both of `term`): apply `remove`, then
/// `upsert`, in place.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// The version this brings the table to.
    pub version: u64,
    /// The term of both versions.
    pub term: u64,
    /// The version it applies to: the table must be at exactly this version.
    pub since: u64,
    /// Destinations added or changed, sorted by cluster name.
    #[serde(default)]
    pub upsert: Vec<Destination>,
    /// Cluster names no longer managed, sorted.
    #[serde(default)]
    pub remove: Vec<String>,
    /// The route timeouts in full, when they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_services: Option<Vec<RouteTimeouts>>,
}

/// The snapshot's `ETag` for a version and the exact bytes served: the version (which moves
/// forward across leadership terms) and a hash of the content, so two replicas can never
/// answer 304 for different content. A filter computes it from the body it holds.
pub fn snapshot_etag(version: u64, body: &[u8]) -> String {
    // FNV-1a, 64 bits: no dependency, the same in the Wasm filter and the controller.
    let hash = body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("\"{version}-{hash:016x}\"")
}

/// One VirtualService's HTTP routes and their timeouts. A sidecar's route carries its
/// VirtualService in its metadata (`istio.config`, see [`virtual_service_of`]) and the
/// route's `name` as its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTimeouts {
    /// The VirtualService's namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its HTTP routes, in order.
    pub routes: Vec<RouteTimeout>,
}

/// One HTTP route of a VirtualService.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTimeout {
    /// The route's `name` (empty when it has none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Its `timeout` in milliseconds; 0 when it has none.
    pub timeout_ms: u64,
}

impl RouteTimeouts {
    /// The timeout of the route Envoy names `route`: that route's, when a route has that
    /// name (Istio appends `.<match name>` to it when a match is named); otherwise the
    /// shortest of its unnamed routes' (the request may be on any of them). None: no bound.
    pub fn timeout_ms(&self, route: &str) -> Option<u64> {
        let own = route.split('.').next().unwrap_or(route);
        if !own.is_empty()
            && let Some(r) = self.routes.iter().find(|r| r.name == own)
        {
            return (r.timeout_ms > 0).then_some(r.timeout_ms);
        }
        self.routes
            .iter()
            .filter(|r| r.name.is_empty() && r.timeout_ms > 0)
            .map(|r| r.timeout_ms)
            .min()
    }
}

/// The `(namespace, name)` of the VirtualService in a route's `istio.config` metadata,
/// `/apis/networking.istio.io/<version>/namespaces/<ns>/virtual-service/<name>`.
pub fn virtual_service_of(config: &str) -> Option<(&str, &str)> {
    let rest = config.split_once("/namespaces/")?.1;
    let (namespace, rest) = rest.split_once('/')?;
    let name = rest.strip_prefix("virtual-service/")?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains('/')).then_some((namespace, name))
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
            term: 0,
            destinations: vec![Destination {
                cluster: "outbound|80||web.shop.svc.cluster.local".into(),
                namespace: "shop".into(),
                service: "web".into(),
                deployment: "web".into(),
                state: State::Asleep,
                wake_timeout_ms: 60_000,
                ignore_paths: vec![],
            }],
            virtual_services: vec![],
        };
        let json = serde_json::to_string(&snap).unwrap();
        assert_eq!(
            json,
            r#"{"version":7,"destinations":[{"cluster":"outbound|80||web.shop.svc.cluster.local","namespace":"shop","service":"web","deployment":"web","state":"asleep","wake_timeout_ms":60000}]}"#
        );
        assert_eq!(serde_json::from_str::<Snapshot>(&json).unwrap(), snap);
    }

    #[test]
    fn the_etag_names_the_version_and_the_content() {
        assert_eq!(snapshot_etag(7, b""), "\"7-cbf29ce484222325\"");
        assert_eq!(snapshot_etag(7, b"a"), snapshot_etag(7, b"a"));
        assert_ne!(
            snapshot_etag(7, b"a"),
            snapshot_etag(7, b"b"),
            "same version, other content"
        );
        assert_ne!(snapshot_etag(7, b"a"), snapshot_etag(8, b"a"));
    }

    #[test]
    fn a_route_finds_its_own_timeout_or_the_shortest_unnamed_one() {
        let vs = RouteTimeouts {
            namespace: "shop".into(),
            name: "web".into(),
            routes: vec![
                RouteTimeout {
                    name: "slow".into(),
                    timeout_ms: 7_000,
                },
                RouteTimeout {
                    name: "open".into(),
                    timeout_ms: 0,
                },
                RouteTimeout {
                    name: String::new(),
                    timeout_ms: 3_000,
                },
                RouteTimeout {
                    name: String::new(),
                    timeout_ms: 2_000,
                },
            ],
        };
        assert_eq!(vs.timeout_ms("slow"), Some(7_000));
        assert_eq!(
            vs.timeout_ms("slow.by-header"),
            Some(7_000),
            "a named match"
        );
        assert_eq!(vs.timeout_ms("open"), None, "its route has no timeout");
        assert_eq!(vs.timeout_ms(""), Some(2_000));
        assert_eq!(vs.timeout_ms("other"), Some(2_000));
        assert_eq!(
            virtual_service_of("/apis/networking.istio.io/v1/namespaces/shop/virtual-service/web"),
            Some(("shop", "web"))
        );
        for bad in [
            "",
            "/apis/networking.istio.io/v1/namespaces/shop/destination-rule/web",
            "/apis/networking.istio.io/v1/namespaces//virtual-service/web",
            "/namespaces/shop/virtual-service/",
        ] {
            assert_eq!(virtual_service_of(bad), None, "{bad}");
        }
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
