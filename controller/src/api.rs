//! The HTTP API for filters (version 1) and the health and metrics endpoints.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /v1/snapshot` | 200 [`Snapshot`] with `ETag: "<version>"`; 304 when `If-None-Match` matches; 503 before the first lists are in |
//! | `GET /v1/snapshot?since=V&term=T&wait=S` | 200 [`Delta`] from version V of term T; 200 [`Snapshot`] when V is unknown or too old; 304 when V is current, after waiting up to S seconds (at most 60) for a change; 400 naming a bad parameter |
//! | `POST /v1/activate` [`ActivateRequest`] | 200 `{"state":"awake"}` once a ready endpoint exists; 504 `{"state":..,"message":..}` when the deadline passes first; 404 for a destination that is not managed; 502 when scaling failed; 400 for a bad body; 503 on a replica that is not the leader or has not listed yet |
//! | `POST /v1/activity` [`ActivityReport`] | 204; each outbound cluster, and each inbound Deployment, with requests or requests in flight counts as activity of that Deployment; 400 for a bad body; 503 on a replica that is not the leader or has not listed yet |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 once the first lists of every watched kind are in; 503 before |
//! | `GET /leaderz` | 200 while this replica leads and its first lists are in; 503 naming the leader while it follows, or saying it is not ready |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /v1/module` | the filter's `.wasm`, when started with `--module-file` (404 otherwise) |

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kzscaler_core::wire::{self, ActivateRequest, ActivateResponse, ActivityReport, State};
use tokio::sync::RwLock;

use crate::activate::{Activator, Outcome, Scaler};
use crate::cache::{Answer, Cache};
use crate::metrics::Metrics;

/// What the handlers share.
#[derive(Debug)]
pub struct Api<S> {
    /// The replica cache.
    pub cache: Arc<RwLock<Cache>>,
    /// Activations.
    pub activator: Arc<Activator<S>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Set once the first lists are in.
    pub ready: Arc<AtomicBool>,
    /// The filter module served on `/v1/module`, when the controller serves it.
    pub module: Option<Arc<Vec<u8>>>,
    /// Activity, for idle scale-down.
    pub idle: Arc<crate::sleep::Idle>,
    /// Whether this replica leads (only the leader activates and takes activity).
    pub leadership: tokio::sync::watch::Receiver<crate::lease::Leadership>,
}

impl<S> Api<S> {
    /// `Some(503 answer)` when this replica follows: filters must reach the leader.
    fn not_leader(&self) -> Option<Response> {
        let l = self.leadership.borrow();
        (!l.leader).then(|| {
            let holder = if l.holder.is_empty() {
                "not known yet".to_owned()
            } else {
                l.holder.clone()
            };
            message(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                format!(
                    "this kzscaler controller replica is not the leader (leader: {holder}); retry"
                ),
            )
        })
    }

    /// `Some(503 answer)` until the first lists are in: before that every Deployment would
    /// look unmanaged (a 404 lets held requests go to no endpoint) and the snapshot empty.
    fn not_ready(&self) -> Option<Response> {
        (!self.ready.load(Ordering::Relaxed)).then(|| {
            message(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "this kzscaler controller replica has not listed Deployments, Services, \
                 EndpointSlices and HPAs yet; retry"
                    .to_owned(),
            )
        })
    }
}

/// The router.
pub fn router<S: Scaler>(api: Arc<Api<S>>) -> Router {
    Router::new()
        .route(wire::SNAPSHOT_PATH, get(snapshot::<S>))
        .route(wire::ACTIVATE_PATH, post(activate::<S>))
        .route(wire::ACTIVITY_PATH, post(activity::<S>))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<S>))
        .route("/leaderz", get(leaderz::<S>))
        .route("/metrics", get(metrics::<S>))
        .route("/v1/module", get(module::<S>))
        .with_state(api)
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the answer: {e}\n"),
        )
            .into_response(),
    }
}

/// The query of `GET /v1/snapshot`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SnapshotQuery {
    /// `(since, term)`: the version the filter holds.
    since: Option<(u64, u64)>,
    /// How long to wait for a change before answering 304.
    wait: Duration,
}

