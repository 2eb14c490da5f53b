//! `kzscaler-bench`: the filter's cost on the warm path, and the cold path's overhead, measured
//! side by side in one run on the test bed (`hack/bench.sh` starts it and builds the modules).
//!
//! Warm path: three caller pods' sidecars (pilot-agent and Envoy, configured by istiod: same
//! binary, same routes, same backend) differ only in their Wasm filter, which reaches them from
//! a WasmPlugin through ECDS: none, a no-op Wasm filter, and the kzscaler filter with the
//! destination awake in its snapshot. Each is loaded in turn, rounds interleaved to spread the machine's
//! noise (each round starting with another setup), at 1 and 32 connections; throughput and
//! p50/p99 latency are printed with ratios, and the spread of the per-round throughput ratios.
//!
//! Cold path: the Deployment is scaled to 0, a request is held by the kzscaler filter, and the
//! time from the woken endpoint becoming visible in this Envoy (its admin `/clusters`, polled
//! every millisecond) to the held request's response is measured, and the whole wake as the
//! caller sees it (istiod's push included).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kzscaler_core::wire::State;
use kzscaler_e2e::fixtures::service;
use kzscaler_e2e::kz::{
    Filter, PrivateMesh, Setup, cluster, healthy_hosts, managed_deployment, wait_filter_sees,
};
use kzscaler_e2e::namespace::TempNamespace;
use kzscaler_e2e::testbed::{TestBed, filter_module};
use serde_json::json;

/// Measures the kzscaler filter against no filter and a no-op Wasm filter, in one run.
#[derive(Debug, Parser)]
#[command(version = kzscaler_core::VERSION)]
struct Args {
    /// Seconds of load per setup, per round.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds (setups are interleaved within a round).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Connection counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    connections: Vec<usize>,
    /// Cold-path wakes to measure (0: only the warm path).
    #[arg(long, default_value_t = 15)]
    wakes: u32,
    /// The no-op module (cargo build -p kzscaler-filter --example noop --target wasm32-wasip1 --profile wasm).
    #[arg(long)]
    noop: Option<PathBuf>,
}

#[derive(Debug, Default, Clone)]
struct Stats {
    requests: u64,
    errors: u64,
    seconds: f64,
    latencies_us: Vec<u32>,
    /// CPU seconds (user + system) the setup's Envoy spent meanwhile.
    envoy_cpu: f64,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.seconds += other.seconds;
        self.latencies_us.extend(other.latencies_us);
        self.envoy_cpu += other.envoy_cpu;
    }
    /// Envoy CPU µs per answered request.
    fn cpu_us_per_request(&self) -> f64 {
        self.envoy_cpu * 1e6 / (self.requests + self.errors).max(1) as f64
    }
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1e-9)
    }
    fn percentile_us(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        f64::from(self.latencies_us[i])
    }
}

/// Closed-loop load: `conns` keep-alive HTTP/1.1 connections, each sending the next request
/// when the previous answer is in, for `secs` seconds.
async fn load(addr: &str, host: &str, conns: usize, secs: f64) -> anyhow::Result<Stats> {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (addr, host) = (addr.to_owned(), host.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut s = Stats::default();
            let stream = tokio::net::TcpStream::connect(&addr).await?;
            stream.set_nodelay(true)?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            while Instant::now() < until {
                let req = http::Request::get("/")
                    .header("host", &host)
                    .body(Empty::<Bytes>::new())?;
                let t = Instant::now();
                let resp = send.send_request(req).await?;
                let ok = resp.status() == 200;
                resp.into_body().collect().await?;
                s.latencies_us
                    .push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                if ok {
                    s.requests += 1;
                } else {
                    s.errors += 1;
                }
            }
            anyhow::Ok(s)
        }));
    }
    let mut total = Stats {
        seconds: secs,
        ..Default::default()
    };
    for t in tasks {
        let s = t.await??;
        total.requests += s.requests;
        total.errors += s.errors;
        total.latencies_us.extend(s.latencies_us);
    }
    Ok(total)
}

