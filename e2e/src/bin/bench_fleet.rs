//! `kzscaler-bench-fleet`: the controller at fleet size, measured on the test bed in one run
//! (`hack/bench-fleet.sh` builds it and starts the test bed).
//!
//! It creates a namespace of N managed Deployments (0 replicas) with their Services, and starts
//! a controller of its own (release build, or `--controller`) that manages only that namespace.
//! Then, phase by phase, it prints what the controller costs:
//!
//! ```text
//!  first sync ─▶ idle ─▶ unrelated changes (R/s) ─▶ M sidecars connect ─▶ churn (K/s) ─▶ activates
//!  RSS, time     CPU     CPU per 1,000 events        CPU, 304s            bytes, staleness  latency
//! ```
//!
//! The sidecars are simulated in this process, speaking the filter's API: most long-poll for
//! deltas (`?since=V&term=T&wait=30`), a few poll the full snapshot once a second with
//! `If-None-Match` (API v1 as the filter used it before deltas), so the two are measured side by
//! side. CPU is the controller process's own (user + system, from /proc), never wall time.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kzscaler_core::wire::{Delta, Snapshot, State};
use kzscaler_e2e::envoy::{CONTROLLER_CLUSTER, Standalone};
use kzscaler_e2e::fixtures;
use kzscaler_e2e::kz::{PRIVATE_LABEL, free_port};
use kzscaler_e2e::testbed::TestBed;
use serde_json::json;

/// Measures the controller with a fleet of managed Deployments and simulated sidecars.
#[derive(Debug, Parser)]
#[command(name = "kzscaler-bench-fleet", version = kzscaler_core::VERSION)]
struct Args {
    /// Managed Deployments (each with a Service) to create.
    #[arg(long, default_value_t = 300)]
    deployments: usize,
    /// Simulated sidecars long-polling for deltas.
    #[arg(long, default_value_t = 200)]
    sidecars: usize,
    /// Simulated sidecars polling the full snapshot once a second (API v1 before deltas),
    /// measured beside the others.
    #[arg(long, default_value_t = 10)]
    full_pollers: usize,
    /// Wakes and sleeps per second during the churn (each a scale PATCH of one Deployment).
    #[arg(long, default_value_t = 2.0)]
    churn: f64,
    /// Changes per second to unmanaged Deployments (events the controller receives and
    /// must ignore cheaply).
    #[arg(long, default_value_t = 50.0)]
    unrelated_rate: f64,
    /// Seconds of each measured phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Activates to time (each wakes one sleeping Deployment).
    #[arg(long, default_value_t = 10)]
    activations: usize,
    /// The controller binary (default: kzscaler-controller beside this program), e.g. an
    /// older build to compare with.
    #[arg(long)]
    controller: Option<PathBuf>,
    /// Keep the namespace afterwards (default: delete it).
    #[arg(long)]
    keep: bool,
}

/// The longest the benchmark waits for kube-controller-manager to settle the new Deployments.
const SETTLE_MAX: Duration = Duration::from_secs(1_200);

/// Unmanaged Deployments whose annotations the unrelated-changes phase rewrites.
const UNRELATED: usize = 50;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

/// The controller process: CPU and memory from /proc.
struct Proc {
    child: tokio::process::Child,
    pid: u32,
    tick: f64,
}

impl Proc {
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        kzscaler_e2e::process::cpu_seconds(self.pid, self.tick)
    }

    /// (VmRSS, VmHWM) in MB.
    fn memory_mb(&self) -> anyhow::Result<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let kb = |key: &str| -> f64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        Ok((kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0))
    }
}

type Http = Client<HttpConnector, Full<Bytes>>;

async fn get(
    http: &Http,
    url: &str,
    etag: Option<&str>,
) -> anyhow::Result<(u16, Option<String>, Bytes)> {
    let mut req = hyper::Request::get(url);
    if let Some(e) = etag {
        req = req.header("if-none-match", e);
    }
    let resp = http.request(req.body(Full::new(Bytes::new()))?).await?;
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, etag, body))
}

