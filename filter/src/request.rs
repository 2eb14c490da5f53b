//! The per-request decision at request-header time: pass, count, hold or answer. Plain Rust
//! behind the small [`Request`] trait (what Envoy tells about one request), so it is tested
//! natively; `host.rs` only reads Envoy's properties and headers for it.
//!
//! ```text
//!  table empty ─────────────────────────────────────────────▶ pass (no lookup at all)
//!  xds.cluster_name ─▶ inbound? own Deployment : table.get ─▶ not managed: pass
//!                     └─ count it (activity) ─▶ inbound, awake, or endpoints here: pass
//!                                             └─ hold for the tightest deadline (hold.rs)
//! ```

use kzscaler_core::wire::INBOUND_PREFIX;

use crate::deadline::{envoy_expected_timeout_ms, grpc_timeout_ms, hold_budget_ms};
use crate::hold::{Ask, Counted, Hold, Reply, Why, Worker};

/// What the decision needs to know of one request. Every value is as Envoy gives it: bytes,
/// which may be anything.
pub trait Request {
    /// The request's id (Envoy's context id).
    fn id(&self) -> u32;
    /// `xds.cluster_name`: the cluster the route chose.
    fn cluster_name(&self) -> Option<Vec<u8>>;
    /// A request header.
    fn header(&self, name: &str) -> Option<Vec<u8>>;
    /// `upstream.num_endpoints` of that cluster in this Envoy.
    fn num_endpoints(&self) -> Option<u64>;
    /// The route's `istio.config` metadata (its VirtualService) and its name.
    fn route(&self) -> Option<(Vec<u8>, Vec<u8>)>;
    /// Now, on the worker's clock.
    fn now_ms(&self) -> u64;
}

/// What to do with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let it through.
    Continue,
    /// Paused: the worker resumes or answers it.
    Held,
    /// Answer it now.
    Reply(Reply),
}

/// The decision, and the managed cluster the request counts for until it ends (its
/// in-flight count is ended with [`crate::hold::Counters::end`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// What to do.
    pub decision: Decision,
    /// Counted as activity of this cluster, when it was.
    pub counted: Option<Counted>,
}

impl Outcome {
    fn pass(counted: Option<Counted>) -> Self {
        Self {
            decision: Decision::Continue,
            counted,
        }
    }
}

