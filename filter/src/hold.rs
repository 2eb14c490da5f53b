//! Holding requests to sleeping destinations: the per-worker state machine, plain Rust behind
//! the small [`Host`] trait so it is tested natively.
//!
//! ```text
//!  HTTP context (request headers)        root context (on_tick, every few ms while holding)
//!  ─────────────────────────────         ───────────────────────────────────────────────────
//!  managed + asleep/waking + this        per cluster: one activate call at a time (coalesced)
//!  Envoy has no endpoint (or requests    activate said awake and num_endpoints > 0 on two
//!  to it are held here) → hold()  ───▶   ticks and 20 ms (the worker's host list lags the
//!  (Pause)                               counter) → release in arrival order, at most
//!                                        release_window in flight; deadline → 503 / grpc 14
//! ```
//!
//! Every held request ends in exactly one of `resume` or `reply`, or is dropped by `forget`
//! when the caller went away first.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::rc::Rc;

use kzscaler_core::ClusterName;
use kzscaler_core::wire::{
    ActivateRequest, ActivityReport, ClusterCount, INBOUND_PREFIX, InboundCount, State,
};

use crate::hash::FastMap;
use crate::table::Table;

/// An answer the filter gives itself instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u32,
    /// Response headers.
    pub headers: Vec<(&'static str, String)>,
    /// Response body.
    pub body: String,
}

/// What the state machine needs from Envoy.
pub trait Host {
    /// Milliseconds since the epoch.
    fn now_ms(&self) -> u64;
    /// `upstream.num_endpoints` as the held request `ctx` sees it.
    fn num_endpoints(&mut self, ctx: u32) -> Option<u64>;
    /// Lets the held request `ctx` continue to the router.
    fn resume(&mut self, ctx: u32);
    /// Answers the held request `ctx`.
    fn reply(&mut self, ctx: u32, reply: &Reply);
    /// POSTs an activate body to the controller; the answer arrives through
    /// [`Worker::on_activate_response`] with the returned token.
    fn call_activate(&mut self, body: &[u8], timeout_ms: u64) -> Result<u32, String>;
}

/// What to do with a request that must be held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// Paused; the worker will resume or answer it.
    Paused,
    /// Answer now (too many held, or no time to wait).
    Reply(Reply),
    /// Let it through now: it was only to be asked about, and its service is up.
    Pass,
}

#[derive(Debug)]
struct Held {
    cluster: Rc<str>,
    deadline_ms: u64,
    budget_ms: u64,
    grpc: bool,
    why: Why,
}

/// What the request path knows about a request it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// A gRPC request (answered with grpc-status 14 at the deadline).
    pub grpc: bool,
    /// It counts as activity (not a probe or an ignored path).
    pub activity: bool,
    /// Why it is held.
    pub why: Why,
}

/// Why a request is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// This Envoy has no endpoint: it waits for the wake.
    NoEndpoint,
    /// Draining: endpoints exist, but the controller is asked first. If it cannot be asked
    /// (down, failing over), the request goes through: the service is up.
    AskFirst,
}

/// How many requests a worker holds, and how fast it lets them go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most requests held at once; past it, 503 at once.
    pub max_held: usize,
    /// Most resumed requests per destination still in flight while others wait: held
    /// requests are let go at the pace their answers come back, never as one burst that a
    /// DestinationRule's connectionPool (Envoy's circuit breakers) would refuse with 503.
    pub release_window: usize,
}

#[derive(Debug, Default)]
struct Activation {
    /// Held requests in arrival order. Requests since answered or gone are skipped when met.
    queue: VecDeque<u32>,
    /// Requests in `queue` still held.
    waiting: usize,
    /// Requests resumed and not yet finished: what the release window counts.
    released: usize,
    /// The latest deadline of the requests held for it (what activate is told).
    latest_deadline_ms: u64,
    inflight: Option<u32>,
    ready: bool,
    /// Endpoints were seen long enough: held requests go, as the window allows.
    releasing: bool,
    /// Ticks on which this Envoy's counter showed endpoints (see [`SIGHTINGS_BEFORE_RESUME`]).
    endpoints_seen: u8,
    /// When this Envoy's counter first showed an endpoint.
    first_seen_ms: u64,
    /// When activate said ready.
    ready_at_ms: u64,
    retry_at_ms: u64,
    backoff_ms: u64,
    /// Some held request counts as activity (not only probes or ignored paths).
    activity: bool,
    /// Ask again when the call in flight returns (activity joined after it was sent).
    reask: bool,
}

/// Per-worker state: the snapshot table, the held requests, the activations in flight.
///
/// Every operation costs what it touches: a request held, forgotten or finished is one hash
/// operation; a tick costs the destinations being woken plus the requests it answers or
/// resumes, whatever else is held.
#[derive(Debug)]
pub struct Worker {
    /// The local copy of the controller's snapshot.
    pub table: Table,
    limits: Limits,
    held: FastMap<u32, Held>,
    /// Resumed requests not yet finished: their destination, and when their response
    /// headers came.
    released: FastMap<u32, (Rc<str>, Option<u64>)>,
    /// Deadlines of held requests, earliest first (entries of requests gone are skipped).
    deadlines: BinaryHeap<Reverse<(u64, u32)>>,
    clusters: FastMap<Rc<str>, Activation>,
    tokens: FastMap<u32, Rc<str>>,
    /// Activity counters, reported on tick.
    pub counters: Counters,
}

/// Per managed cluster: requests since the last report, and requests in flight. A separate
/// struct so the request path can count while it reads the table (disjoint borrows).
#[derive(Debug, Default)]
pub struct Counters {
    counts: FastMap<Rc<str>, Rc<Count>>,
}

/// One cluster's requests since the last report, and its requests in flight.
#[derive(Debug, Default)]
pub struct Count {
    requests: Cell<u64>,
    in_flight: Cell<u64>,
}

/// A counted request in flight. It holds its cluster's [`Count`], so its end costs no lookup:
/// dropping it (when the request is done) takes it out of the in-flight count.
#[derive(Debug)]
pub struct Counted {
    cluster: Rc<str>,
    count: Rc<Count>,
}