/// The log of a private mesh's caller: pilot-agent's, with its Envoy's (the filter's lines
/// at info level).
fn caller_log(bed: &TestBed, mesh: &PrivateMesh) -> PathBuf {
    bed.state_dir
        .join("kubelet")
        .join(&mesh.namespace)
        .join("caller")
        .join("pilot-agent.log")
}

/// When the filter logged `what` about `cluster` at or after `since`: Envoy's lines start
/// with an RFC 3339 time.
fn logged_at(log: &str, cluster: &str, what: &str, since: Timestamp) -> Option<Timestamp> {
    log.lines()
        .filter(|l| l.contains(cluster) && l.contains(what))
        .filter_map(|l| l.split_whitespace().next()?.parse::<Timestamp>().ok())
        .find(|t| *t >= since)
}

/// The Envoy a private mesh's caller runs: in its pilot-agent's process group (the kubelet
/// writes the group id in the pod's folder).
fn envoy_pid(bed: &TestBed, mesh: &PrivateMesh) -> anyhow::Result<i32> {
    let file = bed
        .state_dir
        .join("kubelet")
        .join(&mesh.namespace)
        .join("caller")
        .join("pilot-agent.pgid");
    let pgid: i32 = std::fs::read_to_string(&file)
        .with_context(|| format!("reading {}", file.display()))?
        .trim()
        .parse()?;
    for entry in std::fs::read_dir("/proc")? {
        let Ok(pid) = entry?.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        // Fields after the command: state, ppid, pgrp.
        if head.ends_with("(envoy") && rest.split_whitespace().nth(2) == Some(&pgid.to_string()) {
            return Ok(pid);
        }
    }
    anyhow::bail!("no envoy process in process group {pgid}")
}

/// Pins a process (0: this one) to one CPU, so Envoy and the load generator do not share
/// one; best effort.
fn pin(pid: i32, cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid), &set);
    }
}

