//! The thin layer that touches `proxy_wasm`: the root context (configuration, snapshot polling,
//! driving held requests on tick) and the HTTP context (the per-request decision).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

use kzscaler_core::wire::INBOUND_PREFIX;

use crate::config::Config;
use crate::deadline::{envoy_expected_timeout_ms, grpc_timeout_ms, hold_budget_ms};
use crate::hold::{self, Hold, Reply, Worker};
use crate::table::Table;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> {
        Box::new(Root { id, config: None, worker: None, poll: Poll::default(), tick: None })
    });
}}

/// Shared data keys (shared by every worker of this VM).
const SNAPSHOT_KEY: &str = "kzscaler.snapshot";
const SNAPSHOT_VERSION_KEY: &str = "kzscaler.snapshot.version";
const POLL_LEASE_KEY: &str = "kzscaler.poll.lease";

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `<namespace>/<deployment>` of this pod, from the node metadata Istio gives its sidecar.
fn own_workload() -> Option<String> {
    // `xds.node` in current Envoys; the top-level `node` in older ones.
    let get = |key: &str| {
        [
            vec!["xds", "node", "metadata", key],
            vec!["node", "metadata", key],
        ]
        .into_iter()
        .find_map(|path| {
            hostcalls::get_property(path)
                .ok()
                .flatten()
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|s| !s.is_empty())
        })
    };
    let (Some(ns), Some(workload)) = (get("NAMESPACE"), get("WORKLOAD_NAME")) else {
        log::warn!(
            "kzscaler: inbound requests are not counted: the node metadata has no NAMESPACE and WORKLOAD_NAME (not an Istio sidecar?)"
        );
        return None;
    };
    let own = format!("{ns}/{workload}");
    log::info!("kzscaler: inbound requests count as activity of {own} when it is managed");
    Some(own)
}

fn u64_le(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

#[derive(Default)]
struct Poll {
    next_report_ms: u64,
    inflight: Option<u32>,
    adopted_version: Option<u64>,
    last_ok_ms: u64,
    last_warn_ms: u64,
}

struct Root {
    id: u32,
    config: Option<Rc<Config>>,
    worker: Option<Rc<RefCell<Worker>>>,
    poll: Poll,
    tick: Option<Duration>,
}

/// Calls into Envoy for the worker, acting on held requests through the effective context and
/// handing it back to the root afterwards (so callouts stay owned by the root).
struct ProxyHost<'a> {
    root_id: u32,
    config: &'a Config,
}

/// Dispatches through the SDK so that the answer is routed back to the root context.
struct Caller;
impl Context for Caller {}

impl ProxyHost<'_> {
    fn on<T>(&self, ctx: u32, f: impl FnOnce() -> T) -> Option<T> {
        let out = hostcalls::set_effective_context(ctx).ok().map(|()| f());
        let _ = hostcalls::set_effective_context(self.root_id);
        out
    }
}

impl hold::Host for ProxyHost<'_> {
    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn num_endpoints(&mut self, ctx: u32) -> Option<u64> {
        self.on(ctx, || {
            hostcalls::get_property(vec!["upstream", "num_endpoints"])
        })
        .and_then(Result::ok)
        .flatten()
        .and_then(|b| u64_le(&b))
    }

    fn resume(&mut self, ctx: u32) {
        let _ = self.on(ctx, hostcalls::resume_http_request);
    }

    fn reply(&mut self, ctx: u32, reply: &Reply) {
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        let _ = self.on(ctx, || {
            hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()))
        });
    }

    fn call_activate(&mut self, body: &[u8], timeout_ms: u64) -> Result<u32, String> {
        Caller
            .dispatch_http_call(
                &self.config.controller_cluster,
                vec![
                    (":method", "POST"),
                    (":path", kzscaler_core::wire::ACTIVATE_PATH),
                    (":authority", &self.config.controller_authority),
                    ("content-type", "application/json"),
                ],
                Some(body),
                vec![],
                Duration::from_millis(timeout_ms),
            )
            .map_err(|s| {
                format!(
                    "dispatch to cluster {:?} failed: {s:?}",
                    self.config.controller_cluster
                )
            })
    }
}

impl Root {
    fn set_tick(&mut self, period: Duration) {
        if self.tick != Some(period) {
            let _ = hostcalls::set_tick_period(period);
            self.tick = Some(period);
        }
    }

    /// Adopts the snapshot another worker stored in shared data, if newer.
    fn sync_from_shared(&mut self, worker: &RefCell<Worker>) {
        let Ok((Some(v), _)) = hostcalls::get_shared_data(SNAPSHOT_VERSION_KEY) else {
            return;
        };
        let Some(version) = u64_le(&v) else { return };
        if self.poll.adopted_version == Some(version) {
            return;
        }
        let Ok((Some(bytes), _)) = hostcalls::get_shared_data(SNAPSHOT_KEY) else {
            return;
        };
        match Table::parse(&bytes) {
            Ok(t) => {
                self.poll.adopted_version = Some(t.version);
                worker.borrow_mut().table = t;
            }
            Err(e) => log::warn!("kzscaler: ignoring the stored snapshot: {e}"),
        }
    }