impl SnapshotQuery {
    /// Parses `since=V&term=T&wait=S`; unknown parameters are ignored (a newer filter may
    /// send more). The error names the parameter, the value and what was expected.
    fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut since = None;
        let mut term = 0;
        let mut wait = 0;
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let number = |what: &str| {
                v.parse::<u64>().map_err(|_| {
                    format!("query parameter {k}={v:?}: expected {what}, an unsigned integer")
                })
            };
            match k {
                wire::SINCE_PARAM => since = Some(number("a snapshot version")?),
                wire::TERM_PARAM => term = number("a snapshot term")?,
                wire::WAIT_PARAM => wait = number("seconds to wait for a change")?,
                _ => {}
            }
        }
        Ok(Self {
            since: since.map(|s| (s, term)),
            wait: Duration::from_secs(wait.min(wire::MAX_WAIT_SECS)),
        })
    }
}

async fn snapshot<S: Scaler>(
    AxState(api): AxState<Arc<Api<S>>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = match SnapshotQuery::parse(query.as_deref()) {
        Ok(q) => q,
        Err(e) => {
            api.metrics.snapshot("bad_request");
            return message(StatusCode::BAD_REQUEST, None, e);
        }
    };
    let deadline = tokio::time::Instant::now() + query.wait;
    let mut versions = api.cache.read().await.subscribe();
    let mut leadership = api.leadership.clone();
    loop {
        // A follower's view lacks the leader's draining marks, and its versions are not the
        // leader's: filters only ever take the leader's.
        if let Some(r) = api.not_leader() {
            api.metrics.snapshot("not_leader");
            return r;
        }
        if let Some(r) = api.not_ready() {
            api.metrics.snapshot("not_ready");
            return r;
        }
        versions.borrow_and_update();
        let answer = {
            let cache = api.cache.read().await;
            match query.since {
                Some((since, term)) => cache.answer(since, term),
                None => {
                    // Encoded once per version: a poll costs a compare, or a copy of a
                    // reference.
                    let (bytes, etag) = cache.encoded();
                    if headers
                        .get(header::IF_NONE_MATCH)
                        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
                    {
                        api.metrics.snapshot("304");
                        return with_etag(StatusCode::NOT_MODIFIED.into_response(), &etag);
                    }
                    Answer::Full(bytes, etag)
                }
            }
        };
        match answer {
            Answer::Full(bytes, etag) => {
                api.metrics.snapshot("200");
                return with_etag(json_bytes(bytes), &etag);
            }
            Answer::Delta(bytes) => {
                api.metrics.snapshot("delta");
                return (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, wire::DELTA_CONTENT_TYPE)],
                    bytes,
                )
                    .into_response();
            }
            Answer::Current => {
                // A long poll: answer when something changes, the leadership does, or the
                // wait is over.
                // A closed channel never wakes it: it waits out its time.
                // Only losing the lead ends a wait early: a Lease renewal changes the
                // leadership's `until` every retry period.
                let lost_lead = async {
                    if leadership.wait_for(|l| !l.leader).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                };
                let woke = tokio::time::timeout_at(deadline, async {
                    tokio::select! {
                        Ok(()) = versions.changed() => {}
                        () = lost_lead => {}
                        else => std::future::pending().await,
                    }
                })
                .await;
                if woke.is_err() {
                    api.metrics.snapshot("304");
                    return StatusCode::NOT_MODIFIED.into_response();
                }
            }
        }
    }
}

fn json_bytes(bytes: Bytes) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response()
}

