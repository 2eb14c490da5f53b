//! A sustained stream of requests to a sleeping Deployment whose pods cannot start for a
//! while, through a caller's sidecar whose DestinationRule limits the connection pool to 100:
//! every request is answered before its deadline, every one with 200. Held requests are let
//! go at the pace the destination answers them, not as one burst that Envoy's circuit
//! breakers would refuse with "503 ... reset reason: overflow"; and a steady stream of held
//! requests does not keep the filter's tick from firing.
//!
//! `KZSCALER_E2E_BURST_RPS` (default 1000) and `KZSCALER_E2E_BURST_SECS` (default 10) set the
//! stream; `KZSCALER_E2E_BURST_START_AFTER_MS` (default 3000) when the pods may start.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use kzscaler_core::wire::State;
use kzscaler_e2e::kz::{cluster, create_istio, create_managed, set_schedulable, wait_filter_sees};
use kzscaler_e2e::namespace::TempNamespace;
use kzscaler_e2e::testbed::TestBed;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn setting(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?}: expected a whole number")),
        Err(_) => Ok(default),
    }
}

/// One request on a connection of its own; the status, or what went wrong.
async fn one(envoy: String, host: String, path: String, deadline: Duration) -> String {
    let attempt = async {
        let mut tcp = tokio::net::TcpStream::connect(&envoy).await?;
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await?;
        anyhow::Ok(answer)
    };
    match tokio::time::timeout(deadline, attempt).await {
        Err(_) => "no answer before the deadline".to_owned(),
        Ok(Err(e)) => format!("error: {e}"),
        Ok(Ok(answer)) => {
            let text = String::from_utf8_lossy(&answer);
            let status = text.split(' ').nth(1).unwrap_or("?").to_owned();
            if status == "200" {
                status
            } else {
                // Keep what Envoy or the filter said (overflow, no healthy upstream, ...).
                let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
                format!("{status} {}", body.chars().take(100).collect::<String>())
            }
        }
    }
}

#[tokio::test]
async fn a_sustained_stream_to_a_late_waking_service_is_answered_in_full_within_its_connection_pool()
-> anyhow::Result<()> {
    let rate = setting("KZSCALER_E2E_BURST_RPS", 1_000)?.max(1);
    let secs = setting("KZSCALER_E2E_BURST_SECS", 10)?.max(1);
    let start_after = Duration::from_millis(setting("KZSCALER_E2E_BURST_START_AFTER_MS", 3_000)?);
    let deadline = Duration::from_secs(30);
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "burst", &[]).await?;
    create_managed(&ns, "web", 0, &[]).await?;
    set_schedulable(&ns.api::<Deployment>(), "web", false).await?;
    let fqdn = format!("web.{}.svc.cluster.local", ns.name);
    create_istio(
        &ns,
        "DestinationRule",
        "web",
        json!({"host": fqdn, "trafficPolicy": {"connectionPool": {
            "tcp": {"maxConnections": 100},
            "http": {"http1MaxPendingRequests": 100, "http2MaxRequests": 100}}}}),
    )
    .await?;
    let web = cluster(&ns.name, "web", 80);
    // The caller's Envoy has the connection pool's limits.
    let admin = bed
        .envoy_admin
        .clone()
        .context("KZSCALER_ENVOY_ADMIN is not set: is the test bed up (hack/local-up.sh)?")?;
    let limit = format!("{web}::default_priority::max_connections::100");
    ns.wait_for(
        "the caller's Envoy to have the DestinationRule's connection pool",
        Duration::from_secs(30),
        || async {
            let r = bed
                .get_from(&admin, "admin", "/clusters", Duration::from_secs(5))
                .await?;
            Ok(r.body.contains(&limit).then_some(()))
        },
    )
    .await?;
    wait_filter_sees(
        &ns,
        &bed.controller.clone().context("no controller")?,
        &web,
        State::Asleep,
    )
    .await?;

    let host = format!("web.{}", ns.name);
    let total = rate * secs;
    let start = Instant::now();
    let schedulable = {
        let deployments = ns.api::<Deployment>();
        tokio::spawn(async move {
            tokio::time::sleep(start_after).await;
            set_schedulable(&deployments, "web", true).await
        })
    };
    let mut tasks = Vec::with_capacity(usize::try_from(total)?);
    for i in 0..total {
        // Open loop: request i leaves at i / rate, whatever the others are doing.
        tokio::time::sleep_until((start + Duration::from_micros(i * 1_000_000 / rate)).into())
            .await;
        let (envoy, host) = (bed.envoy.clone(), host.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let status = one(envoy, host, format!("/r{i}"), deadline).await;
            (status, sent.duration_since(start), sent.elapsed())
        }));
    }
    let sent_in = start.elapsed();
    schedulable.await??;
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    let mut failed = Vec::new();
    for t in tasks {
        let (status, sent_at, took) = t.await?;
        if status != "200" && failed.len() < 10 {
            failed.push(format!(
                "sent at {} ms, answered after {} ms: {status}",
                sent_at.as_millis(),
                took.as_millis()
            ));
        }
        *statuses.entry(status).or_default() += 1;
        slowest = slowest.max(took);
    }
    for f in &failed {
        eprintln!("[e2e]   {f}");
    }
    eprintln!(
        "[e2e] {total} requests sent in {:.1} s (target {rate}/s for {secs} s), pods schedulable after {start_after:?}: {statuses:?}, slowest {} ms",
        sent_in.as_secs_f64(),
        slowest.as_millis()
    );
    assert_eq!(
        statuses.get("200").copied(),
        Some(usize::try_from(total)?),
        "every request answered with 200 before its {deadline:?} deadline: {statuses:?}"
    );
    ns.cleanup().await
}
