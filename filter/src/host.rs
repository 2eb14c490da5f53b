//! The thin layer that touches `proxy_wasm`: the root context (configuration, snapshot polling,
//! driving held requests on tick) and the HTTP context (the per-request decision).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

use kzscaler_core::wire::ActivityReport;

use crate::config::Config;
use crate::hold::{self, Reply, Worker};
use crate::request::{self, Decision};
use crate::sync::{self, Adopted, Clock, Shared, Stored, Tick};
use crate::table::Table;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> {
        Box::new(Root {
            id,
            own: None,
            config: None,
            worker: None,
            poll: Poll::default(),
            tick: Rc::new(Cell::new(Tick::default())),
            clock: Rc::new(Cell::new(Clock::default())),
        })
    });
}}

fn wall_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// This worker's [`Clock`] time now.
fn now_ms(clock: &Cell<Clock>) -> u64 {
    let mut c = clock.get();
    let now = c.now(wall_ms());
    clock.set(c);
    now
}

/// Sets this worker's tick period if it changed (from a request, Envoy applies it to the
/// root context of the worker).
fn set_tick(tick: &Cell<Tick>, period: Duration) {
    let mut t = tick.get();
    if let Some(p) = t.change(period) {
        let _ = hostcalls::set_tick_period(p);
    }
    tick.set(t);
}

/// Envoy's shared data.
struct EnvoyShared;

impl Shared for EnvoyShared {
    fn get(&self, key: &str) -> Option<(Option<Vec<u8>>, Option<u32>)> {
        hostcalls::get_shared_data(key).ok()
    }
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }
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

use sync::u64_le;

/// `upstream.num_endpoints` of the effective context's routed cluster.
fn num_endpoints() -> Option<u64> {
    hostcalls::get_property(vec!["upstream", "num_endpoints"])
        .ok()
        .flatten()
        .and_then(|b| u64_le(&b))
}

#[derive(Default)]
struct Poll {
    next_report_ms: u64,
    inflight: Option<u32>,
    adopted: Adopted,
    /// The ETag of the adopted snapshot (its version and a hash of its bytes), sent back as
    /// `If-None-Match`.
    etag: Option<String>,
    last_ok_ms: u64,
    last_warn_ms: u64,
    last_degraded_ms: u64,
    /// Activity reports on their way, by callout token: put back if they do not arrive.
    reports: HashMap<u32, ActivityReport>,
    /// When the poll in flight started, and until when it holds the poll lease (as taken).
    started_ms: u64,
    leased: Option<u64>,
    /// This worker lost track of the deltas (too far behind, or one did not apply): it polls
    /// a full snapshot itself, whoever holds the poll lease.
    full_next: bool,
    /// The VM's memory when last logged, in KB.
    memory_kb: u64,
}

/// This VM's linear memory in KB: what Envoy holds for it. It only grows.
fn vm_memory_kb() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        u64::try_from(core::arch::wasm32::memory_size::<0>()).unwrap_or(u64::MAX) * 64
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

struct Root {
    id: u32,
    /// This pod's own Deployment, read from the node metadata at the first snapshot; the
    /// table keeps only its workload entry.
    own: Option<Option<String>>,
    config: Option<Rc<Config>>,
    worker: Option<Rc<RefCell<Worker>>>,
    poll: Poll,
    tick: Rc<Cell<Tick>>,
    clock: Rc<Cell<Clock>>,
}