/// Median, minimum and maximum (NaN for none).
fn spread(v: &mut [f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bed = TestBed::connect().await?;
    let noop = match args.noop {
        Some(p) => p,
        None => filter_module()?
            .parent()
            .map(|p| p.join("examples/noop.wasm"))
            .context("no folder for the no-op module")?,
    };
    anyhow::ensure!(
        noop.is_file(),
        "{} not found: cargo build -p kzscaler-filter --example noop --target wasm32-wasip1 --profile wasm",
        noop.display()
    );

    let ns = TempNamespace::create(&bed, "bench", &[]).await?;
    ns.api::<Service>()
        .create(&PostParams::default(), &service("web", "web", 80, "http"))
        .await?;
    ns.api::<Deployment>()
        .create(&PostParams::default(), &managed_deployment("web", 1, "30s"))
        .await?;
    let host = format!("web.{}", ns.name);
    let web = cluster(&ns.name, "web", 80);

    eprintln!("starting three Envoys: no filter, no-op Wasm filter, kzscaler filter");
    let setups = [
        (
            "no filter",
            PrivateMesh::start_with(&bed, &format!("{}-none", ns.name), Filter::None).await?,
        ),
        (
            "no-op wasm",
            PrivateMesh::start_with(
                &bed,
                &format!("{}-noop", ns.name),
                Filter::Module(noop, "{}".into()),
            )
            .await?,
        ),
        (
            "kzscaler",
            PrivateMesh::start_setup(
                &bed,
                &format!("{}-kz", ns.name),
                Setup {
                    namespace: Some(ns.name.clone()),
                    ..Setup::kzscaler()?
                },
            )
            .await?,
        ),
    ];
    let tick: f64 = kzscaler_e2e::process::clock_ticks()?;
    // Envoy on CPU 0, the load generator (this process) on CPU 1: CPU time per request is
    // the measure, and the two must not take each other's.
    let mut pids = Vec::new();
    for (_, mesh) in &setups {
        let pid = envoy_pid(&bed, mesh)?;
        pin(pid, 0);
        pids.push(pid);
    }
    pin(0, 1);
    let kz_ctl = setups[2].1.controller_addr.to_string();
    wait_filter_sees(&ns, &kz_ctl, &web, State::Awake).await?;
    for (name, mesh) in &setups {
        ns.wait_for(
            &format!("{name}: 200 through Envoy"),
            Duration::from_secs(30),
            || async {
                let r = bed
                    .get_from(&mesh.envoy, &host, "/", Duration::from_secs(2))
                    .await?;
                Ok((r.status == 200).then_some(()))
            },
        )
        .await?;
        load(&mesh.envoy, &host, 4, 0.5).await?; // warm-up
    }

    println!(
        "\n## Warm path: {} rounds x {}s per setup, Envoy --concurrency 1, one run, interleaved\n",
        args.rounds, args.seconds
    );
    println!(
        "| connections | setup | req/s | p50 µs | p99 µs | errors | Envoy CPU µs/request | vs no-op | req/s vs no-op | per round: median (min–max) | p50 vs no-op | p99 vs no-op |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &conns in &args.connections {
        let mut results: Vec<Stats> = vec![Stats::default(); setups.len()];
        // Per round, each setup's throughput over the no-op's in the same round: their spread
        // shows how much of a difference this machine's noise can make.
        let mut round_ratios: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
        for round in 0..args.rounds as usize {
            // Each round starts with another setup, so none always follows the same one.
            let mut rps = vec![0.0; setups.len()];
            for k in 0..setups.len() {
                let i = (round + k) % setups.len();
                let before = kzscaler_e2e::process::cpu_seconds(u32::try_from(pids[i])?, tick)?;
                let mut s = load(&setups[i].1.envoy, &host, conns, args.seconds).await?;
                s.envoy_cpu =
                    kzscaler_e2e::process::cpu_seconds(u32::try_from(pids[i])?, tick)? - before;
                rps[i] = s.rps();
                results[i].merge(s);
            }
            for (i, r) in rps.iter().enumerate() {
                round_ratios[i].push(r / rps[1].max(1e-9));
            }
        }
        let (noop_rps, noop_p50, noop_p99, noop_cpu) = {
            let n = &mut results[1];
            (
                n.rps(),
                n.percentile_us(0.5),
                n.percentile_us(0.99),
                n.cpu_us_per_request(),
            )
        };
        for (i, (name, _)) in setups.iter().enumerate() {
            let r = &mut results[i];
            let (rps, p50, p99) = (r.rps(), r.percentile_us(0.5), r.percentile_us(0.99));
            let (median, min, max) = spread(&mut round_ratios[i]);
            let cpu = r.cpu_us_per_request();
            println!(
                "| {conns} | {name} | {rps:.0} | {p50:.0} | {p99:.0} | {} | {cpu:.1} | {:+.1} | {:.3} | {median:.3} ({min:.3}–{max:.3}) | {:.3} | {:.3} |",
                r.errors,
                cpu - noop_cpu,
                rps / noop_rps,
                p50 / noop_p50,
                p99 / noop_p99
            );
        }
    }

    if args.wakes == 0 {
        drop(setups);
        return ns.cleanup().await;
    }
    println!(
        "\n## Cold path: woken endpoint visible in this Envoy → held request's response ({} wakes)\n",
        args.wakes
    );
    let kz = &setups[2].1;
    let log_file = caller_log(&bed, kz);
    let mut overhead_ms = Vec::new();
    let mut total_ms = Vec::new();
    // endpoint visible → filter sees it → resumed → response, per wake.
    let mut phases: [Vec<f64>; 3] = Default::default();
    let mut unphased = 0;
    for i in 0..args.wakes {
        ns.api::<Deployment>()
            .patch_scale(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 0}})),
            )
            .await?;
        ns.wait_for(
            "the endpoint to leave Envoy",
            Duration::from_secs(30),
            || async {
                Ok(healthy_hosts(&bed, &kz.admin, &web)
                    .await?
                    .is_empty()
                    .then_some(()))
            },
        )
        .await?;
        wait_filter_sees(&ns, &kz_ctl, &web, State::Asleep).await?;
        // Watch /clusters while the request is held: when did the endpoint reach this Envoy?
        let watcher = {
            let (bed, admin, web) = (bed.clone(), kz.admin.clone(), web.clone());
            tokio::spawn(async move {
                let until = Instant::now() + Duration::from_secs(30);
                while Instant::now() < until {
                    if healthy_hosts(&bed, &admin, &web)
                        .await
                        .is_ok_and(|h| !h.is_empty())
                    {
                        return Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                None
            })
        };
        let start = Instant::now();
        let since = Timestamp::now();
        let r = bed
            .get_from(
                &kz.envoy,
                &host,
                &format!("/wake{i}"),
                Duration::from_secs(30),
            )
            .await?;
        let done = Instant::now();
        let done_wall = Timestamp::now();
        anyhow::ensure!(r.status == 200, "wake {i}: {} {}", r.status, r.body);
        let visible = watcher
            .await?
            .context("the endpoint never showed in the caller's /clusters")?;
        overhead_ms.push(done.saturating_duration_since(visible).as_secs_f64() * 1000.0);
        total_ms.push(done.duration_since(start).as_secs_f64() * 1000.0);
        // The same instants on the wall clock, where Envoy's log lines are.
        let visible_wall = done_wall
            .checked_sub(k8s_openapi::jiff::SignedDuration::try_from(
                done.saturating_duration_since(visible),
            )?)
            .unwrap_or(done_wall);
        let mut seen_resumed = None;
        for _ in 0..40 {
            let log = std::fs::read_to_string(&log_file).unwrap_or_default();
            let seen = logged_at(&log, &web, "endpoint seen in this Envoy", since);
            let resumed = logged_at(&log, &web, "resuming held requests", since);
            if let (Some(s), Some(r)) = (seen, resumed) {
                seen_resumed = Some((s, r));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ms = |a: Timestamp, b: Timestamp| b.duration_since(a).as_secs_f64() * 1000.0;
        match seen_resumed {
            Some((seen, resumed)) => {
                phases[0].push(ms(visible_wall, seen));
                phases[1].push(ms(seen, resumed));
                phases[2].push(ms(resumed, done_wall));
            }
            None => unphased += 1,
        }
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p).round() as usize]
    };
    println!("| measure | p50 ms | p90 ms | max ms |");
    println!("|---|---|---|---|");
    println!(
        "| endpoint visible in this Envoy → response | {:.1} | {:.1} | {:.1} |",
        pct(&mut overhead_ms, 0.5),
        pct(&mut overhead_ms, 0.9),
        pct(&mut overhead_ms, 1.0)
    );
    println!(
        "| whole wake as the caller sees it (istiod's push included) | {:.1} | {:.1} | {:.1} |",
        pct(&mut total_ms, 0.5),
        pct(&mut total_ms, 0.9),
        pct(&mut total_ms, 1.0)
    );
    if phases[0].is_empty() {
        println!(
            "\nNo phases: the filter's lines were not in {}",
            log_file.display()
        );
    } else {
        println!(
            "\nThe first row in phases ({} wakes; {unphased} without the filter's lines), from the \
             filter's own log lines (Envoy's clock, 1 ms resolution: a phase can read -1 ms):\n",
            phases[0].len()
        );
        println!("| phase | p50 ms | p90 ms | max ms |");
        println!("|---|---|---|---|");
        let names = [
            "endpoint visible in /clusters → the filter sees it (a hold tick)",
            "seen → resumed (settle: 2 sightings and 20 ms, against 503s)",
            "resumed → response (routing, the backend, the answer)",
        ];
        for (name, v) in names.iter().zip(phases.iter_mut()) {
            println!(
                "| {name} | {:.1} | {:.1} | {:.1} |",
                pct(v, 0.5),
                pct(v, 0.9),
                pct(v, 1.0)
            );
        }
    }
    drop(setups);
    ns.cleanup().await
}