/// Decides for one request at request-header time.
pub fn on_request_headers(worker: &mut Worker, request: &impl Request) -> Outcome {
    if worker.table.is_empty() {
        return Outcome::pass(None);
    }
    let Some(name) = request.cluster_name() else {
        return Outcome::pass(None);
    };
    let Ok(cluster) = std::str::from_utf8(&name) else {
        return Outcome::pass(None);
    };
    let inbound = cluster.starts_with(INBOUND_PREFIX);
    let w = &mut *worker;
    let entry = if inbound {
        // The inbound side of a pod: its requests are its own Deployment's activity (the
        // table keeps that one workload, named when it was parsed).
        w.table.own_entry()
    } else {
        w.table.get(cluster)
    };
    let Some(e) = entry else {
        return Outcome::pass(None);
    };
    let counted = w.counters.start(&e.cluster, || {
        e.counts(request.header("user-agent").as_deref(), || {
            request.header(":path")
        })
    });
    if inbound {
        return Outcome::pass(counted);
    }
    // Requests to it are held here and their release has not begun: this one joins them,
    // whatever the table or the endpoint count says. Through the wake the table lags (it may
    // say awake before this Envoy has the endpoint), and the endpoint count runs ahead of the
    // worker's host list (REFERENCE.md): a request let through then gets 503 "no healthy
    // upstream". Once the release has begun, new requests go at the caller's own pace.
    let joins = w.must_join(&e.cluster);
    if !e.state.must_hold() && !joins {
        return Outcome::pass(counted);
    }
    let (state, wake_timeout_ms, cluster) = (e.state, e.wake_timeout_ms, e.cluster.clone());
    // This Envoy already routes to an endpoint: nothing to wait for (except while draining:
    // see State::hold_despite_endpoints).
    let endpoints = request.num_endpoints().unwrap_or(0);
    if endpoints > 0 && !state.hold_despite_endpoints() && !joins {
        return Outcome::pass(counted);
    }
    let route_timeout = request.route().and_then(|(config, route)| {
        w.table.route_timeout_ms(
            std::str::from_utf8(&config).ok()?,
            std::str::from_utf8(&route).unwrap_or_default(),
        )
    });
    let budget = hold_budget_ms(
        wake_timeout_ms,
        &[
            // Istio strips it from callers, but a caller whose sidecar trusts it keeps it.
            request
                .header("x-envoy-expected-rq-timeout-ms")
                .as_deref()
                .and_then(envoy_expected_timeout_ms),
            request
                .header("grpc-timeout")
                .as_deref()
                .and_then(grpc_timeout_ms),
            route_timeout,
        ],
    );
    let ask = Ask {
        grpc: request
            .header("content-type")
            .is_some_and(|c| c.starts_with(b"application/grpc")),
        activity: counted.is_some(),
        // Held only to ask first: draining with endpoints in sight (if the controller cannot
        // be asked, it goes through, whether it joined others or not).
        why: if endpoints > 0 && state.hold_despite_endpoints() {
            Why::AskFirst
        } else {
            Why::NoEndpoint
        },
    };
    let decision = match w.hold(request.id(), &cluster, budget, request.now_ms(), ask) {
        Hold::Paused => Decision::Held,
        Hold::Pass => Decision::Continue,
        Hold::Reply(r) => Decision::Reply(r),
    };
    Outcome { decision, counted }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hold::Limits;
    use crate::table::Table;
    use std::collections::HashMap;

    #[derive(Default)]
    struct FakeRequest {
        id: u32,
        cluster: Option<Vec<u8>>,
        headers: HashMap<&'static str, Vec<u8>>,
        endpoints: u64,
        route: Option<(Vec<u8>, Vec<u8>)>,
        now: u64,
    }

    impl Request for FakeRequest {
        fn id(&self) -> u32 {
            self.id
        }
        fn cluster_name(&self) -> Option<Vec<u8>> {
            self.cluster.clone()
        }
        fn header(&self, name: &str) -> Option<Vec<u8>> {
            self.headers.get(name).cloned()
        }
        fn num_endpoints(&self) -> Option<u64> {
            Some(self.endpoints)
        }
        fn route(&self) -> Option<(Vec<u8>, Vec<u8>)> {
            self.route.clone()
        }
        fn now_ms(&self) -> u64 {
            self.now
        }
    }

    const WEB: &str = "outbound|80||web.shop.svc.cluster.local";

    /// A host for the worker's ticks that never sees an endpoint.
    #[derive(Default)]
    struct Ticks {
        now: u64,
        replies: Vec<u32>,
    }

    impl crate::hold::Host for Ticks {
        fn now_ms(&self) -> u64 {
            self.now
        }
        fn num_endpoints(&mut self, _: u32) -> Option<u64> {
            Some(0)
        }
        fn resume(&mut self, _: u32) {}
        fn reply(&mut self, ctx: u32, _: &Reply) {
            self.replies.push(ctx);
        }
        fn call_activate(&mut self, _: &[u8], _: u64) -> Result<u32, String> {
            Ok(1)
        }
    }

    fn worker(state: &str) -> Worker {
        let mut w = Worker::new(Limits {
            max_held: 10,
            release_window: 10,
        });
        w.table = Table::parse(
            format!(
                r#"{{"version":1,"destinations":[{{"cluster":"{WEB}","namespace":"shop","service":"web","deployment":"web","state":"{state}","wake_timeout_ms":60000}}],
                "virtual_services":[{{"namespace":"shop","name":"web","routes":[{{"timeout_ms":2000}}]}}]}}"#
            )
            .as_bytes(),
            Some("shop/web"),
        )
        .unwrap();
        w
    }

    fn to_web() -> FakeRequest {
        FakeRequest {
            id: 7,
            cluster: Some(WEB.as_bytes().to_vec()),
            ..Default::default()
        }
    }

    #[test]
    fn an_awake_destination_passes_and_counts() {
        let mut w = worker("awake");
        let out = on_request_headers(&mut w, &to_web());
        assert_eq!(out.decision, Decision::Continue);
        assert_eq!(out.counted.as_ref().map(Counted::cluster), Some(WEB));
        assert!(!w.holding());
    }

    #[test]
    fn an_asleep_destination_without_endpoints_is_held_for_the_route_timeout() {
        let mut w = worker("asleep");
        let mut r = to_web();
        r.route = Some((
            b"/apis/networking.istio.io/v1/namespaces/shop/virtual-service/web".to_vec(),
            Vec::new(),
        ));
        assert_eq!(on_request_headers(&mut w, &r).decision, Decision::Held);
        let mut host = Ticks {
            now: 1_899,
            ..Ticks::default()
        };
        w.tick(&mut host);
        assert!(host.replies.is_empty());
        host.now = 1_900;
        w.tick(&mut host);
        assert_eq!(
            host.replies.len(),
            1,
            "the 2 s route timeout less its margin"
        );
    }

    #[test]
    fn headers_with_any_bytes_neither_panic_nor_change_the_decision() {
        let mut w = worker("asleep");
        let mut r = to_web();
        r.headers.insert("user-agent", b"caf\xe9".to_vec());
        r.headers.insert("grpc-timeout", "1µ".as_bytes().to_vec());
        r.headers
            .insert("x-envoy-expected-rq-timeout-ms", b"\xff\xfe".to_vec());
        r.headers
            .insert("content-type", b"\x80application/grpc".to_vec());
        let out = on_request_headers(&mut w, &r);
        assert_eq!(out.decision, Decision::Held);
        assert_eq!(out.counted.as_ref().map(Counted::cluster), Some(WEB));
    }

    #[test]
    fn endpoints_here_pass_except_while_draining() {
        let mut r = to_web();
        r.endpoints = 1;
        let mut asleep = worker("asleep");
        assert_eq!(
            on_request_headers(&mut asleep, &r).decision,
            Decision::Continue
        );
        let mut draining = worker("draining");
        assert_eq!(
            on_request_headers(&mut draining, &r).decision,
            Decision::Held
        );
    }

    #[test]
    fn a_request_arriving_while_others_are_held_joins_them_whatever_the_table_says() {
        let mut w = worker("waking");
        assert_eq!(
            on_request_headers(&mut w, &to_web()).decision,
            Decision::Held
        );
        // The endpoint count already shows the woken pod, and the table says awake: the
        // worker's host list may still be empty, and the held ones go first.
        w.table = worker("awake").table;
        let mut next = to_web();
        next.id = 8;
        next.endpoints = 1;
        assert_eq!(on_request_headers(&mut w, &next).decision, Decision::Held);
        // Nothing held any more here: the warm path again.
        let mut fresh = worker("awake");
        assert_eq!(
            on_request_headers(&mut fresh, &next).decision,
            Decision::Continue
        );
    }

    #[test]
    fn unknown_clusters_and_names_that_are_not_utf8_pass_uncounted() {
        let mut w = worker("asleep");
        for name in [
            &b"outbound|80||db.shop.svc.cluster.local"[..],
            b"\xff\xfe",
            b"",
        ] {
            let r = FakeRequest {
                cluster: Some(name.to_vec()),
                ..Default::default()
            };
            assert_eq!(on_request_headers(&mut w, &r), Outcome::pass(None));
        }
        let none = FakeRequest::default();
        assert_eq!(on_request_headers(&mut w, &none), Outcome::pass(None));
    }

    #[test]
    fn inbound_requests_count_for_the_pods_own_deployment_and_pass() {
        let mut w = worker("asleep");
        let r = FakeRequest {
            cluster: Some(b"inbound|8080||".to_vec()),
            ..Default::default()
        };
        let out = on_request_headers(&mut w, &r);
        assert_eq!(out.decision, Decision::Continue);
        assert_eq!(
            out.counted.as_ref().map(Counted::cluster),
            Some("inbound|shop/web")
        );
    }
}