fn with_etag(mut r: Response, etag: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

fn message(status: StatusCode, state: Option<State>, msg: String) -> Response {
    #[derive(serde::Serialize)]
    struct Body {
        #[serde(skip_serializing_if = "Option::is_none")]
        state: Option<State>,
        message: String,
    }
    json_response(
        status,
        &Body {
            state,
            message: msg,
        },
    )
}

async fn activate<S: Scaler>(AxState(api): AxState<Arc<Api<S>>>, body: Bytes) -> Response {
    if let Some(r) = api.not_leader() {
        api.metrics.activate("not_leader");
        return r;
    }
    if let Some(r) = api.not_ready() {
        api.metrics.activate("not_ready");
        return r;
    }
    let req: ActivateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            api.metrics.activate("bad_request");
            return message(
                StatusCode::BAD_REQUEST,
                None,
                format!(
                    "activate body is not valid: {e} (expected {{\"cluster\": \"outbound|<port>||<svc>.<ns>.svc.cluster.local\", \"deadline_ms\": <number>}})"
                ),
            );
        }
    };
    // An activation is activity (unless only probes or ignored paths are held): it cancels a
    // drain and restarts the idle clock.
    if req.activity {
        api.idle
            .touch_cluster(&*api.cache.read().await, &req.cluster);
    }
    let outcome = api
        .activator
        .activate(&req.cluster, Duration::from_millis(req.deadline_ms))
        .await;
    match outcome {
        Outcome::Ready => {
            api.metrics.activate("ready");
            json_response(
                StatusCode::OK,
                &ActivateResponse {
                    state: State::Awake,
                    message: None,
                },
            )
        }
        Outcome::NotManaged => {
            api.metrics.activate("not_managed");
            message(
                StatusCode::NOT_FOUND,
                None,
                format!(
                    "cluster {:?} is not a managed destination: no Service port of a Deployment annotated kzscaler.io/scale-to-zero=\"true\"",
                    req.cluster
                ),
            )
        }
        Outcome::TimedOut(state) => {
            api.metrics.activate("timeout");
            message(
                StatusCode::GATEWAY_TIMEOUT,
                Some(state),
                format!(
                    "no ready endpoint for {} within {} ms",
                    req.cluster, req.deadline_ms
                ),
            )
        }
        Outcome::ScaleFailed(msg) => {
            api.metrics.activate("scale_failed");
            message(StatusCode::BAD_GATEWAY, Some(State::Asleep), msg)
        }
    }
}

async fn module<S: Scaler>(AxState(api): AxState<Arc<Api<S>>>) -> Response {
    match &api.module {
        Some(bytes) => (
            [(header::CONTENT_TYPE, "application/wasm")],
            bytes.as_ref().clone(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "this controller does not serve the filter module (start it with --module-file)\n",
        )
            .into_response(),
    }
}

async fn activity<S: Scaler>(AxState(api): AxState<Arc<Api<S>>>, body: Bytes) -> Response {
    if let Some(r) = api.not_leader().or_else(|| api.not_ready()) {
        return r;
    }
    let report: ActivityReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return message(
                StatusCode::BAD_REQUEST,
                None,
                format!(
                    "activity report is not valid: {e} (expected {{\"outbound\": [{{\"cluster\": ..., \"requests\": N, \"in_flight\": N}}]}})"
                ),
            );
        }
    };
    let cache = api.cache.read().await;
    for c in report
        .outbound
        .iter()
        .filter(|c| c.requests > 0 || c.in_flight > 0)
    {
        api.idle.touch_cluster(&cache, &c.cluster);
    }
    for i in report
        .inbound
        .iter()
        .filter(|i| i.requests > 0 || i.in_flight > 0)
    {
        api.idle
            .touch_deployment(&cache, &i.namespace, &i.deployment);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn leaderz<S: Scaler>(AxState(api): AxState<Arc<Api<S>>>) -> Response {
    if let Some(r) = api.not_leader().or_else(|| api.not_ready()) {
        return r;
    }
    (StatusCode::OK, "leader\n").into_response()
}

async fn readyz<S: Scaler>(AxState(api): AxState<Arc<Api<S>>>) -> Response {
    if api.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first lists of Deployments, Services, EndpointSlices and HPAs\n",
        )
            .into_response()
    }
}