    /// One worker per poll period polls the controller: whoever wins the lease.
    fn maybe_poll(&mut self, config: &Config, now: u64) {
        if self.poll.inflight.is_some() {
            return;
        }
        let Ok((lease, cas)) = hostcalls::get_shared_data(POLL_LEASE_KEY) else {
            return;
        };
        if lease
            .as_deref()
            .and_then(u64_le)
            .is_some_and(|until| now < until)
        {
            return;
        }
        let period = u64::try_from(config.poll_period.as_millis()).unwrap_or(1_000);
        let until = (now + period).to_le_bytes();
        if hostcalls::set_shared_data(POLL_LEASE_KEY, Some(&until), cas).is_err() {
            return; // another worker won
        }
        let etag = self
            .poll
            .adopted_version
            .map(|v| format!("\"{v}\""))
            .unwrap_or_default();
        let mut headers = vec![
            (":method", "GET"),
            (":path", kzscaler_core::wire::SNAPSHOT_PATH),
            (":authority", config.controller_authority.as_str()),
        ];
        if !etag.is_empty() {
            headers.push(("if-none-match", etag.as_str()));
        }
        match self.dispatch_http_call(
            &config.controller_cluster,
            headers,
            None,
            vec![],
            config.call_timeout,
        ) {
            Ok(token) => self.poll.inflight = Some(token),
            Err(e) => self.warn(
                now,
                &format!(
                    "cannot poll the snapshot from cluster {:?}: {e:?}",
                    config.controller_cluster
                ),
            ),
        }
    }

    /// Sends this worker's activity counts, once per poll period and only when non-zero.
    fn maybe_report(&mut self, config: &Config, worker: &RefCell<Worker>, now: u64) {
        if now < self.poll.next_report_ms {
            return;
        }
        self.poll.next_report_ms =
            now + u64::try_from(config.poll_period.as_millis()).unwrap_or(1_000);
        let Some(report) = worker.borrow_mut().counters.take_report() else {
            return;
        };
        let Ok(body) = serde_json::to_vec(&report) else {
            return;
        };
        let headers = vec![
            (":method", "POST"),
            (":path", kzscaler_core::wire::ACTIVITY_PATH),
            (":authority", config.controller_authority.as_str()),
            ("content-type", "application/json"),
        ];
        // The answer is ignored (its token is unknown to the worker): a lost report only
        // delays a sleep, never causes one early, since the controller counts idle time.
        if let Err(e) = self.dispatch_http_call(
            &config.controller_cluster,
            headers,
            Some(&body),
            vec![],
            config.call_timeout,
        ) {
            self.warn(
                now,
                &format!(
                    "cannot send activity to cluster {:?}: {e:?}",
                    config.controller_cluster
                ),
            );
        }
    }

    fn warn(&mut self, now: u64, msg: &str) {
        // At most one warning per 10 s: the controller being away is not news every tick.
        if now.saturating_sub(self.poll.last_warn_ms) >= 10_000 {
            log::warn!("kzscaler: {msg} (requests to awake destinations pass untouched)");
            self.poll.last_warn_ms = now;
        }
    }

    fn on_snapshot_response(
        &mut self,
        status: Option<u32>,
        body_size: usize,
        worker: &RefCell<Worker>,
    ) {
        let now = now_ms();
        match status {
            Some(200) => {
                let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                match Table::parse(&body) {
                    Ok(t) => {
                        let _ = hostcalls::set_shared_data(SNAPSHOT_KEY, Some(&body), None);
                        let _ = hostcalls::set_shared_data(
                            SNAPSHOT_VERSION_KEY,
                            Some(&t.version.to_le_bytes()),
                            None,
                        );
                        self.poll.adopted_version = Some(t.version);
                        self.poll.last_ok_ms = now;
                        worker.borrow_mut().table = t;
                    }
                    Err(e) => self.warn(now, &e),
                }
            }
            Some(304) => self.poll.last_ok_ms = now,
            other => {
                let age = now.saturating_sub(self.poll.last_ok_ms);
                self.warn(
                    now,
                    &format!("snapshot poll answered {other:?}; the snapshot is {age} ms old"),
                );
            }
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let (Some(config), Some(worker)) = (self.config.clone(), self.worker.clone()) else {
            return;
        };
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.parse::<u32>().ok());
        if self.poll.inflight == Some(token) {
            self.poll.inflight = None;
            self.on_snapshot_response(status, body_size, &worker);
            return;
        }
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut host = ProxyHost {
            root_id: self.id,
            config: &config,
        };
        worker
            .borrow_mut()
            .on_activate_response(&mut host, token, status, &body);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(c) => {
                log::info!("kzscaler filter configured: {c:?}");
                self.worker = Some(Rc::new(RefCell::new(Worker::new(c.max_held_requests))));
                let idle = c.poll_period.min(Duration::from_millis(100));
                self.config = Some(Rc::new(c));
                self.set_tick(idle);
                true
            }
            Err(e) => {
                log::error!("kzscaler filter rejected its configuration: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let (Some(config), Some(worker)) = (self.config.clone(), self.worker.clone()) else {
            return;
        };
        let now = now_ms();
        self.sync_from_shared(&worker);
        self.maybe_poll(&config, now);
        self.maybe_report(&config, &worker, now);
        let mut host = ProxyHost {
            root_id: self.id,
            config: &config,
        };
        let holding = {
            let mut w = worker.borrow_mut();
            w.tick(&mut host);
            w.holding()
        };
        let period = if holding {
            config.hold_tick
        } else {
            config.poll_period.min(Duration::from_millis(100))
        };
        self.set_tick(period);
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            id: context_id,
            worker: self.worker.clone(),
            hold_tick: self
                .config
                .as_ref()
                .map_or(Duration::from_millis(2), |c| c.hold_tick),
            held: false,
            counted: None,
        }))
    }
}