async fn post(http: &Http, url: &str, body: String) -> anyhow::Result<(u16, Bytes)> {
    let req = hyper::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = http.request(req).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// `{"version":N,"term":T,...`: read without parsing a large body.
fn version_and_term(body: &[u8]) -> Option<(u64, u64)> {
    let head = std::str::from_utf8(body.get(..body.len().min(96))?).ok()?;
    let num = |key: &str| -> Option<u64> {
        let at = head.find(key)? + key.len();
        let digits: String = head[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    Some((num("\"version\":")?, num("\"term\":").unwrap_or(0)))
}

/// What one simulated sidecar saw.
#[derive(Debug, Default)]
struct Seen {
    /// Body bytes received after its first snapshot.
    bytes: u64,
    /// Answers with content (deltas or snapshots) after its first snapshot.
    answers: u64,
    /// (cluster, state, when) of every destination change it learned.
    changes: Vec<(String, State, Instant)>,
    /// Whether it has its first snapshot.
    synced: bool,
    /// Failed polls, by reason.
    errors: BTreeMap<String, u64>,
}

impl Seen {
    fn error(&mut self, reason: String) {
        *self.errors.entry(reason).or_default() += 1;
    }
}

/// A sidecar long-polling for deltas until `stop`.
async fn delta_sidecar(
    http: Http,
    base: String,
    stop: Arc<AtomicBool>,
    seen: Arc<tokio::sync::Mutex<Seen>>,
) {
    let mut since: Option<(u64, u64)> = None;
    while !stop.load(Ordering::Relaxed) {
        let url = match since {
            None => format!("{base}/v1/snapshot"),
            Some((v, t)) => format!("{base}/v1/snapshot?since={v}&term={t}&wait=30"),
        };
        let (status, _, body) = match get(&http, &url, None).await {
            Ok(r) => r,
            Err(e) => {
                seen.lock().await.error(format!("{e:#}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let now = Instant::now();
        let mut s = seen.lock().await;
        match status {
            200 if since.is_some() && body.windows(8).any(|w| w == b"\"since\":") => {
                s.bytes += body.len() as u64;
                s.answers += 1;
                match serde_json::from_slice::<Delta>(&body) {
                    Ok(d) => {
                        for u in d.upsert {
                            s.changes.push((u.cluster, u.state, now));
                        }
                        since = Some((d.version, d.term));
                    }
                    Err(e) => {
                        s.error(format!("a delta did not parse: {e}"));
                        since = None;
                    }
                }
            }
            200 => {
                if s.synced {
                    s.bytes += body.len() as u64;
                    s.answers += 1;
                }
                s.synced = true;
                since = version_and_term(&body);
            }
            304 => {}
            _ => {
                s.error(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(body.get(..body.len().min(120)).unwrap_or_default())
                ));
                drop(s);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// A sidecar polling the full snapshot once a second (API v1 before deltas) until `stop`.
async fn full_poller(
    http: Http,
    base: String,
    stop: Arc<AtomicBool>,
    seen: Arc<tokio::sync::Mutex<Seen>>,
) {
    let mut etag: Option<String> = None;
    let mut table: HashMap<String, State> = HashMap::new();
    let url = format!("{base}/v1/snapshot");
    while !stop.load(Ordering::Relaxed) {
        let next = Instant::now() + Duration::from_secs(1);
        match get(&http, &url, etag.as_deref()).await {
            Ok((200, e, body)) => {
                let now = Instant::now();
                let mut s = seen.lock().await;
                if s.synced {
                    s.bytes += body.len() as u64;
                    s.answers += 1;
                }
                if let Ok(snap) = serde_json::from_slice::<Snapshot>(&body) {
                    for d in snap.destinations {
                        if table.insert(d.cluster.clone(), d.state) != Some(d.state) && s.synced {
                            s.changes.push((d.cluster, d.state, now));
                        }
                    }
                }
                s.synced = true;
                etag = e;
            }
            Ok((304, ..)) => {}
            Ok((status, ..)) => seen.lock().await.error(format!("HTTP {status}")),
            Err(e) => seen.lock().await.error(format!("{e:#}")),
        }
        tokio::time::sleep_until(next.into()).await;
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn step(msg: &str) {
    eprintln!("==> {msg}");
}

/// One scale change made during the churn.
struct Change {
    deployment: String,
    cluster: String,
    up: bool,
    at: Instant,
}

/// When each sidecar learned each change (`[change][sidecar]`): the first time it saw a state
/// of that direction for that cluster after the PATCH; None if it never did.
fn learned(changes: &[Change], seen: &[Seen]) -> Vec<Vec<Option<Instant>>> {
    let by_sidecar: Vec<HashMap<&str, Vec<(State, Instant)>>> = seen
        .iter()
        .map(|s| {
            let mut m: HashMap<&str, Vec<(State, Instant)>> = HashMap::new();
            for (c, st, t) in &s.changes {
                m.entry(c.as_str()).or_default().push((*st, *t));
            }
            m
        })
        .collect();
    changes
        .iter()
        .map(|ch| {
            by_sidecar
                .iter()
                .map(|m| {
                    m.get(ch.cluster.as_str())?
                        .iter()
                        .filter(|(st, t)| *t >= ch.at && (*st != State::Asleep) == ch.up)
                        .map(|(_, t)| *t)
                        .min()
                })
                .collect()
        })
        .collect()
}

/// Staleness of every (change, sidecar): from the PATCH to the sidecar learning it. A change
/// never learned counts as missing.
fn staleness(changes: &[Change], learned: &[Vec<Option<Instant>>]) -> (Vec<f64>, usize) {
    let mut out = Vec::new();
    let mut missing = 0;
    for (ch, by_sidecar) in changes.iter().zip(learned) {
        for t in by_sidecar {
            match t {
                Some(t) => out.push((*t - ch.at).as_secs_f64() * 1000.0),
                None => missing += 1,
            }
        }
    }
    (out, missing)
}

/// Where staleness goes, per change (p50 and p99 of each part, ms):
/// - the API server: PATCH → this process's own watch event with the new replicas (the
///   controller's watch gets it at about the same time);
/// - the controller: that event → the first sidecar to know (apply, publish, one answer);
/// - the fan-out: the first sidecar → each other one (answers to all long polls, parsed by
///   this one process).
struct Split {
    api: Vec<f64>,
    controller: Vec<f64>,
    fan_out: Vec<f64>,
}

fn split_staleness(
    changes: &[Change],
    watched: &[(String, i32, Instant)],
    learned: &[Vec<Option<Instant>>],
) -> Split {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut split = Split {
        api: Vec::new(),
        controller: Vec::new(),
        fan_out: Vec::new(),
    };
    for (ch, by_sidecar) in changes.iter().zip(learned) {
        let watch = watched
            .iter()
            .filter(|(n, r, t)| *n == ch.deployment && (*r > 0) == ch.up && *t >= ch.at)
            .map(|(_, _, t)| *t)
            .min();
        let learned: Vec<Instant> = by_sidecar.iter().flatten().copied().collect();
        let first = learned.iter().min().copied();
        if let Some(w) = watch {
            split.api.push(ms(w - ch.at));
            if let Some(f) = first {
                split.controller.push(ms(f.saturating_duration_since(w)));
            }
        }
        if let Some(f) = first {
            split
                .fan_out
                .extend(learned.iter().map(|t| ms(t.saturating_duration_since(f))));
        }
    }
    split
}

async fn run(args: Args) -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let tick: f64 = kzscaler_e2e::process::clock_ticks()?;
    let name = format!("kzscaler-fleet-{}", std::process::id());
    step(&format!(
        "namespace {name}: {} managed Deployments with Services, {UNRELATED} unmanaged",
        args.deployments
    ));
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name,
        "labels": {PRIVATE_LABEL: name, kzscaler_e2e::namespace::E2E_LABEL: "true"}}}))?;
    let namespaces = Api::<Namespace>::all(bed.client.clone());
    namespaces.create(&PostParams::default(), &ns).await?;
    // Interrupted, the measurement is dropped: its controller is killed with it, and the
    // namespace still goes.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = measure(&args, &bed, &name, tick) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = sigterm.recv() => Err(anyhow::anyhow!("terminated")),
    };
    if !args.keep {
        let _ = namespaces.delete(&name, &DeleteParams::default()).await;
    }
    result
}

/// The namespace's Deployment watch events, as a watcher beside the controller's receives
/// them: counted always, and while `recording` is set, each one's (name, spec.replicas, when)
/// kept, so the churn's staleness can be split at the API server.
struct DeploymentEvents {
    count: Arc<AtomicU64>,
    recording: Arc<AtomicBool>,
    seen: Arc<std::sync::Mutex<Vec<(String, i32, Instant)>>>,
}

fn watch_deployment_events(deps: Api<Deployment>) -> DeploymentEvents {
    use kube::runtime::watcher;
    let events = DeploymentEvents {
        count: Arc::new(AtomicU64::new(0)),
        recording: Arc::new(AtomicBool::new(false)),
        seen: Arc::default(),
    };
    let (count, recording, seen) = (
        events.count.clone(),
        events.recording.clone(),
        events.seen.clone(),
    );
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(deps, watcher::Config::default()));
        while let Some(ev) = stream.next().await {
            let at = Instant::now();
            let d = match ev {
                Ok(watcher::Event::Apply(d)) => d,
                Ok(watcher::Event::Delete(_)) => {
                    count.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                _ => continue,
            };
            count.fetch_add(1, Ordering::Relaxed);
            if recording.load(Ordering::Relaxed)
                && let (Some(name), Some(replicas)) =
                    (d.metadata.name, d.spec.as_ref().and_then(|s| s.replicas))
                && let Ok(mut v) = seen.lock()
            {
                v.push((name, replicas, at));
            }
        }
    });
    events
}

async fn measure(args: &Args, bed: &TestBed, name: &str, tick: f64) -> anyhow::Result<()> {
    let deps = Api::<Deployment>::namespaced(bed.client.clone(), name);
    let deployment_events = watch_deployment_events(deps.clone());
    let svcs = Api::<Service>::namespaced(bed.client.clone(), name);
    let created = AtomicU64::new(0);
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..args.deployments + UNRELATED)
        .map(|i| {
            let (deps, svcs, created) = (&deps, &svcs, &created);
            async move {
                if i < args.deployments {
                    let n = format!("app-{i}");
                    let mut d = fixtures::deployment(&n, 0);
                    let a = d.metadata.annotations.get_or_insert_default();
                    a.insert("kzscaler.io/scale-to-zero".into(), "true".into());
                    a.insert("kzscaler.io/idle-timeout".into(), "1h".into());
                    svcs.create(
                        &PostParams::default(),
                        &fixtures::service(&n, &n, 80, "http"),
                    )
                    .await?;
                    deps.create(&PostParams::default(), &d).await?;
                } else {
                    let d = fixtures::deployment(&format!("plain-{}", i - args.deployments), 0);
                    deps.create(&PostParams::default(), &d).await?;
                }
                let n = created.fetch_add(1, Ordering::Relaxed) + 1;
                if n % 1_000 == 0 {
                    eprintln!("    {n} created ({:.0}s)", started.elapsed().as_secs_f64());
                }
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for r in results {
        r?;
    }
    eprintln!("    created in {:.1}s", started.elapsed().as_secs_f64());

    step("controller of its own, managing only that namespace");
    let binary = match &args.controller {
        Some(b) => b.clone(),
        // Built beside this program (hack/bench-fleet.sh builds both with --release).
        None => std::env::current_exe()?.with_file_name("kzscaler-controller"),
    };
    let addr = format!("127.0.0.1:{}", free_port()?);
    let log = bed
        .state_dir
        .join("logs")
        .join("bench-fleet-controller.log");
    let child = tokio::process::Command::new(&binary)
        .args([
            "--listen",
            &addr.to_string(),
            "--no-leader-elect",
            "--no-wasmplugins",
            "--namespace-selector",
            &format!("{PRIVATE_LABEL}={name}"),
        ])
        .env("KUBECONFIG", &bed.kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id().context("controller pid")?;
    let run_started = Instant::now();
    let controller = Proc { child, pid, tick };
    let base = format!("http://{addr}");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let http: Http = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build(connector);
    let t0 = Instant::now();
    let synced = loop {
        if t0.elapsed() > Duration::from_secs(600) {
            bail!(
                "the controller did not serve {} destinations within 10 minutes; log: {}",
                args.deployments,
                log.display()
            );
        }
        if let Ok((200, _, body)) = get(&http, &format!("{base}/v1/snapshot"), None).await
            && let Ok(s) = serde_json::from_slice::<Snapshot>(&body)
            && s.destinations.len() >= args.deployments
        {
            break (t0.elapsed(), body.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_synced, peak_synced) = controller.memory_mb()?;
    eprintln!(
        "    synced in {:.1}s, RSS {rss_synced:.1} MB",
        synced.0.as_secs_f64()
    );

    step("an Envoy with the filter (2 workers) follows the controller: its VMs' memory");
    let envoy_dir = bed.state_dir.join("logs").join("bench-fleet-envoy");
    std::fs::create_dir_all(&envoy_dir)?;
    let envoy = Standalone::start(
        &envoy_dir,
        &json!({"controller_cluster": CONTROLLER_CLUSTER, "controller_authority": addr})
            .to_string(),
        2,
        Some(addr.parse()?),
    )?;
    let t0 = Instant::now();
    let vm_first = loop {
        let memory = VmMemory::read(&envoy.log_text());
        if memory.destinations >= args.deployments {
            break memory;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!(
                "the filter in Envoy did not adopt {} destinations within 2 minutes; log: {}",
                args.deployments,
                envoy.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "    filter VM memory {} KB with {} destinations",
        vm_first.grown_kb, vm_first.destinations
    );

    step("kube-controller-manager settles the new Deployments (their ReplicaSets and status)");
    let replicasets =
        Api::<k8s_openapi::api::apps::v1::ReplicaSet>::namespaced(bed.client.clone(), name);
    let c0 = controller.cpu_seconds()?;
    let e0 = deployment_events.count.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let want = args.deployments + UNRELATED;
    loop {
        let have = replicasets
            .list_metadata(&kube::api::ListParams::default())
            .await?
            .items
            .len();
        if have >= want {
            break;
        }
        if t0.elapsed() > SETTLE_MAX {
            // A slow kube-controller-manager is not the controller's to measure: go on, and
            // say so (the phases after this one then run beside its backlog).
            eprintln!(
                "    warning: only {have} of {want} ReplicaSets after {}s: kube-controller-manager is behind; measuring anyway",
                SETTLE_MAX.as_secs()
            );
            break;
        }
        eprintln!(
            "    {have} of {want} ReplicaSets ({:.0}s)",
            t0.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    // Their status updates trail the ReplicaSets.
    let mut last = deployment_events.count.load(Ordering::Relaxed);
    while t0.elapsed() < SETTLE_MAX {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = deployment_events.count.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    let settle_secs = t0.elapsed().as_secs_f64();
    let settle_events = deployment_events.count.load(Ordering::Relaxed) - e0;
    let settle_cpu = controller.cpu_seconds()? - c0;

    step(&format!("idle for {}s", args.seconds.min(5)));
    let idle_secs = args.seconds.min(5) as f64;
    let c0 = controller.cpu_seconds()?;
    tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
    let idle_cpu = controller.cpu_seconds()? - c0;

    step(&format!(
        "unrelated changes: {}/s for {}s",
        args.unrelated_rate, args.seconds
    ));
    let e0 = deployment_events.count.load(Ordering::Relaxed);
    let c0 = controller.cpu_seconds()?;
    let t0 = Instant::now();
    let mut patches = 0u64;
    let period = Duration::from_secs_f64(1.0 / args.unrelated_rate.max(0.1));
    let mut next = tokio::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(args.seconds) {
        let d = format!("plain-{}", patches as usize % UNRELATED);
        deps.patch(
            &d,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"bench.kzscaler.io/tick": patches.to_string()}}})),
        )
        .await?;
        patches += 1;
        next += period;
        tokio::time::sleep_until(next).await;
    }
    let unrelated_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let unrelated_cpu = controller.cpu_seconds()? - c0;
    let events = deployment_events.count.load(Ordering::Relaxed) - e0;

    step(&format!(
        "{} delta sidecars (long poll) and {} full pollers connect",
        args.sidecars, args.full_pollers
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut delta_seen = Vec::new();
    let mut full_seen = Vec::new();
    for i in 0..args.sidecars + args.full_pollers {
        let seen = Arc::new(tokio::sync::Mutex::new(Seen::default()));
        let (http, base, stop) = (http.clone(), base.clone(), stop.clone());
        if i < args.sidecars {
            delta_seen.push(seen.clone());
            tasks.push(tokio::spawn(delta_sidecar(http, base, stop, seen)));
        } else {
            full_seen.push(seen.clone());
            tasks.push(tokio::spawn(full_poller(http, base, stop, seen)));
        }
        if i % 100 == 99 {
            // Staggered, as sidecars of a fleet start: not all in one instant.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let t0 = Instant::now();
    loop {
        let mut synced = 0;
        for s in delta_seen.iter().chain(&full_seen) {
            synced += usize::from(s.lock().await.synced);
        }
        if synced == delta_seen.len() + full_seen.len() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("only {synced} simulated sidecars got their first snapshot in 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("    all synced in {:.1}s", t0.elapsed().as_secs_f64());
    let c0 = controller.cpu_seconds()?;
    tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
    let connected_idle_cpu = controller.cpu_seconds()? - c0;

    step(&format!(
        "churn: {}/s wakes and sleeps for {}s",
        args.churn, args.seconds
    ));
    let c0 = controller.cpu_seconds()?;
    let own0 = kzscaler_e2e::process::cpu_seconds(std::process::id(), tick)?;
    deployment_events.recording.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let mut changes: Vec<Change> = Vec::new();
    let mut up: Vec<bool> = vec![false; args.deployments];
    let period = Duration::from_secs_f64(1.0 / args.churn.max(0.01));
    let mut next = tokio::time::Instant::now();
    let mut i = 0usize;
    while t0.elapsed() < Duration::from_secs(args.seconds) {
        // Walk the fleet with a stride, so a Deployment changes again only after the others.
        let d = (i * 7919) % args.deployments.max(1);
        i += 1;
        let want = !up[d];
        let at = Instant::now();
        deps.patch_scale(
            &format!("app-{d}"),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": i32::from(want)}})),
        )
        .await?;
        up[d] = want;
        changes.push(Change {
            deployment: format!("app-{d}"),
            cluster: format!("outbound|80||app-{d}.{name}.svc.cluster.local"),
            up: want,
            at,
        });
        next += period;
        tokio::time::sleep_until(next).await;
    }
    let churn_secs = t0.elapsed().as_secs_f64();
    // Let the last changes arrive (two full-poll periods).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let churn_cpu = controller.cpu_seconds()? - c0;
    let own_cpu = kzscaler_e2e::process::cpu_seconds(std::process::id(), tick)? - own0;
    deployment_events.recording.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in &tasks {
        t.abort();
    }
    let collect = |v: &[Arc<tokio::sync::Mutex<Seen>>]| {
        v.iter()
            .map(|s| std::mem::take(&mut *s.blocking_lock()))
            .collect::<Vec<Seen>>()
    };
    let delta_seen = tokio::task::block_in_place(|| collect(&delta_seen));
    let full_seen = tokio::task::block_in_place(|| collect(&full_seen));

    step(&format!(
        "{} activates of sleeping Deployments",
        args.activations
    ));
    let mut activate_ms = Vec::new();
    let mut activate_failed = 0;
    let mut activated = Vec::new();
    let asleep: Vec<usize> = (0..args.deployments).filter(|d| !up[*d]).collect();
    for d in asleep.iter().take(args.activations) {
        activated.push(*d);
        let body = json!({"cluster": format!("outbound|80||app-{d}.{name}.svc.cluster.local"), "deadline_ms": 30_000});
        let at = Instant::now();
        match post(&http, &format!("{base}/v1/activate"), body.to_string()).await {
            Ok((200, b)) if b.windows(7).any(|w| w == b"\"awake\"") => {
                activate_ms.push(at.elapsed().as_secs_f64() * 1000.0);
            }
            other => {
                activate_failed += 1;
                let what = match other {
                    Ok((status, b)) => format!("{status} {}", String::from_utf8_lossy(&b)),
                    Err(e) => e.to_string(),
                };
                eprintln!(
                    "    activate of app-{d} failed after {:.1}s: {what}",
                    at.elapsed().as_secs_f64()
                );
            }
        }
    }
    // Where each wake's time went, as the controller recorded it on the Deployment (written
    // once the endpoint is ready: give the last one a moment).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut wake_phases: [Vec<f64>; 3] = Default::default();
    for d in &activated {
        let dep = deps.get(&format!("app-{d}")).await?;
        let record = dep
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(kzscaler_core::names::LAST_WAKE))
            .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok());
        let Some(r) = record else { continue };
        for (i, field) in ["scale_ms", "pod_ready_ms", "endpoint_ready_ms"]
            .iter()
            .enumerate()
        {
            if let Some(ms) = r.get(field).and_then(serde_json::Value::as_f64) {
                wake_phases[i].push(ms);
            }
        }
    }
    let (rss_end, peak_end) = controller.memory_mb()?;
    let vm_end = VmMemory::read(&envoy.log_text());
    drop(envoy);
    let metrics = get(&http, &format!("{base}/metrics"), None).await?.2;
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    drop(controller.child);

    // === report ===
    let per = |seen: &[Seen]| -> (f64, f64, u64) {
        let n = seen.len().max(1) as f64;
        let bytes: u64 = seen.iter().map(|s| s.bytes).sum();
        let answers: u64 = seen.iter().map(|s| s.answers).sum();
        let errors: u64 = seen.iter().flat_map(|s| s.errors.values()).sum();
        (bytes as f64 / n, answers as f64 / n, errors)
    };
    let mut reasons: BTreeMap<&str, u64> = BTreeMap::new();
    for s in delta_seen.iter().chain(&full_seen) {
        for (r, n) in &s.errors {
            *reasons.entry(r.as_str()).or_default() += n;
        }
    }
    let watched = deployment_events
        .seen
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    let d_learned = learned(&changes, &delta_seen);
    let mut split = split_staleness(&changes, &watched, &d_learned);
    let (d_bytes, d_answers, d_errors) = per(&delta_seen);
    let (f_bytes, f_answers, f_errors) = per(&full_seen);
    let n_changes = changes.len().max(1) as f64;
    let (mut d_stale, d_missing) = staleness(&changes, &d_learned);
    let (mut f_stale, f_missing) = staleness(&changes, &learned(&changes, &full_seen));
    let pct = |cpu: f64, secs: f64| 100.0 * cpu / secs.max(1e-9);
    println!();
    println!(
        "## kzscaler-bench-fleet: {} managed Deployments, {} + {} simulated sidecars",
        args.deployments, args.sidecars, args.full_pollers
    );
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| controller RSS after the first sync | {rss_synced:.1} MB (peak {peak_synced:.1} MB) |"
    );
    println!("| controller RSS at the end | {rss_end:.1} MB (peak {peak_end:.1} MB) |");
    println!(
        "| first sync: start to all destinations served | {:.1} s (full snapshot {:.0} KB) |",
        synced.0.as_secs_f64(),
        synced.1 as f64 / 1024.0
    );
    println!(
        "| controller CPU while kube-controller-manager settles them: {settle_events} Deployment events in {settle_secs:.0} s | {:.2} % of a core; {:.3} CPU s per 1,000 events |",
        pct(settle_cpu, settle_secs),
        settle_cpu * 1000.0 / settle_events.max(1) as f64
    );
    println!(
        "| controller CPU, idle | {:.2} % of a core |",
        pct(idle_cpu, idle_secs)
    );
    println!(
        "| controller CPU, {events} events from changes to unmanaged Deployments at {:.0}/s | {:.2} % of a core; {:.3} CPU s per 1,000 events |",
        patches as f64 / unrelated_secs,
        pct(unrelated_cpu, unrelated_secs),
        unrelated_cpu * 1000.0 / events.max(1) as f64
    );
    println!(
        "| controller CPU, {} sidecars connected, nothing changing | {:.2} % of a core |",
        args.sidecars + args.full_pollers,
        pct(connected_idle_cpu, idle_secs)
    );
    println!(
        "| controller CPU, churn of {} scale changes at {:.1}/s with the sidecars | {:.2} % of a core |",
        changes.len(),
        changes.len() as f64 / churn_secs,
        pct(churn_cpu, churn_secs + 3.0)
    );
    for (what, p) in [
        ("apply one event", "apply"),
        ("publish a version", "publish"),
    ] {
        println!(
            "| controller: {what}, p99 (from its histogram) | {} |",
            histogram_p99(&metrics, p)
                .map_or("n/a".to_owned(), |s| format!("≤ {:.2} ms", s * 1000.0))
        );
    }
    // The sleeper looks at what changed, is due or drains; a pass over everything four times
    // a second would be 4 × N per second.
    let looks: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kzscaler_sleeper_looks_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN);
    let run_secs = run_started.elapsed().as_secs_f64();
    println!(
        "| controller: Deployments the sleeper looked at, whole run | {looks:.0} ({:.1}/s; a pass over all 4×/s would be {:.0}/s) |",
        looks / run_secs.max(1e-9),
        4.0 * args.deployments as f64
    );
    println!(
        "| filter VM memory in Envoy (largest VM of 2 workers and the main thread) | {} KB configured; {} KB after the first snapshot of {} destinations; {} KB at the end |",
        vm_first.configured_kb, vm_first.grown_kb, vm_first.destinations, vm_end.grown_kb
    );
    println!();
    println!("| per sidecar | delta long poll | full poll (v1, 1/s) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| bytes received per scale change | {:.0} | {:.0} | {:.0}× |",
        d_bytes / n_changes,
        f_bytes / n_changes,
        (f_bytes / n_changes) / (d_bytes / n_changes).max(1.0)
    );
    println!(
        "| answers with content per scale change | {:.2} | {:.2} | |",
        d_answers / n_changes,
        f_answers / n_changes
    );
    println!(
        "| staleness p50 / p99 (PATCH → sidecar knows) | {:.0} / {:.0} ms | {:.0} / {:.0} ms | |",
        percentile(&mut d_stale, 0.5),
        percentile(&mut d_stale, 0.99),
        percentile(&mut f_stale, 0.5),
        percentile(&mut f_stale, 0.99)
    );
    println!(
        "| changes never learned / errors | {d_missing} / {d_errors} | {f_missing} / {f_errors} | |"
    );
    for (reason, n) in &reasons {
        println!("| error: {reason} | {n} | | |");
    }
    println!();
    println!(
        "| staleness of the delta long polls, where it goes ({} changes) | p50 | p99 |",
        changes.len()
    );
    println!("|---|---|---|");
    for (part, v) in [
        (
            "API server: PATCH → a watch event with the new replicas",
            &mut split.api,
        ),
        (
            "controller: that event → the first sidecar knows",
            &mut split.controller,
        ),
        (
            "fan-out: the first sidecar → each other one",
            &mut split.fan_out,
        ),
    ] {
        println!(
            "| {part} | {:.0} ms | {:.0} ms |",
            percentile(v, 0.5),
            percentile(v, 0.99)
        );
    }
    println!(
        "| (this benchmark's own CPU during the churn, {} sidecars in one process) | {:.0} % of a core | |",
        args.sidecars + args.full_pollers,
        pct(own_cpu, churn_secs + 3.0)
    );
    println!();
    println!("| activate (a sleeping Deployment to a ready endpoint) | p50 | p99 | failed |");
    println!("|---|---|---|---|");
    println!(
        "| {} activates, one at a time | {:.0} ms | {:.0} ms | {activate_failed} |",
        activate_ms.len() + activate_failed,
        percentile(&mut activate_ms.clone(), 0.5),
        percentile(&mut activate_ms, 0.99),
    );
    println!();
    println!(
        "| wake phases as the controller recorded them (kzscaler.io/last-wake), from the first activate | p50 | max | wakes |"
    );
    println!("|---|---|---|---|");
    for (name, v) in [
        "scale PATCH returned",
        "a pod ready (kube-controller-manager, scheduler, kwok)",
        "a ready endpoint (EndpointSlice controller) and the watch",
    ]
    .iter()
    .zip(wake_phases.iter_mut())
    {
        let n = v.len();
        println!(
            "| {name} | {:.0} ms | {:.0} ms | {n} |",
            percentile(&mut v.clone(), 0.5),
            percentile(v, 1.0)
        );
    }
    Ok(())
}

/// What the filter's VMs logged of their memory (the largest VM).
#[derive(Debug, Default)]
struct VmMemory {
    /// When configured, before any table.
    configured_kb: u64,
    /// The last growth logged, and the destinations then.
    grown_kb: u64,
    destinations: usize,
}

impl VmMemory {
    fn read(log: &str) -> Self {
        let number_after = |line: &str, key: &str| -> Option<u64> {
            let at = line.find(key)? + key.len();
            line[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        };
        let mut m = Self::default();
        for line in log.lines() {
            if let Some(kb) = number_after(line, "kzscaler filter configured (VM memory ") {
                m.configured_kb = m.configured_kb.max(kb);
            }
            if let Some(kb) = number_after(line, "this VM's memory grew to ")
                && kb >= m.grown_kb
            {
                m.grown_kb = kb;
                let n = number_after(line, " KB, with ").unwrap_or(0);
                m.destinations = m.destinations.max(usize::try_from(n).unwrap_or(0));
            }
        }
        m
    }
}

/// The upper bound of the bucket holding the 99th percentile of
/// `kzscaler_index_update_seconds{step=...}`.
fn histogram_p99(metrics: &str, step: &str) -> Option<f64> {
    let prefix = "kzscaler_index_update_seconds_bucket{";
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(prefix) && l.contains(&format!("step=\"{step}\"")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    buckets
        .iter()
        .find(|(_, c)| *c >= total * 0.99)
        .map(|(le, _)| *le)
}