async fn metrics<S: Scaler>(AxState(api): AxState<Arc<Api<S>>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        api.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activate::{Scaler, WakeRecord};
    use crate::cache::{Index, Key};
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use serde_json::json;
    use tower::ServiceExt;

    struct Refuse;
    impl Scaler for Refuse {
        async fn scale(&self, key: &Key, _: u32) -> crate::Result<()> {
            Err(crate::Error::kube(
                format!("waking {key}"),
                kube::Error::Api(Box::new(kube::core::Status {
                    code: 403,
                    message: "deployments.apps \"web\" is forbidden".into(),
                    ..Default::default()
                })),
            ))
        }
        async fn record_wake(&self, _: &Key, _: &WakeRecord) {}
        async fn sleep(&self, _: &Key, _: crate::activate::Sleep<'_>) -> crate::Result<()> {
            Ok(())
        }
        async fn annotate(
            &self,
            _: &Key,
            _: serde_json::Value,
            _: Option<crate::activate::Note>,
        ) -> crate::Result<()> {
            Ok(())
        }
    }

    fn app() -> Router {
        app_with(true, true)
    }

    fn app_leading(leader: bool) -> Router {
        app_with(leader, true)
    }

    fn app_with(leader: bool, ready: bool) -> Router {
        app_and_cache(leader, ready).0
    }

    fn web(replicas: i32) -> Index {
        let d: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "web", "annotations": {"kzscaler.io/scale-to-zero": "true"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}}}
        }))
        .unwrap();
        let s: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
        }))
        .unwrap();
        Index::from_objects(&[Arc::new(d)], &[Arc::new(s)], &[], &[], "cluster.local")
    }

    fn app_and_cache(leader: bool, ready: bool) -> (Router, Arc<RwLock<Cache>>) {
        let mut cache = Cache::default();
        cache.replace_index(web(0));
        let cache = Arc::new(RwLock::new(cache));
        let (_tx, rx) = tokio::sync::watch::channel(0);
        let metrics = Arc::new(Metrics::default());
        let app = router(Arc::new(Api {
            activator: Activator::new(cache.clone(), rx, Arc::new(Refuse), metrics.clone()),
            cache: cache.clone(),
            metrics,
            ready: Arc::new(AtomicBool::new(ready)),
            module: None,
            idle: Arc::default(),
            leadership: tokio::sync::watch::channel(crate::lease::Leadership {
                until: None,
                leader,
                holder: "kzscaler-controller-a".into(),
            })
            .1,
        }));
        (app, cache)
    }

    async fn send(req: Request<Body>) -> (StatusCode, HeaderMap, String) {
        send_to(app(), req).await
    }

    async fn send_to(app: Router, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
        let resp = app.oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    #[tokio::test]
    async fn snapshot_lists_managed_destinations_and_answers_304_when_unchanged() {
        let (status, headers, body) =
            send(Request::get("/v1/snapshot").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        let snap: wire::Snapshot = serde_json::from_str(&body).unwrap();
        assert_eq!(snap.destinations.len(), 1);
        assert_eq!(snap.destinations[0].state, State::Asleep);
        let etag = headers[header::ETAG].to_str().unwrap().to_owned();
        assert_eq!(
            etag,
            kzscaler_core::wire::snapshot_etag(snap.version, body.as_bytes())
        );
        let (status, _, body) = send(
            Request::get("/v1/snapshot")
                .header(header::IF_NONE_MATCH, &etag)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!((status, body.as_str()), (StatusCode::NOT_MODIFIED, ""));
    }

    #[tokio::test]
    async fn a_long_poll_answers_with_the_change_as_soon_as_it_is_published() {
        let (app, cache) = app_and_cache(true, true);
        let (status, _, body) = send_to(
            app.clone(),
            Request::get("/v1/snapshot").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let snap: wire::Snapshot = serde_json::from_str(&body).unwrap();
        let current = format!("/v1/snapshot?since={}&term={}", snap.version, snap.term);
        // Nothing changed and no wait: 304 at once.
        let (status, _, _) = send_to(
            app.clone(),
            Request::get(&current).body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        let poll = tokio::spawn(send_to(
            app.clone(),
            Request::get(format!("{current}&wait=30"))
                .body(Body::empty())
                .unwrap(),
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !poll.is_finished(),
            "a long poll waits while nothing changes"
        );
        cache.write().await.replace_index(web(1));
        let (status, headers, body) = tokio::time::timeout(Duration::from_secs(5), poll)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        let delta: wire::Delta = serde_json::from_str(&body).unwrap();
        assert_eq!(headers[header::CONTENT_TYPE], wire::DELTA_CONTENT_TYPE);
        assert_eq!(delta.since, snap.version);
        assert_eq!(delta.upsert.len(), 1);
        assert_eq!(delta.upsert[0].state, State::Waking);
    }

    #[tokio::test]
    async fn a_bad_snapshot_query_is_refused_naming_the_parameter() {
        for (query, expect) in [
            ("since=abc&term=1", "since=\\\"abc\\\""),
            ("since=1&term=-3", "term=\\\"-3\\\""),
            ("since=1&wait=soon", "wait=\\\"soon\\\""),
        ] {
            let (status, _, body) = send(
                Request::get(format!("/v1/snapshot?{query}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
            assert!(body.contains(expect), "{query}: {body}");
            assert!(body.contains("unsigned integer"), "{body}");
        }
    }

    #[tokio::test]
    async fn a_follower_sends_filters_to_the_leader_and_acts_on_nothing() {
        let activate =
            r#"{"cluster":"outbound|80||web.shop.svc.cluster.local","deadline_ms":1000}"#;
        let (status, _, body) = send_to(
            app_leading(false),
            Request::post("/v1/activate")
                .body(Body::from(activate))
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.contains("not the leader (leader: kzscaler-controller-a)"),
            "{body}"
        );
        let (status, _, _) = send_to(
            app_leading(false),
            Request::post("/v1/activity")
                .body(Body::from(r#"{"outbound": []}"#))
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        // Its snapshot lacks the leader's draining marks and its versions are not the
        // leader's: it serves none.
        let (status, _, _) = send_to(
            app_leading(false),
            Request::get("/v1/snapshot").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let (follower, _, _) = send_to(
            app_leading(false),
            Request::get("/leaderz").body(Body::empty()).unwrap(),
        )
        .await;
        let (leader, _, _) = send(Request::get("/leaderz").body(Body::empty()).unwrap()).await;
        assert_eq!(
            (follower, leader),
            (StatusCode::SERVICE_UNAVAILABLE, StatusCode::OK)
        );
    }

    #[tokio::test]
    async fn a_leader_that_has_not_listed_yet_answers_503_not_404_or_an_empty_snapshot() {
        // A restarted leader must not call a managed Deployment unmanaged (the filter would
        // let its held requests go to no endpoint) nor hand out an empty snapshot.
        let activate =
            r#"{"cluster":"outbound|80||web.shop.svc.cluster.local","deadline_ms":1000}"#;
        let requests = [
            Request::post("/v1/activate")
                .body(Body::from(activate))
                .unwrap(),
            Request::post("/v1/activity")
                .body(Body::from(r#"{"outbound": []}"#))
                .unwrap(),
            Request::get("/v1/snapshot").body(Body::empty()).unwrap(),
            Request::get("/leaderz").body(Body::empty()).unwrap(),
            Request::get("/readyz").body(Body::empty()).unwrap(),
        ];
        for req in requests {
            let path = req.uri().path().to_owned();
            let (status, _, body) = send_to(app_with(true, false), req).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
            assert!(
                body.contains("listed") || body.contains("first lists"),
                "{path}: {body}"
            );
        }
        // Once listed, the same Deployment is managed.
        let (status, _, body) = send_to(
            app_with(true, true),
            Request::post("/v1/activate")
                .body(Body::from(activate))
                .unwrap(),
        )
        .await;
        assert_ne!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_ne!(status, StatusCode::NOT_FOUND, "{body}");
    }

    #[tokio::test]
    async fn activate_refuses_unmanaged_and_malformed_requests() {
        let post = |body: &str| {
            Request::post("/v1/activate")
                .body(Body::from(body.to_owned()))
                .unwrap()
        };
        let (status, _, body) = send(post(
            r#"{"cluster":"outbound|80||db.shop.svc.cluster.local","deadline_ms":100}"#,
        ))
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("not a managed destination"), "{body}");
        let (status, _, body) = send(post(r#"{"cluster": 7}"#)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("cluster"), "{body}");
    }

    #[tokio::test]
    async fn activate_reports_a_refused_scale() {
        let (status, _, body) = send(
            Request::post("/v1/activate")
                .body(Body::from(
                    r#"{"cluster":"outbound|80||web.shop.svc.cluster.local","deadline_ms":1000}"#,
                ))
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(body.contains("forbidden"), "{body}");
    }
}