/// One request. With no managed destination it does nothing. Otherwise it reads the cluster
/// name. Inbound (`inbound|...`): counts it for this pod's own Deployment, if managed.
/// Outbound: counts it for a managed destination (activity), and holds it only if that
/// destination is not awake and this Envoy has no endpoint. No callout, no parsing.
struct Request {
    id: u32,
    worker: Option<Rc<RefCell<Worker>>>,
    hold_tick: Duration,
    held: bool,
    /// The managed cluster this request counts for, until it ends.
    counted: Option<Rc<str>>,
}

impl Request {
    fn header(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
    }
}

impl Context for Request {
    fn on_done(&mut self) -> bool {
        if let Some(w) = &self.worker {
            let mut w = w.borrow_mut();
            if self.held {
                w.forget(self.id);
            }
            if let Some(cluster) = self.counted.take() {
                w.counters.end(&cluster);
            }
        }
        true
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(worker) = self.worker.clone() else {
            return Action::Continue;
        };
        let (state, wake_timeout_ms, cluster) = {
            let mut guard = worker.borrow_mut();
            let w = &mut *guard;
            if w.table.is_empty() {
                return Action::Continue;
            }
            let Ok(Some(name)) = hostcalls::get_property(vec!["xds", "cluster_name"]) else {
                return Action::Continue;
            };
            let Ok(cluster) = std::str::from_utf8(&name) else {
                return Action::Continue;
            };
            let inbound = cluster.starts_with(INBOUND_PREFIX);
            let entry = if inbound {
                // The inbound side of a pod: its requests are its own Deployment's activity.
                let own = w.own_workload.get_or_insert_with(own_workload);
                own.as_deref().and_then(|o| w.table.workload(o))
            } else {
                w.table.get(cluster)
            };
            let Some(e) = entry else {
                return Action::Continue;
            };
            let counted = w.counters.start(&e.cluster, || {
                e.counts(self.header("user-agent").as_deref(), || {
                    self.header(":path")
                })
            });
            if counted {
                self.counted = Some(e.cluster.clone());
            }
            if inbound {
                return Action::Continue;
            }
            (e.state, e.wake_timeout_ms, e.cluster.clone())
        };
        if !state.must_hold() {
            return Action::Continue;
        }
        // This Envoy already routes to an endpoint: nothing to wait for (except while
        // draining: see State::hold_despite_endpoints).
        let endpoints = hostcalls::get_property(vec!["upstream", "num_endpoints"])
            .ok()
            .flatten()
            .and_then(|b| u64_le(&b))
            .unwrap_or(0);
        if endpoints > 0 && !state.hold_despite_endpoints() {
            return Action::Continue;
        }
        let grpc = self
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/grpc"));
        let budget = hold_budget_ms(
            wake_timeout_ms,
            &[
                self.header("x-envoy-expected-rq-timeout-ms")
                    .as_deref()
                    .and_then(envoy_expected_timeout_ms),
                self.header("grpc-timeout")
                    .as_deref()
                    .and_then(grpc_timeout_ms),
            ],
        );
        let ask = hold::Ask {
            grpc,
            activity: self.counted.is_some(),
            why: if endpoints > 0 {
                hold::Why::AskFirst
            } else {
                hold::Why::NoEndpoint
            },
        };
        let decision = worker
            .borrow_mut()
            .hold(self.id, &cluster, budget, now_ms(), ask);
        match decision {
            Hold::Paused => {
                self.held = true;
                // Speeds up this worker's root tick (Envoy applies it to the root context).
                let _ = hostcalls::set_tick_period(self.hold_tick);
                Action::Pause
            }
            Hold::Pass => Action::Continue,
            Hold::Reply(r) => {
                let headers: Vec<(&str, &str)> =
                    r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let _ = hostcalls::send_http_response(r.status, headers, Some(r.body.as_bytes()));
                Action::Pause
            }
        }
    }
}
