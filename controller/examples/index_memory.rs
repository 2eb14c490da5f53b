//! What the index and the cache keep per managed Deployment (with its Service and
//! EndpointSlice), and what applying them costs: builds them for N (default 10,000) and
//! prints the growth of this process's resident memory and the CPU time, step by step. `cargo run --release -p kzscaler-controller --example
//! index_memory -- 10000`.

use kzscaler_controller::cache::{Cache, Index};
use serde_json::json;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let ns = "kzscaler-fleet-12345";
    let before = rss_kb();
    let mut index = Index::new("cluster.local", None);
    let mut marks = Vec::new();
    for kind in ["Deployments", "Services", "EndpointSlices"] {
        let at = rss_kb();
        let started = std::time::Instant::now();
        for i in 0..n {
            let name = format!("app-{i}");
            match kind {
                "Deployments" => index.apply_deployment(
                    &serde_json::from_value(json!({
                        "metadata": {"namespace": ns, "name": name, "resourceVersion": "123456",
                            "uid": format!("{i:08x}-aaaa-bbbb-cccc-dddddddddddd"),
                            "annotations": {"kzscaler.io/scale-to-zero": "true", "kzscaler.io/idle-timeout": "1h"}},
                        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                                 "template": {"metadata": {"labels": {"app": name}}}},
                    }))
                    .unwrap_or_default(),
                ),
                "Services" => index.apply_service(
                    &serde_json::from_value(json!({
                        "metadata": {"namespace": ns, "name": name},
                        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "name": "http"}]}
                    }))
                    .unwrap_or_default(),
                ),
                _ => index.apply_slice(
                    &serde_json::from_value(json!({
                        "metadata": {"namespace": ns, "name": format!("{name}-abcde"),
                                     "labels": {"kubernetes.io/service-name": name}},
                        "addressType": "IPv4", "endpoints": []
                    }))
                    .unwrap_or_default(),
                ),
            }
        }
        marks.push((kind, rss_kb().saturating_sub(at), started.elapsed()));
    }
    let indexed = rss_kb();
    let cache = Cache::new(index, 1);
    let published = rss_kb();
    let (bytes, _) = cache.encoded();
    let encoded = rss_kb();
    println!("| kept for {n} managed Deployments | KB | bytes each | µs per object applied |");
    println!("|---|---|---|---|");
    for (kind, kb, took) in marks {
        println!(
            "| index: {kind} | {kb} | {:.0} | {:.1} |",
            kb as f64 * 1024.0 / n as f64,
            took.as_secs_f64() * 1e6 / n as f64
        );
    }
    let total = indexed.saturating_sub(before);
    println!(
        "| index in all | {total} | {:.0} | |",
        total as f64 * 1024.0 / n as f64
    );
    let p = published.saturating_sub(indexed);
    println!(
        "| published snapshot and log of changes | {p} | {:.0} | |",
        p as f64 * 1024.0 / n as f64
    );
    println!(
        "| the full snapshot encoded ({} bytes) | {} | | |",
        bytes.len(),
        encoded.saturating_sub(published)
    );
}
