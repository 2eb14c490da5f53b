//! Sleep when idle, on the test bed: real controller, real filter counting activity in the
//! caller's sidecar. Idle timeouts are seconds here.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::PostParams;
use kzscaler_core::wire::State;
use kzscaler_e2e::fixtures::service;
use kzscaler_e2e::kz::{
    PrivateMesh, annotations, cluster, create_ingress_sidecar, create_managed, free_port,
    managed_deployment, replicas, wait_filter_sees, with_inbound_sidecar,
};
use kzscaler_e2e::namespace::TempNamespace;
use kzscaler_e2e::testbed::TestBed;

const REQ: Duration = Duration::from_secs(30);

async fn managed(
    ns: &TempNamespace,
    name: &str,
    idle: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut all = vec![("kzscaler.io/idle-timeout", idle)];
    all.extend_from_slice(extra);
    create_managed(ns, name, 1, &all).await?;
    let controller = ns.bed.controller.clone().unwrap_or_default();
    wait_filter_sees(ns, &controller, &cluster(&ns.name, name, 80), State::Awake).await
}

#[tokio::test]
async fn idle_deployment_sleeps_within_idle_timeout_plus_10s_and_wakes_back() -> anyhow::Result<()>
{
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "idle", &[]).await?;
    managed(&ns, "web", "3s", &[]).await?;
    ns.wait_for(
        "the idle Deployment to be scaled to 0",
        Duration::from_secs(13),
        || async { Ok((replicas(&ns, "web").await? == 0).then_some(())) },
    )
    .await?;
    let a = annotations(&ns, "web").await?;
    assert_eq!(
        a.get("kzscaler.io/state").map(String::as_str),
        Some("asleep"),
        "{a:?}"
    );
    assert_eq!(
        a.get("kzscaler.io/replicas-before-sleep")
            .map(String::as_str),
        Some("1")
    );
    assert!(a.contains_key("kzscaler.io/slept-at"), "{a:?}");

    let controller = bed.controller.clone().unwrap_or_default();
    wait_filter_sees(
        &ns,
        &controller,
        &cluster(&ns.name, "web", 80),
        State::Asleep,
    )
    .await?;
    let r = bed.get(&format!("web.{}", ns.name), "/", REQ).await?;
    if r.status != 200 {
        anyhow::bail!(
            "the waking request got {} {:?} {}\n{}",
            r.status,
            r.headers,
            r.body,
            ns.dump().await
        );
    }
    assert_eq!(
        replicas(&ns, "web").await?,
        1,
        "woken to the count before sleep"
    );
    ns.cleanup().await
}

#[tokio::test]
async fn a_request_every_second_keeps_it_awake() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "busy", &[]).await?;
    managed(&ns, "web", "3s", &[]).await?;
    for i in 0..8 {
        let r = bed
            .get(&format!("web.{}", ns.name), &format!("/{i}"), REQ)
            .await?;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(replicas(&ns, "web").await?, 1);
    let a = annotations(&ns, "web").await?;
    assert!(!a.contains_key("kzscaler.io/slept-at"), "it never slept");
    assert!(
        !a.contains_key("kzscaler.io/last-request"),
        "no API write follows traffic: {a:?}"
    );
    let last = k8s_openapi::jiff::Timestamp::now();
    // Idle now: the sleep records when the last request was.
    ns.wait_for("web to fall asleep", Duration::from_secs(15), || async {
        Ok((replicas(&ns, "web").await? == 0).then_some(()))
    })
    .await?;
    let a = annotations(&ns, "web").await?;
    let recorded: k8s_openapi::jiff::Timestamp = a
        .get("kzscaler.io/last-request")
        .ok_or_else(|| anyhow::anyhow!("no kzscaler.io/last-request after the sleep: {a:?}"))?
        .parse()?;
    let off = (recorded.as_millisecond() - last.as_millisecond()).abs();
    assert!(
        off < 3_000,
        "the record is the last request's time: {recorded} vs about {last}"
    );
    ns.cleanup().await
}