/// Calls into Envoy for the worker, acting on held requests through the effective context and
/// handing it back to the root afterwards (so callouts stay owned by the root).
struct ProxyHost<'a> {
    root_id: u32,
    config: &'a Config,
    clock: &'a Cell<Clock>,
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
        now_ms(self.clock)
    }

    fn num_endpoints(&mut self, ctx: u32) -> Option<u64> {
        self.on(ctx, num_endpoints).flatten()
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
    fn set_tick(&self, period: Duration) {
        set_tick(&self.tick, period);
    }

    /// Catches up with what other workers stored in shared data: the deltas from this
    /// worker's version, applied in place, else the full snapshot if newer.
    fn sync_from_shared(&mut self, worker: &RefCell<Worker>, now: u64) {
        // A bounded walk: each step moves the version forward.
        for _ in 0..=sync::DELTA_SLOTS {
            match self.poll.adopted.next_stored(&EnvoyShared) {
                None => return,
                Some(Stored::Delta(version, body)) => {
                    let applied = worker.borrow_mut().table.apply_delta(&body);
                    match applied {
                        Ok(()) => self.adopted_delta(worker, version, now),
                        Err(e) => {
                            self.warn(now, &format!("ignoring a stored delta: {e}"));
                            self.poll.adopted.skip_hint(&EnvoyShared);
                            self.poll.full_next = true;
                            return;
                        }
                    }
                }
                Some(Stored::Full(version, body)) => {
                    self.table_for_own(worker);
                    let replaced = worker.borrow_mut().table.replace(&body, |v| v == version);
                    match replaced {
                        // A slot being rewritten holds another version: poll for ourselves.
                        Ok((_, false)) => {
                            self.poll.full_next = true;
                            return;
                        }
                        Ok((_, true)) => {
                            self.adopt(worker, version, &body, now);
                            // Deltas stored since that snapshot may follow.
                            self.poll.adopted.retry();
                        }
                        Err(e) => {
                            self.warn(now, &format!("ignoring the stored snapshot {version}: {e}"));
                            return;
                        }
                    }
                }
                Some(Stored::Lost) => {
                    self.poll.full_next = true;
                    return;
                }
            }
        }
    }

    /// This pod's own Deployment, read from the node metadata once.
    fn own(&mut self) -> Option<String> {
        self.own.get_or_insert_with(own_workload).clone()
    }

    /// The table moved to `version` by a delta: no ETag (there is no full body to hash);
    /// the next poll asks for the delta since this version.
    fn adopted_delta(&mut self, worker: &RefCell<Worker>, version: u64, now: u64) {
        let w = worker.borrow();
        if let Some(msg) = w.table.degraded()
            && now.saturating_sub(self.poll.last_degraded_ms) >= 60_000
        {
            log::warn!("kzscaler: {msg}");
            self.poll.last_degraded_ms = now;
        }
        self.poll.adopted.adopt(version);
        self.poll.etag = None;
        self.log_memory_growth(&w.table);
    }

    /// Logs this VM's memory when a table made it grow: how much a sidecar pays for the
    /// fleet's size.
    fn log_memory_growth(&mut self, table: &Table) {
        let kb = vm_memory_kb();
        if kb > self.poll.memory_kb {
            log::info!(
                "kzscaler: this VM's memory grew to {kb} KB, with {} destinations at version {}",
                table.len(),
                table.version
            );
            self.poll.memory_kb = kb;
        }
    }

    /// The worker's table was replaced in place by the full snapshot `body` of `version`.
    fn adopt(&mut self, worker: &RefCell<Worker>, version: u64, body: &[u8], now: u64) {
        let w = worker.borrow();
        if let Some(msg) = w.table.degraded()
            && now.saturating_sub(self.poll.last_degraded_ms) >= 60_000
        {
            log::warn!("kzscaler: {msg}");
            self.poll.last_degraded_ms = now;
        }
        self.poll.adopted.adopt(version);
        self.poll.etag = Some(kzscaler_core::wire::snapshot_etag(version, body));
        self.log_memory_growth(&w.table);
    }

    /// Before the first full snapshot: the worker's table is made for this pod's own
    /// Deployment (read once; the table keeps that one workload).
    fn table_for_own(&mut self, worker: &RefCell<Worker>) {
        let own = self.own();
        let mut w = worker.borrow_mut();
        if w.table.own() != own.as_deref() {
            w.table = Table::new(own.as_deref());
        }
    }

    /// One worker per poll period polls the controller: whoever wins the lease. It asks for
    /// the delta since its version when the controller gives deltas (a term), else the full
    /// snapshot with `If-None-Match`.
    fn maybe_poll(&mut self, config: &Config, worker: &RefCell<Worker>, now: u64) {
        if self.poll.inflight.is_some() {
            return;
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let period = ms(config.poll_period);
        let long = ms(config.long_poll.saturating_add(config.call_timeout)).max(period);
        let full = std::mem::take(&mut self.poll.full_next);
        let term = worker.borrow().table.term;
        let since = self.poll.adopted.version.filter(|_| term != 0 && !full);
        // A long poll holds the lease while it is open; it ends one period after its start
        // once answered (see on_http_call_response).
        let hold = if since.is_some() && !config.long_poll.is_zero() {
            long
        } else {
            period
        };
        let leased = sync::take_poll_lease(&mut EnvoyShared, now, hold, long);
        if !leased && !full {
            return; // another worker polls
        }
        let wait = config.long_poll.as_secs();
        let path = match since {
            Some(v) if wait > 0 => format!(
                "{}?{}={v}&{}={term}&{}={wait}",
                kzscaler_core::wire::SNAPSHOT_PATH,
                kzscaler_core::wire::SINCE_PARAM,
                kzscaler_core::wire::TERM_PARAM,
                kzscaler_core::wire::WAIT_PARAM
            ),
            Some(v) => format!(
                "{}?{}={v}&{}={term}",
                kzscaler_core::wire::SNAPSHOT_PATH,
                kzscaler_core::wire::SINCE_PARAM,
                kzscaler_core::wire::TERM_PARAM
            ),
            None => kzscaler_core::wire::SNAPSHOT_PATH.to_owned(),
        };
        let timeout = if since.is_some() {
            config.call_timeout.saturating_add(config.long_poll)
        } else {
            config.call_timeout
        };
        let etag = if full {
            String::new()
        } else {
            self.poll.etag.clone().unwrap_or_default()
        };
        let mut headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", config.controller_authority.as_str()),
        ];
        if !etag.is_empty() {
            headers.push(("if-none-match", etag.as_str()));
        }
        match self.dispatch_http_call(&config.controller_cluster, headers, None, vec![], timeout) {
            Ok(token) => {
                self.poll.inflight = Some(token);
                self.poll.started_ms = now;
                self.poll.leased = leased.then(|| now.saturating_add(hold));
            }
            Err(e) => {
                self.poll.full_next |= full;
                if leased {
                    // Not sent: the lease goes at the period's end, not the long poll's.
                    sync::end_poll_lease(
                        &mut EnvoyShared,
                        now.saturating_add(hold),
                        now.saturating_add(period),
                    );
                }
                self.warn(
                    now,
                    &format!(
                        "cannot poll the snapshot from cluster {:?}: {e:?}",
                        config.controller_cluster
                    ),
                );
            }
        }
    }

    /// Once per poll period: adds this worker's activity counts to the Envoy's in shared
    /// data, and, if this worker holds the report lease, sends the Envoy's: one report per
    /// Envoy and period, none when idle.
    fn maybe_report(&mut self, config: &Config, worker: &RefCell<Worker>, now: u64) {
        if now < self.poll.next_report_ms {
            return;
        }
        let period = u64::try_from(config.poll_period.as_millis()).unwrap_or(1_000);
        self.poll.next_report_ms = now.saturating_add(period);
        let mine = worker.borrow_mut().counters.take_report();
        if let Some(mine) = mine
            && !sync::add_activity(&mut EnvoyShared, &mine, true)
        {
            // Shared data refused: kept here for the next period.
            worker.borrow_mut().counters.restore(&mine);
        }
        if !sync::take_lease(
            &mut EnvoyShared,
            sync::REPORT_LEASE_KEY,
            now,
            period,
            period,
        ) {
            return; // another worker reports this period
        }
        let Some(report) = sync::take_activity(&mut EnvoyShared) else {
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
        match self.dispatch_http_call(
            &config.controller_cluster,
            headers,
            Some(&body),
            vec![],
            config.call_timeout,
        ) {
            Ok(token) => {
                self.poll.reports.insert(token, report);
            }
            Err(e) => {
                sync::add_activity(&mut EnvoyShared, &report, false);
                self.warn(
                    now,
                    &format!(
                        "cannot send activity to cluster {:?}: {e:?}",
                        config.controller_cluster
                    ),
                );
            }
        }
    }

    fn warn(&mut self, now: u64, msg: &str) {
        // At most one warning per 10 s: the controller being away is not news every tick.
        if now.saturating_sub(self.poll.last_warn_ms) >= 10_000 {
            log::warn!("kzscaler: {msg} (requests to awake destinations pass untouched)");
            self.poll.last_warn_ms = now;
        }
    }

    /// A delta the controller answered: applied in place if it is for this worker's version
    /// (another worker may have moved it meanwhile: then it is only shared), and stored for
    /// the other workers.
    fn on_delta(&mut self, body: &[u8], worker: &RefCell<Worker>, now: u64) {
        self.poll.last_ok_ms = now;
        let since = worker.borrow().table.version;
        let applied = worker.borrow_mut().table.apply_delta(body);
        match applied {
            Ok(()) => {
                let version = worker.borrow().table.version;
                sync::publish_delta(&mut EnvoyShared, since, version, body);
                self.adopted_delta(worker, version, now);
            }
            // Sent from a version the table has since left (another worker's delta got here
            // first): the next poll asks from where it is now.
            Err(e) if e.contains("does not apply") => {
                log::debug!("kzscaler: {e}");
            }
            Err(e) => {
                self.poll.full_next = true;
                self.warn(now, &format!("ignoring a delta: {e}"));
            }
        }
    }

    fn on_snapshot_response(
        &mut self,
        status: Option<u32>,
        body_size: usize,
        worker: &RefCell<Worker>,
    ) {
        let now = now_ms(&self.clock);
        match status {
            Some(200) => {
                let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                let delta = hostcalls::get_map_value_bytes(
                    MapType::HttpCallResponseHeaders,
                    "content-type",
                )
                .ok()
                .flatten()
                .is_some_and(|t| t == kzscaler_core::wire::DELTA_CONTENT_TYPE.as_bytes());
                if delta {
                    self.on_delta(&body, worker, now);
                    return;
                }
                self.table_for_own(worker);
                let adopted = self.poll.adopted;
                // An older answer (polls overlap) never replaces a newer table.
                let replaced = worker
                    .borrow_mut()
                    .table
                    .replace(&body, |v| adopted.is_newer(v));
                match replaced {
                    Ok((version, applied)) => {
                        self.poll.last_ok_ms = now;
                        sync::publish(&mut EnvoyShared, version, &body);
                        if applied {
                            self.adopt(worker, version, &body, now);
                        }
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
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u32>().ok());
        if self.poll.inflight == Some(token) {
            self.poll.inflight = None;
            if let Some(held) = self.poll.leased.take() {
                let period = u64::try_from(config.poll_period.as_millis()).unwrap_or(1_000);
                sync::end_poll_lease(
                    &mut EnvoyShared,
                    held,
                    self.poll.started_ms.saturating_add(period),
                );
            }
            self.on_snapshot_response(status, body_size, &worker);
            return;
        }
        if let Some(report) = self.poll.reports.remove(&token) {
            if !sync::report_delivered(status) {
                // Its requests count again in the Envoy's next report.
                sync::add_activity(&mut EnvoyShared, &report, false);
            }
            return;
        }
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut host = ProxyHost {
            root_id: self.id,
            config: &config,
            clock: &self.clock,
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
                log::info!(
                    "kzscaler filter configured (VM memory {} KB): {c:?}",
                    vm_memory_kb()
                );
                match &self.worker {
                    // Reconfigured: requests held so far stay held and are still driven.
                    Some(w) => w.borrow_mut().reconfigure(c.limits()),
                    None => self.worker = Some(Rc::new(RefCell::new(Worker::new(c.limits())))),
                }
                let idle = c.poll_period.min(Duration::from_millis(100));
                let hold_tick = c.hold_tick;
                self.config = Some(Rc::new(c));
                let holding = self.worker.as_ref().is_some_and(|w| w.borrow().holding());
                self.set_tick(if holding { hold_tick } else { idle });
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
        let now = now_ms(&self.clock);
        self.sync_from_shared(&worker, now);
        self.maybe_poll(&config, &worker, now);
        self.maybe_report(&config, &worker, now);
        let mut host = ProxyHost {
            root_id: self.id,
            config: &config,
            clock: &self.clock,
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
            tick: self.tick.clone(),
            clock: self.clock.clone(),
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
    tick: Rc<Cell<Tick>>,
    clock: Rc<Cell<Clock>>,
    hold_tick: Duration,
    /// It was held (it may since have been resumed): the worker must hear that it ended.
    held: bool,
    /// The managed cluster this request counts for, until it ends.
    /// Its activity count while in flight: dropped when the request is done.
    counted: Option<crate::hold::Counted>,
}

impl request::Request for Request {
    fn id(&self) -> u32 {
        self.id
    }

    fn cluster_name(&self) -> Option<Vec<u8>> {
        hostcalls::get_property(vec!["xds", "cluster_name"])
            .ok()
            .flatten()
    }

    /// A request header as bytes: any byte may be in a header (obs-text), and the SDK's
    /// string accessor panics on one that is not UTF-8.
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
    }

    fn num_endpoints(&self) -> Option<u64> {
        num_endpoints()
    }

    fn route(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        let config = hostcalls::get_property(vec![
            "xds",
            "route_metadata",
            "filter_metadata",
            "istio",
            "config",
        ])
        .ok()
        .flatten()?;
        let name = hostcalls::get_property(vec!["xds", "route_name"])
            .ok()
            .flatten()
            .unwrap_or_default();
        Some((config, name))
    }

    fn now_ms(&self) -> u64 {
        now_ms(&self.clock)
    }
}

impl Context for Request {
    fn on_done(&mut self) -> bool {
        if let Some(w) = &self.worker {
            let mut w = w.borrow_mut();
            if self.held {
                w.forget(self.id);
            }
            // Out of the in-flight count, without a lookup.
            self.counted = None;
        }
        true
    }
}

impl HttpContext for Request {
    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        // A resumed request has its answer: its release slot goes back soon (it may stream on).
        if self.held
            && let Some(w) = &self.worker
        {
            w.borrow_mut().answered(self.id, now_ms(&self.clock));
        }
        Action::Continue
    }

    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(worker) = self.worker.clone() else {
            return Action::Continue;
        };
        let outcome = request::on_request_headers(&mut worker.borrow_mut(), &*self);
        self.counted = outcome.counted;
        match outcome.decision {
            Decision::Continue => Action::Continue,
            Decision::Held => {
                self.held = true;
                // Speeds up this worker's root tick, once: set again on every held request, a
                // steady stream of them would re-arm the timer before it ever fired.
                set_tick(&self.tick, self.hold_tick);
                Action::Pause
            }
            Decision::Reply(r) => {
                let headers: Vec<(&str, &str)> =
                    r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let _ = hostcalls::send_http_response(r.status, headers, Some(r.body.as_bytes()));
                Action::Pause
            }
        }
    }
}