impl Counted {
    /// The cluster it counts for.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }
}

impl PartialEq for Counted {
    fn eq(&self, other: &Self) -> bool {
        self.cluster == other.cluster
    }
}

impl Eq for Counted {}

impl Drop for Counted {
    fn drop(&mut self) {
        let c = &self.count.in_flight;
        c.set(c.get().saturating_sub(1));
    }
}

const FIRST_BACKOFF_MS: u64 = 50;
const MAX_BACKOFF_MS: u64 = 1_000;
/// Ticks that must have seen `upstream.num_endpoints > 0` before a held request resumes. The
/// counter is updated on Envoy's main thread before the worker's host list: resuming at the
/// first sighting gave 503s (REFERENCE.md); waiting event-loop turns lets the list catch up,
/// and two give a margin on a loaded machine.
const SIGHTINGS_BEFORE_RESUME: u8 = 2;
/// And at least this long since the first sighting: the counter is updated on Envoy's main
/// thread, which then posts the host list to the workers. On a loaded machine that post can
/// take longer than two ticks (seen: 32 of 10,000 requests resumed onto an empty host list, 503
/// "no healthy upstream", while the test bed ran 1,000 requests a second after a build).
const SETTLE_MS: u64 = 20;
/// How long a released request that has its response headers keeps its release slot: short
/// answers end well before, long streams give it back then.
pub const STREAM_SLOT_MS: u64 = 1_000;
/// How long a "ready" answer is trusted while this Envoy shows no endpoint; then activate is
/// asked again (Envoy learns of new endpoints within milliseconds).
const READY_STALE_MS: u64 = 1_000;
/// Extra time the activate callout gets beyond the deadline the controller is told.
const CALL_SLACK_MS: u64 = 500;

fn short_name(cluster: &str) -> String {
    ClusterName::parse(cluster)
        .map(|c| format!("{}.{}", c.service, c.namespace))
        .unwrap_or_else(|_| cluster.to_owned())
}

/// The answer when the deadline passes: 503 with Retry-After, or gRPC UNAVAILABLE.
pub fn unavailable(grpc: bool, message: String) -> Reply {
    if grpc {
        Reply {
            status: 200,
            headers: vec![
                ("content-type", "application/grpc".into()),
                ("grpc-status", "14".into()),
                ("grpc-message", message),
            ],
            body: String::new(),
        }
    } else {
        Reply {
            status: 503,
            headers: vec![
                ("retry-after", "1".into()),
                ("content-type", "text/plain".into()),
            ],
            body: format!("{message}\n"),
        }
    }
}

/// An answer the controller wrote (every one has a JSON body with `state` or `message`), as
/// opposed to one Envoy made up for a callout that timed out or found no upstream (a 504 or
/// 503 with a text or empty body): only the controller's answers say anything about the
/// destination.
#[derive(Debug, serde::Deserialize)]
struct ControllerAnswer {
    #[serde(default)]
    state: Option<State>,
    #[serde(default)]
    message: Option<String>,
}

fn controller_answer(body: &[u8]) -> Option<ControllerAnswer> {
    serde_json::from_slice::<ControllerAnswer>(body)
        .ok()
        .filter(|a| a.state.is_some() || a.message.is_some())
}

impl Worker {
    /// A worker with these limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            table: Table::default(),
            limits,
            held: FastMap::default(),
            released: FastMap::default(),
            deadlines: BinaryHeap::new(),
            clusters: FastMap::default(),
            tokens: FastMap::default(),
            counters: Counters::default(),
        }
    }

    /// A new plugin configuration: the limits change, and every request held so far stays
    /// held and is driven as before (a worker replaced here would orphan them).
    pub fn reconfigure(&mut self, limits: Limits) {
        self.limits = limits;
    }
}

impl Counters {
    /// Counts a request to `cluster` as started, unless `is_activity` says it is not (a probe,
    /// an ignored path). `is_activity` is asked only for the first request of a report period:
    /// after that the period's activity is established and the check (calls into Envoy) is
    /// not worth its cost. Returns the count held until the request is done, if it counted.
    pub fn start(
        &mut self,
        cluster: &Rc<str>,
        is_activity: impl FnOnce() -> bool,
    ) -> Option<Counted> {
        // One hash lookup (Fx); the clones only bump reference counts.
        let count = match self.counts.get(cluster) {
            Some(c) => {
                if c.requests.get() == 0 && !is_activity() {
                    return None;
                }
                c.clone()
            }
            None => {
                if !is_activity() {
                    return None;
                }
                let c = Rc::new(Count::default());
                self.counts.insert(cluster.clone(), c.clone());
                c
            }
        };
        count.requests.set(count.requests.get().saturating_add(1));
        count.in_flight.set(count.in_flight.get().saturating_add(1));
        Some(Counted {
            cluster: cluster.clone(),
            count,
        })
    }

    /// The activity since the last report, or None when there was none (an idle mesh sends
    /// nothing). Requests in flight count, so a long stream keeps its service awake.
    pub fn take_report(&mut self) -> Option<ActivityReport> {
        // A count in flight is held by its requests: it stays.
        self.counts
            .retain(|_, c| c.requests.get() > 0 || c.in_flight.get() > 0);
        if self.counts.is_empty() {
            return None;
        }
        let mut report = ActivityReport::default();
        for (key, c) in &self.counts {
            let requests = c.requests.replace(0);
            let in_flight = c.in_flight.get();
            match key
                .strip_prefix(INBOUND_PREFIX)
                .and_then(|w| w.split_once('/'))
            {
                Some((namespace, deployment)) => report.inbound.push(InboundCount {
                    namespace: namespace.to_owned(),
                    deployment: deployment.to_owned(),
                    requests,
                    in_flight,
                }),
                None => report.outbound.push(ClusterCount {
                    cluster: key.to_string(),
                    requests,
                    in_flight,
                }),
            }
        }
        report.outbound.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        report
            .inbound
            .sort_by(|a, b| (&a.namespace, &a.deployment).cmp(&(&b.namespace, &b.deployment)));
        Some(report)
    }