#[tokio::test]
async fn a_long_in_flight_request_keeps_it_awake() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "stream", &[]).await?;
    managed(&ns, "web", "2s", &[]).await?;
    // One request streaming for about 7 s, more than three idle timeouts.
    let r = bed
        .get(
            &format!("web.{}", ns.name),
            "/?stream=8&interval_ms=1000",
            REQ,
        )
        .await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.lines().count(), 8, "the whole stream arrived");
    assert!(
        !annotations(&ns, "web")
            .await?
            .contains_key("kzscaler.io/slept-at"),
        "it never slept while the stream ran"
    );
    ns.cleanup().await
}

#[tokio::test]
async fn probe_and_ignored_path_traffic_alone_lets_it_sleep() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "probes", &[]).await?;
    managed(
        &ns,
        "web",
        "3s",
        &[("kzscaler.io/ignore-paths", "/healthz,/metrics")],
    )
    .await?;
    let host = format!("web.{}", ns.name);
    let start = Instant::now();
    let mut sent = 0;
    // kube-probe user agents and ignored paths, every 300 ms, until it has slept.
    while !annotations(&ns, "web")
        .await?
        .contains_key("kzscaler.io/slept-at")
    {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(15),
            "still awake after 15 s of health-check traffic"
        );
        let probe = http_get_with_agent(&bed, &host, "/", "kube-probe/1.36").await?;
        let health = bed.get(&host, "/healthz", REQ).await?;
        anyhow::ensure!(
            probe == 200 && health.status == 200,
            "health checks must succeed: {probe} {}",
            health.status
        );
        sent += 2;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "[e2e] slept after {:?} with {sent} health-check requests",
        start.elapsed()
    );
    ns.cleanup().await
}

async fn http_get_with_agent(
    bed: &TestBed,
    host: &str,
    path: &str,
    agent: &str,
) -> anyhow::Result<u16> {
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "30",
            "-A",
            agent,
            "-H",
        ])
        .arg(format!("Host: {host}"))
        .arg(format!("http://{}{path}", bed.envoy))
        .output()
        .await?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0))
}

#[tokio::test]
async fn traffic_across_sleep_and_wake_cycles_gets_no_error() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "cycles", &[]).await?;
    managed(&ns, "web", "2s", &[]).await?;
    let host = format!("web.{}", ns.name);
    let mut statuses: BTreeMap<u16, u32> = BTreeMap::new();
    let mut sleeps = std::collections::BTreeSet::new();
    for cycle in 0..3 {
        // A burst at 10 requests/s, then a pause long enough to fall asleep.
        for i in 0..20 {
            let r = bed.get(&host, &format!("/c{cycle}/{i}"), REQ).await?;
            *statuses.entry(r.status).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let wait = Instant::now();
        loop {
            let a = annotations(&ns, "web").await?;
            if let Some(at) = a.get("kzscaler.io/slept-at")
                && a.get("kzscaler.io/state").map(String::as_str) == Some("asleep")
                && sleeps.insert(at.clone())
            {
                break;
            }
            anyhow::ensure!(
                wait.elapsed() < Duration::from_secs(15),
                "cycle {cycle}: did not fall asleep"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!(
        "[e2e] statuses over 3 sleep/wake cycles: {statuses:?}, sleeps: {}",
        sleeps.len()
    );
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "{statuses:?}"
    );
    assert_eq!(sleeps.len(), 3);
    ns.cleanup().await
}

#[tokio::test]
async fn requests_at_every_point_of_the_scale_down_get_200() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "sweep", &[]).await?;
    // Idle 2 s, then draining for 0.9 s (test bed), then the scale to 0: pauses from 1.8 s to
    // 3.8 s land before, during and after the drain and the scale-down.
    managed(&ns, "web", "2s", &[]).await?;
    let host = format!("web.{}", ns.name);
    let mut statuses: BTreeMap<u16, u32> = BTreeMap::new();
    let mut seen = Vec::new();
    // The last step waits until it is asleep (on a loaded machine the sweep's longest pause
    // may still fall before the scale to 0), so every run covers waking it too.
    for step in 0..=9u64 {
        let paused = Instant::now();
        if step == 9 {
            ns.wait_for("web to fall asleep", Duration::from_secs(20), || async {
                Ok((replicas(&ns, "web").await? == 0).then_some(()))
            })
            .await?;
        } else {
            tokio::time::sleep(Duration::from_millis(1800 + 250 * step)).await;
        }
        let pause = paused.elapsed();
        let before = replicas(&ns, "web").await?;
        // Three at once, as callers would.
        let paths: Vec<String> = (0..3).map(|i| format!("/p{step}/{i}")).collect();
        let sends = paths.iter().map(|p| bed.get(&host, p, REQ));
        for r in futures::future::join_all(sends).await {
            let r = r?;
            *statuses.entry(r.status).or_default() += 1;
            if r.status != 200 {
                eprintln!("[e2e] after a {pause:?} pause: {} {}", r.status, r.body);
            }
            seen.push((pause.as_millis(), before, r.status));
        }
    }
    eprintln!("[e2e] (pause ms, replicas just before, status): {seen:?}");
    eprintln!("[e2e] statuses: {statuses:?}");
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "{seen:?}"
    );
    let asleep = seen.iter().filter(|(_, before, _)| *before == 0).count();
    eprintln!("[e2e] requests sent to it asleep: {asleep}");
    assert!(asleep >= 3, "the last step should find it asleep: {seen:?}");
    ns.cleanup().await
}

