//! What the filter's table of N destinations (default 10,000) costs in memory: builds the
//! snapshot the controller would serve, parses it as the filter does, and prints the growth of
//! this process's resident memory, and its peak while parsing (the body, the table and what
//! parsing holds, at once).
//! Native pointers and `String`s are twice the size of wasm32's, so this is an upper bound of
//! what the table takes in the Wasm VM's linear memory.
//! `cargo run --release -p kzscaler-filter --example table_memory -- 10000`.
//!
//! Built for `wasm32-wasip1` (the filter's target and allocator) it reports the linear memory
//! instead, which never shrinks; `hack/table-memory.sh` runs both, the Wasm one in wasmtime.

use kzscaler_core::wire::{Destination, State};
use kzscaler_filter::table::Table;

/// The size of the Wasm VM's linear memory, in KB, as both "resident" and "peak" (it only
/// grows).
#[cfg(target_arch = "wasm32")]
fn memory_kb() -> (u64, u64) {
    let kb = (core::arch::wasm32::memory_size::<0>() * 64) as u64;
    (kb, kb)
}

/// `VmRSS` and `VmHWM` of this process, in KB.
#[cfg(not(target_arch = "wasm32"))]
fn memory_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let ns = "kzscaler-fleet-12345";
    // Written as the controller serializes it, one destination at a time: nothing larger than
    // the body is ever held, so the peak below is the parse's.
    // One allocation, as the filter gets the body from Envoy: a buffer that doubled as it grew
    // would leave holes the table then fills, and the figures would flatter it.
    let mut body = Vec::with_capacity(n * 200 + 128);
    body.extend_from_slice(
        br#"{"version":1764000000000000,"term":1764000000000000,"destinations":["#,
    );
    for i in 0..n {
        if i > 0 {
            body.push(b',');
        }
        let d = Destination {
            cluster: format!("outbound|80||app-{i}.{ns}.svc.cluster.local"),
            namespace: ns.to_owned(),
            service: format!("app-{i}"),
            deployment: format!("app-{i}"),
            state: State::Asleep,
            wake_timeout_ms: 60_000,
            ignore_paths: Vec::new(),
        };
        if serde_json::to_writer(&mut body, &d).is_err() {
            eprintln!("could not write destination {i}");
            std::process::exit(1);
        }
    }
    body.extend_from_slice(b"]}");
    let (rss_before, _) = memory_kb();
    let started = std::time::Instant::now();
    let table = match Table::parse(&body, None) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("the snapshot did not parse: {e}");
            std::process::exit(1);
        }
    };
    let parse_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (rss_parsed, peak) = memory_kb();
    let body_kb = body.len() / 1024;
    drop(body);
    let (rss_kept, _) = memory_kb();
    let present = (0..n)
        .filter(|i| {
            table
                .get(&format!("outbound|80||app-{i}.{ns}.svc.cluster.local"))
                .is_some()
        })
        .count();
    let build = if cfg!(target_arch = "wasm32") {
        "wasm32: linear memory"
    } else {
        "native: RSS"
    };
    println!(
        "| build | destinations | snapshot body | table kept (growth, body dropped) | per destination | peak while parsing (growth, body included) | total at the end |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {build} | {present} of {n} | {body_kb} KB | {:.1} MB | {:.0} B | {:.1} MB | {:.1} MB |",
        rss_kept.saturating_sub(rss_before) as f64 / 1024.0,
        rss_kept.saturating_sub(rss_before) as f64 * 1024.0 / n.max(1) as f64,
        // The body is in the VM too: the HTTP call's answer is copied into it.
        peak.max(rss_parsed).saturating_sub(rss_before) as f64 / 1024.0 + body_kb as f64 / 1024.0,
        rss_kept as f64 / 1024.0,
    );
    eprintln!("parsed in {parse_ms:.1} ms");
}