    /// A report that did not reach the controller: its requests count again in the next one
    /// (in-flight counts are live and need no restoring). Lost reports would let a busy
    /// destination look idle and sleep early.
    pub fn restore(&mut self, report: &ActivityReport) {
        let mut add = |key: &str, requests: u64| {
            if requests == 0 {
                return;
            }
            let c = self.counts.entry(Rc::from(key)).or_default();
            c.requests.set(c.requests.get().saturating_add(requests));
        };
        for c in &report.outbound {
            add(&c.cluster, c.requests);
        }
        for i in &report.inbound {
            add(
                &format!("{INBOUND_PREFIX}{}/{}", i.namespace, i.deployment),
                i.requests,
            );
        }
    }
}

impl Worker {
    /// Whether any request is held (the root ticks fast then).
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Whether a new request to `cluster` must join the ones held here (they still wait): it
    /// queues behind them, and the release window bounds them all. Letting it pass while the
    /// queue drains overflowed a `connectionPool` of 100 at 1,000 requests a second. (A
    /// destination that needs more than the window in flight for good never drains its queue:
    /// raise `release_window` for it.)
    pub fn must_join(&self, cluster: &str) -> bool {
        self.clusters.get(cluster).is_some_and(|a| a.waiting > 0)
    }

    /// Holds request `ctx` to `cluster` for at most `budget_ms`.
    pub fn hold(&mut self, ctx: u32, cluster: &str, budget_ms: u64, now_ms: u64, ask: Ask) -> Hold {
        let Ask {
            grpc,
            activity,
            why,
        } = ask;
        if why == Why::AskFirst && (self.held.len() >= self.limits.max_held || budget_ms == 0) {
            // Endpoints exist: better through than refused.
            return Hold::Pass;
        }
        if self.held.len() >= self.limits.max_held {
            return Hold::Reply(unavailable(
                grpc,
                format!(
                    "kzscaler: {} is waking up and {} requests are already held (max_held_requests); retry shortly",
                    short_name(cluster),
                    self.held.len()
                ),
            ));
        }
        if budget_ms == 0 {
            return Hold::Reply(unavailable(
                grpc,
                format!(
                    "kzscaler: {} is asleep and the request leaves no time to wake it",
                    short_name(cluster)
                ),
            ));
        }
        let key: Rc<str> = match self.clusters.get_key_value(cluster) {
            Some((k, _)) => k.clone(),
            None => Rc::from(cluster),
        };
        let deadline_ms = now_ms.saturating_add(budget_ms);
        self.held.insert(
            ctx,
            Held {
                cluster: key.clone(),
                deadline_ms,
                budget_ms,
                grpc,
                why,
            },
        );
        self.deadlines.push(Reverse((deadline_ms, ctx)));
        let act = self.clusters.entry(key).or_default();
        act.queue.push_back(ctx);
        act.waiting += 1;
        act.latest_deadline_ms = act.latest_deadline_ms.max(deadline_ms);
        if activity && !act.activity && act.inflight.is_some() {
            // A call that said "not activity" is on its way: its answer cannot have cancelled
            // a sleep, so this request asks again once it is back.
            act.reask = true;
        }
        act.activity |= activity;
        Hold::Paused
    }

    /// A resumed request got its response headers at `now_ms`. It keeps its release slot
    /// until it ends (the destination's circuit breakers count it until then), but at most
    /// [`STREAM_SLOT_MS`] more: a long stream (gRPC, WebSocket) must not hold a slot for good.
    pub fn answered(&mut self, ctx: u32, now_ms: u64) {
        if let Some((_, at)) = self.released.get_mut(&ctx) {
            at.get_or_insert(now_ms);
        }
    }

    /// Request `ctx` ended (its caller went away, or its answer was sent): nothing may be done
    /// to it any more, and a resumed one leaves its destination's release window.
    pub fn forget(&mut self, ctx: u32) {
        if let Some(h) = self.held.remove(&ctx) {
            if let Some(act) = self.clusters.get_mut(&h.cluster) {
                act.waiting = act.waiting.saturating_sub(1);
            }
        } else if let Some((cluster, _)) = self.released.remove(&ctx)
            && let Some(act) = self.clusters.get_mut(&cluster)
        {
            act.released = act.released.saturating_sub(1);
        }
    }

    /// Drives everything held: deadlines, activate calls, resumes. Called on every tick.
    pub fn tick(&mut self, host: &mut impl Host) {
        let now = host.now_ms();
        self.answer_expired(host, now);
        self.free_stream_slots(now);
        let Self {
            held,
            released,
            clusters,
            tokens,
            limits,
            ..
        } = self;
        let mut unasked: Vec<Rc<str>> = Vec::new();
        clusters.retain(|cluster, act| {
            if act.waiting == 0 {
                // Nothing held: start afresh next time, but keep counting what is in flight.
                *act = Activation {
                    released: act.released,
                    ..Activation::default()
                };
                return act.released > 0;
            }
            let Some(first) = act.first_held(held) else {
                return act.released > 0;
            };
            if act.ready {
                if host.num_endpoints(first).unwrap_or(0) > 0 {
                    if act.releasing
                        || (act.endpoints_seen >= SIGHTINGS_BEFORE_RESUME
                            && now.saturating_sub(act.first_seen_ms) >= SETTLE_MS)
                    {
                        if !act.releasing {
                            // Once per wake; the cold path's phases are read from these
                            // lines (hack/bench.sh).
                            log::info!(
                                "kzscaler: {cluster}: resuming held requests, {} ms after the endpoint was seen",
                                now.saturating_sub(act.first_seen_ms)
                            );
                        }
                        act.releasing = true;
                        act.release(host, held, released, cluster, limits.release_window);
                    } else {
                        if act.endpoints_seen == 0 {
                            act.first_seen_ms = now;
                            log::info!("kzscaler: {cluster}: endpoint seen in this Envoy");
                        }
                        act.endpoints_seen = act.endpoints_seen.saturating_add(1);
                    }
                } else if act.releasing || now.saturating_sub(act.ready_at_ms) >= READY_STALE_MS {
                    // "Ready" but no endpoint here (any more): it went away (a sleep landed).
                    // Ask again rather than wait for an endpoint that is not coming.
                    act.ready = false;
                    act.releasing = false;
                    act.endpoints_seen = 0;
                    act.retry_at_ms = now;
                }
            } else if act.inflight.is_none() && now >= act.retry_at_ms {
                let left = act.latest_deadline_ms.saturating_sub(now);
                let body = serde_json::to_vec(&ActivateRequest {
                    cluster: cluster.to_string(),
                    deadline_ms: left,
                    activity: act.activity,
                })
                .unwrap_or_default();
                match host.call_activate(&body, left.saturating_add(CALL_SLACK_MS)) {
                    Ok(token) => {
                        act.inflight = Some(token);
                        tokens.insert(token, cluster.clone());
                    }
                    Err(e) => {
                        log::warn!("kzscaler: cannot call activate for {cluster}: {e}; retrying");
                        act.backoff(now);
                        unasked.push(cluster.clone());
                    }
                }
            }
            true
        });
        for cluster in unasked {
            self.pass_unasked(host, &cluster);
        }
    }