#[tokio::test]
async fn requests_served_by_its_own_pods_keep_it_awake() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "inbound", &[]).await?;
    // "web" pods have their own sidecar (a Sidecar resource gives it an ingress listener on
    // 9080 in front of the app on 8081), and requests reach that listener from outside the
    // mesh, so only the pod's inbound side sees them. (Not 8080: without traffic capture the
    // outbound listener for the controller's Service port binds 127.0.0.1:8080 in the pod.)
    let mesh = PrivateMesh::start(&bed, &ns.name).await?;
    let ctl = mesh.controller_addr.to_string();
    let inbound_port = free_port()?;
    let inbound = format!("127.0.0.1:{inbound_port}");
    let mut d = managed_deployment("web", 1, "30s");
    d.metadata
        .annotations
        .get_or_insert_default()
        .insert("kzscaler.io/idle-timeout".into(), "2s".into());
    with_inbound_sidecar(&mut d, 9080, 8081, inbound_port, free_port()?)?;
    create_ingress_sidecar(&ns, "web", 9080, 8081).await?;
    let mut svc = service("web", "web", 80, "http");
    if let Some(p) = svc
        .spec
        .as_mut()
        .and_then(|s| s.ports.as_mut())
        .and_then(|p| p.first_mut())
    {
        p.target_port = Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9080));
    }
    ns.api::<Service>()
        .create(&PostParams::default(), &svc)
        .await?;
    ns.api::<Deployment>()
        .create(&PostParams::default(), &d)
        .await?;
    wait_filter_sees(&ns, &ctl, &cluster(&ns.name, "web", 80), State::Awake).await?;
    // Three idle timeouts of inbound traffic only.
    for i in 0..15 {
        let r = bed
            .get_from(&inbound, "web", &format!("/in/{i}"), REQ)
            .await?;
        assert_eq!(r.status, 200, "inbound request {i}: {}", r.body);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(replicas(&ns, "web").await?, 1, "{}", mesh.logs(20));
    assert!(
        !annotations(&ns, "web")
            .await?
            .contains_key("kzscaler.io/slept-at"),
        "it never slept"
    );
    // And without it, it sleeps: it was the inbound traffic that kept it awake.
    ns.wait_for(
        "web to sleep once its inbound traffic stops",
        Duration::from_secs(12),
        || async { Ok((replicas(&ns, "web").await? == 0).then_some(())) },
    )
    .await?;
    drop(mesh);
    ns.cleanup().await
}