    /// Released requests answered more than [`STREAM_SLOT_MS`] ago stream on: their slots
    /// are freed (the request itself is untouched).
    fn free_stream_slots(&mut self, now: u64) {
        let clusters = &mut self.clusters;
        self.released.retain(|_, (cluster, answered)| {
            let streaming = answered.is_some_and(|at| now.saturating_sub(at) >= STREAM_SLOT_MS);
            if streaming && let Some(act) = clusters.get_mut(cluster) {
                act.released = act.released.saturating_sub(1);
            }
            !streaming
        });
    }

    /// Answers every held request whose deadline has passed, earliest first.
    fn answer_expired(&mut self, host: &mut impl Host, now: u64) {
        while let Some(&Reverse((deadline, ctx))) = self.deadlines.peek() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            if self
                .held
                .get(&ctx)
                .is_none_or(|h| h.deadline_ms != deadline)
            {
                continue; // resumed, answered or gone already
            }
            let Some(h) = self.held.remove(&ctx) else {
                continue;
            };
            if let Some(act) = self.clusters.get_mut(&h.cluster) {
                act.waiting = act.waiting.saturating_sub(1);
            }
            let msg = format!(
                "kzscaler: {} is waking up and was not ready within {} ms; retry shortly",
                short_name(&h.cluster),
                h.budget_ms
            );
            host.reply(ctx, &unavailable(h.grpc, msg));
        }
    }

    /// The controller could not be asked: requests held only to ask first go through.
    fn pass_unasked(&mut self, host: &mut impl Host, cluster: &str) {
        let Some(act) = self.clusters.get_mut(cluster) else {
            return;
        };
        let held = &mut self.held;
        let released = &mut self.released;
        act.queue.retain(|ctx| match held.get(ctx) {
            Some(h) if h.why == Why::AskFirst => {
                if let Some(h) = held.remove(ctx) {
                    host.resume(*ctx);
                    released.insert(*ctx, (h.cluster, None));
                    act.waiting = act.waiting.saturating_sub(1);
                    act.released += 1;
                }
                false
            }
            Some(_) => true,
            None => false,
        });
    }

    /// Resumes every request held for `cluster` at once (it is not managed: nothing to pace).
    fn release_all(&mut self, host: &mut impl Host, cluster: &str) {
        if let Some(act) = self.clusters.get_mut(cluster) {
            act.release(
                host,
                &mut self.held,
                &mut self.released,
                cluster,
                usize::MAX,
            );
        }
    }

    /// The controller answered an activate call (`status` None: no `:status` at all).
    pub fn on_activate_response(
        &mut self,
        host: &mut impl Host,
        token: u32,
        status: Option<u32>,
        body: &[u8],
    ) {
        let Some(cluster) = self.tokens.remove(&token) else {
            return;
        };
        let now = host.now_ms();
        let Some(act) = self.clusters.get_mut(&cluster) else {
            return;
        };
        if act.inflight != Some(token) {
            return;
        }
        act.inflight = None;
        let answer = controller_answer(body);
        if std::mem::take(&mut act.reask) && answer.is_some() && status != Some(404) {
            act.retry_at_ms = now;
            return;
        }
        match (status, answer) {
            (Some(200), Some(a)) if a.state == Some(State::Awake) => {
                act.ready = true;
                act.ready_at_ms = now;
                // Endpoints already here: the next tick resumes (it is the yield to the event
                // loop the worker's host list needs), saving a tick.
                if let Some(first) = act.first_held(&self.held)
                    && host.num_endpoints(first).unwrap_or(0) > 0
                {
                    act.endpoints_seen = 1;
                    act.first_seen_ms = now;
                    log::info!("kzscaler: {cluster}: endpoint seen in this Envoy");
                }
            }
            (Some(404), Some(_)) => {
                // Not managed (any more): the snapshot was stale. Let Envoy route it.
                log::info!(
                    "kzscaler: {cluster} is not managed according to the controller; letting requests through"
                );
                self.release_all(host, &cluster);
            }
            (status, answer) => {
                log::info!(
                    "kzscaler: activate for {cluster} answered {status:?}: {}; retrying",
                    String::from_utf8_lossy(body)
                );
                act.backoff(now);
                // Only when the controller could not be asked: no answer of its own (Envoy's
                // 504 for a callout that timed out, its 503 for no upstream), or a replica
                // that does not lead or has not listed yet (503). Its own 504 or 502 is an
                // answer, and the endpoints may be going.
                if answer.is_none() || status == Some(503) {
                    self.pass_unasked(host, &cluster);
                }
            }
        }
    }
}

impl Activation {
    fn backoff(&mut self, now: u64) {
        self.backoff_ms = (self.backoff_ms * 2).clamp(FIRST_BACKOFF_MS, MAX_BACKOFF_MS);
        self.retry_at_ms = now.saturating_add(self.backoff_ms);
    }

    /// The oldest request still held, dropping the ids of requests gone from the front.
    fn first_held(&mut self, held: &FastMap<u32, Held>) -> Option<u32> {
        while let Some(&ctx) = self.queue.front() {
            if held.contains_key(&ctx) {
                return Some(ctx);
            }
            self.queue.pop_front();
        }
        None
    }

    /// Resumes held requests in arrival order while fewer than `window` resumed ones are in
    /// flight.
    fn release(
        &mut self,
        host: &mut impl Host,
        held: &mut FastMap<u32, Held>,
        released: &mut FastMap<u32, (Rc<str>, Option<u64>)>,
        cluster: &str,
        window: usize,
    ) {
        while self.released < window {
            let Some(ctx) = self.queue.pop_front() else {
                break;
            };
            let Some(h) = held.remove(&ctx) else {
                continue;
            };
            debug_assert_eq!(&*h.cluster, cluster);
            host.resume(ctx);
            released.insert(ctx, (h.cluster, None));
            self.waiting = self.waiting.saturating_sub(1);
            self.released += 1;
        }
        // Ids of requests gone pile up behind a full window; drop them now and then.
        if self.queue.len() > 2 * self.waiting + 64 {
            self.queue.retain(|ctx| held.contains_key(ctx));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct FakeHost {
        now: u64,
        endpoints: u64,
        calls: Vec<(u32, String)>,
        resumed: Vec<u32>,
        replies: Vec<(u32, Reply)>,
        refuse_calls: bool,
    }

    impl Host for FakeHost {
        fn now_ms(&self) -> u64 {
            self.now
        }
        fn num_endpoints(&mut self, _ctx: u32) -> Option<u64> {
            Some(self.endpoints)
        }
        fn resume(&mut self, ctx: u32) {
            self.resumed.push(ctx);
        }
        fn reply(&mut self, ctx: u32, reply: &Reply) {
            self.replies.push((ctx, reply.clone()));
        }
        fn call_activate(&mut self, body: &[u8], _timeout_ms: u64) -> Result<u32, String> {
            if self.refuse_calls {
                return Err("unknown cluster".into());
            }
            let token = 100 + u32::try_from(self.calls.len()).unwrap();
            self.calls
                .push((token, String::from_utf8_lossy(body).into_owned()));
            Ok(token)
        }
    }

    const WEB: &str = "outbound|80||web.shop.svc.cluster.local";

    /// A worker holding at most `max_held`, with a release window no test reaches.
    fn worker(max_held: usize) -> Worker {
        Worker::new(Limits {
            max_held,
            release_window: 1_000,
        })
    }

    /// A worker with this release window, holding more than any test does.
    fn windowed(release_window: usize) -> Worker {
        Worker::new(Limits {
            max_held: 10_000,
            release_window,
        })
    }
    /// Held because this Envoy has no endpoint: the usual case.
    const WAIT: Ask = Ask {
        grpc: false,
        activity: true,
        why: Why::NoEndpoint,
    };
    /// Held while draining, only to ask the controller first.
    const ASK_FIRST: Ask = Ask {
        why: Why::AskFirst,
        ..WAIT
    };
    const AWAKE: &[u8] = br#"{"state":"awake"}"#;

    #[test]
    fn a_ready_answer_without_endpoints_for_a_second_asks_again() {
        let mut w = worker(10);
        let mut host = FakeHost::default();
        w.hold(1, WEB, 10_000, 0, WAIT);
        w.tick(&mut host);
        let token = host.calls[0].0;
        w.on_activate_response(&mut host, token, Some(200), AWAKE);
        host.now = 999;
        w.tick(&mut host);
        assert_eq!(host.calls.len(), 1, "trusted for a second");
        host.now = 1_000;
        w.tick(&mut host);
        w.tick(&mut host);
        assert_eq!(host.calls.len(), 2, "asked again: {:?}", host.calls);
        assert!(host.resumed.is_empty() && host.replies.is_empty());
    }

    #[test]
    fn draining_requests_go_through_when_the_controller_cannot_be_asked() {
        let mut w = worker(10);
        let mut host = FakeHost {
            endpoints: 1,
            ..Default::default()
        };
        w.hold(1, WEB, 10_000, 0, ASK_FIRST);
        w.hold(2, WEB, 10_000, 0, WAIT);
        w.tick(&mut host);
        let token = host.calls[0].0;
        w.on_activate_response(&mut host, token, Some(503), b"not the leader");
        assert_eq!(host.resumed, [1], "the service is up: no reason to wait");
        assert!(w.holding(), "request 2 still waits for the wake");
        let mut down = worker(10);
        let mut host = FakeHost {
            refuse_calls: true,
            ..Default::default()
        };
        down.hold(3, WEB, 10_000, 0, ASK_FIRST);
        down.tick(&mut host);
        assert_eq!(host.resumed, [3]);
        assert!(!down.holding());
    }

    #[test]
    fn a_real_request_joining_a_probe_only_call_asks_again() {
        let mut w = worker(10);
        let mut host = FakeHost {
            endpoints: 1,
            ..Default::default()
        };
        let probe = Ask {
            activity: false,
            ..ASK_FIRST
        };
        w.hold(1, WEB, 10_000, 0, probe);
        w.tick(&mut host);
        w.hold(2, WEB, 10_000, 0, ASK_FIRST);
        let token = host.calls[0].0;
        w.on_activate_response(&mut host, token, Some(200), AWAKE);
        assert!(host.resumed.is_empty(), "not on the probe's answer");
        w.tick(&mut host);
        assert_eq!(host.calls.len(), 2);
        assert!(
            host.calls[1].1.contains(r#""activity":true"#),
            "{}",
            host.calls[1].1
        );
    }

    #[test]
    fn ask_first_requests_pass_rather_than_fail_when_they_cannot_be_held() {
        let mut w = worker(1);
        let ask = ASK_FIRST;
        assert_eq!(w.hold(1, WEB, 10_000, 0, ask), Hold::Paused);
        assert_eq!(w.hold(2, WEB, 10_000, 0, ask), Hold::Pass, "over max_held");
        assert_eq!(w.hold(3, WEB, 0, 0, ask), Hold::Pass, "no time left");
    }

    #[test]
    fn a_504_is_an_answer_not_a_reason_to_pass() {
        let mut w = worker(10);
        let mut host = FakeHost {
            endpoints: 1,
            ..Default::default()
        };
        let ask = ASK_FIRST;
        w.hold(1, WEB, 10_000, 0, ask);
        w.tick(&mut host);
        let token = host.calls[0].0;
        w.on_activate_response(&mut host, token, Some(504), br#"{"state":"draining"}"#);
        assert!(host.resumed.is_empty() && w.holding());
    }

    #[test]
    fn activate_says_whether_held_requests_are_activity() {
        let mut host = FakeHost::default();
        let mut probes = worker(10);
        probes.hold(
            1,
            WEB,
            5_000,
            0,
            Ask {
                activity: false,
                ..WAIT
            },
        );
        probes.tick(&mut host);
        assert!(
            host.calls[0].1.contains(r#""activity":false"#),
            "{}",
            host.calls[0].1
        );
        let mut mixed = worker(10);
        mixed.hold(
            1,
            WEB,
            5_000,
            0,
            Ask {
                activity: false,
                ..WAIT
            },
        );
        mixed.hold(2, WEB, 5_000, 0, WAIT);
        mixed.tick(&mut host);
        assert!(
            host.calls[1].1.contains(r#""activity":true"#),
            "{}",
            host.calls[1].1
        );
    }

    #[test]
    fn holds_until_activate_says_ready_and_endpoints_are_seen_twice() {
        let mut w = worker(10);
        let mut host = FakeHost {
            now: 1_000,
            ..Default::default()
        };
        assert_eq!(w.hold(1, WEB, 5_000, host.now, WAIT), Hold::Paused);
        assert_eq!(w.hold(2, WEB, 5_000, host.now, WAIT), Hold::Paused);
        w.tick(&mut host);
        w.tick(&mut host);
        assert_eq!(host.calls.len(), 1, "one activate for both requests");
        assert!(
            host.calls[0].1.contains(r#""deadline_ms":5000"#),
            "{}",
            host.calls[0].1
        );

        w.on_activate_response(&mut host, 100, Some(200), AWAKE);
        w.tick(&mut host);
        assert!(host.resumed.is_empty(), "no endpoint in this Envoy yet");
        host.endpoints = 1;
        w.tick(&mut host);
        assert!(host.resumed.is_empty(), "first sighting: wait");
        host.now += 2;
        w.tick(&mut host);
        assert!(host.resumed.is_empty(), "second sighting: wait once more");
        host.now += 2;
        w.tick(&mut host);
        assert!(
            host.resumed.is_empty(),
            "two ticks, but 4 ms: the host list may still be on its way to the worker"
        );
        host.now += 16;
        w.tick(&mut host);
        assert_eq!(host.resumed, vec![1, 2], "20 ms after the first sighting");
        assert!(host.replies.is_empty());
        assert!(!w.holding());
    }

    #[test]
    fn endpoints_already_visible_when_activate_answers_count_as_a_sighting() {
        let mut w = worker(10);
        let mut host = FakeHost::default();
        w.hold(1, WEB, 5_000, 0, WAIT);
        w.tick(&mut host);
        host.endpoints = 1;
        w.on_activate_response(&mut host, 100, Some(200), AWAKE);
        assert!(
            host.resumed.is_empty(),
            "never resumed inside the callout answer"
        );
        w.tick(&mut host);
        assert!(host.resumed.is_empty(), "second sighting: wait once more");
        host.now = SETTLE_MS;
        w.tick(&mut host);
        assert_eq!(host.resumed, vec![1], "the answer was the first sighting");
    }

    #[test]
    fn reports_requests_and_in_flight_then_nothing_when_idle() {
        let mut c = Counters::default();
        assert_eq!(c.take_report(), None, "idle: nothing to send");
        let web: Rc<str> = Rc::from(WEB);
        let first = c.start(&web, || true).unwrap();
        let long = c
            .start(&web, || unreachable!("checked once per period"))
            .unwrap();
        assert_eq!(first.cluster(), WEB);
        drop(first);
        let r = c.take_report().unwrap();
        assert_eq!((r.outbound[0].requests, r.outbound[0].in_flight), (2, 1));
        let r = c.take_report().unwrap();
        assert_eq!(
            (r.outbound[0].requests, r.outbound[0].in_flight),
            (0, 1),
            "a long request keeps reporting"
        );
        drop(long);
        assert_eq!(c.take_report(), None);
    }

    #[test]
    fn inbound_requests_are_reported_for_the_pods_own_deployment() {
        let mut c = Counters::default();
        let own: Rc<str> = Rc::from("inbound|shop/web");
        let web: Rc<str> = Rc::from(WEB);
        let done = c.start(&own, || true).unwrap();
        let _open = c.start(&own, || true).unwrap();
        let _web = c.start(&web, || true).unwrap();
        drop(done);
        let r = c.take_report().unwrap();
        assert_eq!(
            r.inbound,
            vec![InboundCount {
                namespace: "shop".into(),
                deployment: "web".into(),
                requests: 2,
                in_flight: 1,
            }]
        );
        assert_eq!(r.outbound.len(), 1);
        assert_eq!(r.outbound[0].cluster, WEB);
    }

    #[test]
    fn requests_that_are_not_activity_are_not_counted() {
        let mut c = Counters::default();
        let web: Rc<str> = Rc::from(WEB);
        assert!(
            c.start(&web, || false).is_none(),
            "a probe first in the period"
        );
        assert_eq!(c.take_report(), None);
        drop(c.start(&web, || true).unwrap());
        assert!(!c.take_report().unwrap().outbound.is_empty());
        assert!(
            c.start(&web, || false).is_none(),
            "a new period checks again"
        );
    }

    #[test]
    fn answers_503_with_retry_after_at_the_deadline() {
        let mut w = worker(10);
        let mut host = FakeHost {
            now: 0,
            ..Default::default()
        };
        w.hold(7, WEB, 300, 0, WAIT);
        w.tick(&mut host);
        host.now = 299;
        w.tick(&mut host);
        assert!(host.replies.is_empty());
        host.now = 300;
        w.tick(&mut host);
        let (ctx, reply) = &host.replies[0];
        assert_eq!((*ctx, reply.status), (7, 503));
        assert!(reply.headers.contains(&("retry-after", "1".into())));
        assert!(
            reply.body.contains("web.shop") && reply.body.contains("300 ms"),
            "{}",
            reply.body
        );
        assert!(!w.holding());
    }

    #[test]
    fn grpc_requests_get_unavailable_in_a_200() {
        let mut w = worker(10);
        let mut host = FakeHost::default();
        w.hold(3, WEB, 10, 0, Ask { grpc: true, ..WAIT });
        host.now = 10;
        w.tick(&mut host);
        let reply = &host.replies[0].1;
        assert_eq!(reply.status, 200);
        assert!(reply.headers.contains(&("grpc-status", "14".into())));
        assert!(
            reply
                .headers
                .contains(&("content-type", "application/grpc".into()))
        );
    }

    #[test]
    fn past_max_held_answers_at_once() {
        let mut w = worker(1);
        assert_eq!(w.hold(1, WEB, 1_000, 0, WAIT), Hold::Paused);
        let second = w.hold(2, WEB, 1_000, 0, WAIT);
        assert!(
            matches!(&second, Hold::Reply(r) if r.status == 503 && r.body.contains("max_held_requests")),
            "the second request must be answered at once: {second:?}"
        );
        assert!(
            matches!(w.hold(3, WEB, 0, 0, WAIT), Hold::Reply(_)),
            "no budget, no hold"
        );
    }

    #[test]
    fn retries_activate_after_failures_with_backoff_until_the_deadline() {
        let mut w = worker(10);
        let mut host = FakeHost {
            refuse_calls: true,
            ..Default::default()
        };
        w.hold(1, WEB, 1_000, 0, WAIT);
        w.tick(&mut host);
        host.refuse_calls = false;
        host.now = 10;
        w.tick(&mut host);
        assert!(host.calls.is_empty(), "waits out the backoff");
        host.now = 60;
        w.tick(&mut host);
        assert_eq!(host.calls.len(), 1);
        w.on_activate_response(&mut host, 100, Some(503), b"upstream connect error");
        host.now = 70;
        w.tick(&mut host);
        assert_eq!(host.calls.len(), 1);
        host.now = 200;
        w.tick(&mut host);
        assert_eq!(host.calls.len(), 2, "tried again after the backoff");
        host.now = 1_000;
        w.tick(&mut host);
        assert_eq!(host.replies.len(), 1, "answered at the deadline");
    }

    #[test]
    fn not_managed_answer_lets_requests_through() {
        let mut w = worker(10);
        let mut host = FakeHost::default();
        w.hold(1, WEB, 1_000, 0, WAIT);
        w.tick(&mut host);
        w.on_activate_response(
            &mut host,
            100,
            Some(404),
            br#"{"message":"cluster is not a managed destination"}"#,
        );
        assert_eq!(host.resumed, vec![1]);
    }

    #[test]
    fn a_request_whose_caller_left_is_never_touched() {
        let mut w = worker(10);
        let mut host = FakeHost::default();
        w.hold(1, WEB, 100, 0, WAIT);
        w.forget(1);
        host.now = 1_000;
        w.tick(&mut host);
        assert!(host.replies.is_empty() && host.resumed.is_empty());
        assert!(host.calls.is_empty(), "nothing held, nothing to activate");
    }

    #[test]
    fn a_late_answer_for_a_finished_activation_is_ignored() {
        let mut w = worker(10);
        let mut host = FakeHost::default();
        w.hold(1, WEB, 100, 0, WAIT);
        w.tick(&mut host);
        host.now = 100;
        w.tick(&mut host); // deadline: answered, cluster forgotten
        w.on_activate_response(&mut host, 100, Some(200), AWAKE);
        assert!(host.resumed.is_empty());
        assert_eq!(host.replies.len(), 1);
    }

    /// Activate answered awake and endpoints were seen on enough ticks: releasing starts.
    fn woken(w: &mut Worker, host: &mut FakeHost) {
        w.tick(host);
        let token = host.calls.last().unwrap().0;
        host.endpoints = 1;
        w.on_activate_response(host, token, Some(200), AWAKE);
        w.tick(host);
        host.now += SETTLE_MS;
        w.tick(host);
    }

    #[test]
    fn held_requests_go_at_the_pace_their_answers_come_back_not_as_one_burst() {
        let mut w = windowed(10);
        let mut host = FakeHost::default();
        for ctx in 0..100 {
            w.hold(ctx, WEB, 10_000, 0, WAIT);
        }
        woken(&mut w, &mut host);
        assert_eq!(
            host.resumed,
            (0..10).collect::<Vec<_>>(),
            "the first window, in order"
        );
        w.tick(&mut host);
        assert_eq!(host.resumed.len(), 10, "none finished: none more");
        for ctx in 0..4 {
            w.forget(ctx); // answered
        }
        w.tick(&mut host);
        assert_eq!(host.resumed.len(), 14);
        assert_eq!(host.resumed[10..], [10, 11, 12, 13]);
        // Callers that gave up while waiting are skipped, not resumed.
        for ctx in 14..20 {
            w.forget(ctx);
        }
        for ctx in 4..14 {
            w.forget(ctx);
        }
        w.tick(&mut host);
        assert_eq!(host.resumed[14..], (20..30).collect::<Vec<_>>());
        let mut in_flight = 10;
        while w.holding() {
            let done: Vec<u32> = host.resumed[host.resumed.len() - in_flight..].to_vec();
            for ctx in done {
                w.forget(ctx);
            }
            let before = host.resumed.len();
            w.tick(&mut host);
            in_flight = host.resumed.len() - before;
            assert!(in_flight <= 10, "never more than the window in flight");
        }
        assert_eq!(host.resumed.len(), 94, "all but the six that left");
        assert!(host.replies.is_empty());
    }

    #[test]
    fn endpoints_gone_while_releasing_ask_again() {
        let mut w = windowed(1);
        let mut host = FakeHost::default();
        w.hold(1, WEB, 10_000, 0, WAIT);
        w.hold(2, WEB, 10_000, 0, WAIT);
        woken(&mut w, &mut host);
        assert_eq!(host.resumed, [1]);
        w.forget(1);
        host.endpoints = 0; // a sleep landed
        w.tick(&mut host);
        w.tick(&mut host);
        assert_eq!(host.resumed, [1], "not resumed onto no endpoint");
        assert_eq!(host.calls.len(), 2, "activate asked again");
    }

    #[test]
    fn an_answer_envoy_made_up_for_a_timed_out_callout_lets_ask_first_requests_pass() {
        // Envoy answers a callout that timed out with its own 504 (and a text or empty body):
        // the controller was not asked, so a draining destination's requests go through.
        for body in [&b""[..], b"upstream request timeout", b"{}"] {
            let mut w = worker(10);
            let mut host = FakeHost {
                endpoints: 1,
                ..Default::default()
            };
            w.hold(1, WEB, 10_000, 0, ASK_FIRST);
            w.tick(&mut host);
            let token = host.calls[0].0;
            w.on_activate_response(&mut host, token, Some(504), body);
            assert_eq!(host.resumed, [1], "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn ten_thousand_held_requests_timing_out_together_are_each_answered_once() {
        let mut w = worker(20_000);
        let mut host = FakeHost::default();
        for ctx in 0..10_000 {
            w.hold(ctx, WEB, 1_000, u64::from(ctx % 7), WAIT);
        }
        w.hold(
            10_000,
            "outbound|80||db.shop.svc.cluster.local",
            5_000,
            0,
            WAIT,
        );
        host.now = 1_006;
        w.tick(&mut host);
        assert_eq!(host.replies.len(), 10_000);
        let mut answered: Vec<u32> = host.replies.iter().map(|(c, _)| *c).collect();
        answered.sort_unstable();
        answered.dedup();
        assert_eq!(answered.len(), 10_000);
        assert!(w.holding(), "the other destination's request still waits");
        host.now = 5_000;
        w.tick(&mut host);
        assert_eq!(host.replies.len(), 10_001);
        assert!(!w.holding());
    }

    #[test]
    fn a_second_configuration_keeps_held_requests_and_drives_them() {
        let mut w = worker(10);
        let mut host = FakeHost::default();
        w.hold(1, WEB, 300, 0, WAIT);
        w.reconfigure(Limits {
            max_held: 1,
            release_window: 1,
        });
        assert!(w.holding());
        assert!(
            matches!(w.hold(2, WEB, 300, 0, WAIT), Hold::Reply(_)),
            "new limit"
        );
        host.now = 300;
        w.tick(&mut host);
        assert_eq!(host.replies.len(), 1, "the held request is still answered");
    }

    #[test]
    fn a_huge_wake_timeout_neither_overflows_nor_panics() {
        // The deadline saturates at u64::MAX; `left + slack` overflowed (a panic in debug
        // builds, a 499 ms callout timeout in the wasm profile).
        let mut w = worker(10);
        let mut host = FakeHost::default();
        w.hold(1, WEB, u64::MAX, 0, WAIT);
        w.tick(&mut host);
        assert_eq!(host.calls.len(), 1);
        let mut late = worker(10);
        let mut host2 = FakeHost {
            now: u64::MAX - 10,
            ..Default::default()
        };
        late.hold(1, WEB, u64::MAX, host2.now, WAIT);
        late.tick(&mut host2);
        assert_eq!(host2.calls.len(), 1);
        w.on_activate_response(&mut host, 100, Some(502), br#"{"message":"no"}"#);
        w.tick(&mut host);
        assert!(w.holding());
    }

    #[test]
    fn a_report_that_did_not_arrive_counts_again() {
        let mut c = Counters::default();
        let web: Rc<str> = Rc::from(WEB);
        let own: Rc<str> = Rc::from("inbound|shop/web");
        drop(c.start(&web, || true).unwrap());
        let _open = c.start(&own, || true).unwrap();
        let lost = c.take_report().unwrap();
        drop(c.start(&web, || true).unwrap());
        c.restore(&lost);
        let r = c.take_report().unwrap();
        assert_eq!((r.outbound[0].requests, r.outbound[0].in_flight), (2, 0));
        assert_eq!((r.inbound[0].requests, r.inbound[0].in_flight), (1, 1));
        assert_eq!(c.take_report().unwrap().outbound.len(), 0, "sent once");
    }

    #[test]
    fn a_released_stream_gives_its_slot_back_a_while_after_its_response_headers() {
        let mut w = windowed(2);
        let mut host = FakeHost::default();
        for ctx in 0..4 {
            w.hold(ctx, WEB, 60_000, 0, WAIT);
        }
        woken(&mut w, &mut host);
        assert_eq!(host.resumed, [0, 1]);
        // Two long streams: answered (headers), still open.
        w.answered(0, host.now);
        w.answered(1, host.now);
        w.tick(&mut host);
        assert_eq!(
            host.resumed,
            [0, 1],
            "counted while the circuit breakers count them"
        );
        host.now += STREAM_SLOT_MS;
        w.tick(&mut host);
        assert_eq!(
            host.resumed,
            [0, 1, 2, 3],
            "the window is free although they stream on"
        );
        for ctx in 0..4 {
            w.forget(ctx);
        }
        assert!(!w.must_join(WEB));
        assert!(!w.holding());
    }

    #[test]
    fn new_requests_join_the_held_ones_while_any_wait() {
        let mut w = windowed(1);
        let mut host = FakeHost::default();
        w.hold(1, WEB, 10_000, 0, WAIT);
        w.hold(2, WEB, 10_000, 0, WAIT);
        assert!(w.must_join(WEB), "waiting, release not begun");
        woken(&mut w, &mut host);
        assert_eq!(host.resumed, [1]);
        assert!(w.must_join(WEB), "2 still waits for the window");
        w.forget(1);
        w.tick(&mut host);
        assert_eq!(host.resumed, [1, 2]);
        assert!(
            !w.must_join(WEB),
            "none waits: new requests go at their own pace"
        );
    }
}
