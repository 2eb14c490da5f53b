//! Wake on first request, on the test bed: the real controller, the real filter in a caller's
//! sidecar configured by istiod, the real API server.

use std::time::Duration;

use anyhow::Context as _;
use futures::future::join_all;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kzscaler_core::wire::State;
use kzscaler_e2e::fixtures::service;
use kzscaler_e2e::kz::{
    PrivateMesh, cluster, create_caller, create_istio, create_managed, managed_deployment,
    replicas, scale_patches, set_schedulable, snapshot, wait_filter_sees, wasm_filter_loaded,
};
use kzscaler_e2e::namespace::TempNamespace;
use kzscaler_e2e::testbed::TestBed;
use serde_json::json;

const WAKE: Duration = Duration::from_secs(30);

fn controller(bed: &TestBed) -> anyhow::Result<String> {
    bed.controller
        .clone()
        .context("KZSCALER_CONTROLLER is not set: is the test bed up with the controller (hack/local-up.sh)?")
}

/// Creates Service `svc` (port 80) and a managed Deployment of the same name at 0 replicas,
/// and waits until the filter knows it sleeps.
async fn asleep_service(ns: &TempNamespace, svc: &str, port_name: &str) -> anyhow::Result<String> {
    ns.api::<Service>()
        .create(&PostParams::default(), &service(svc, svc, 80, port_name))
        .await?;
    ns.api::<Deployment>()
        .create(&PostParams::default(), &managed_deployment(svc, 0, "30s"))
        .await?;
    let c = cluster(&ns.name, svc, 80);
    wait_filter_sees(ns, &controller(&ns.bed)?, &c, State::Asleep).await?;
    Ok(c)
}

#[tokio::test]
async fn request_to_asleep_deployment_is_held_until_it_wakes() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "wake", &[]).await?;
    asleep_service(&ns, "web", "http").await?;
    assert_eq!(replicas(&ns, "web").await?, 0);

    let reply = bed.get(&format!("web.{}", ns.name), "/first", WAKE).await?;
    assert_eq!(reply.status, 200, "held and then served: {}", reply.body);
    let identity: serde_json::Value = serde_json::from_str(&reply.body)?;
    // Served by the backend the kubelet started at the pod's address: the request went
    // through only once this Envoy had the endpoint.
    assert_eq!(identity["path"], "/first");
    assert!(
        identity["pod"]
            .as_str()
            .is_some_and(|p| p.starts_with("web-")),
        "{identity}"
    );
    assert_eq!(replicas(&ns, "web").await?, 1, "woken to max(1, ...)");
    let last_wake = ns
        .wait_for(
            "the wake to be recorded on the Deployment",
            Duration::from_secs(10),
            || async {
                let d = ns.api::<Deployment>().get("web").await?;
                Ok(d.metadata
                    .annotations
                    .and_then(|a| a.get("kzscaler.io/last-wake").cloned()))
            },
        )
        .await?;
    let record: serde_json::Value = serde_json::from_str(&last_wake)?;
    assert!(record["endpoint_ready_ms"].is_u64(), "{record}");
    ns.cleanup().await
}

#[tokio::test]
async fn two_hundred_concurrent_requests_cause_one_scale_patch() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "coalesce", &[]).await?;
    asleep_service(&ns, "burst", "http").await?;
    let host = format!("burst.{}", ns.name);
    let replies = join_all((0..200).map(|i| {
        let (bed, host) = (bed.clone(), host.clone());
        async move { bed.get(&host, &format!("/r{i}"), WAKE).await }
    }))
    .await;
    let mut statuses = std::collections::BTreeMap::new();
    for r in &replies {
        let s = r
            .as_ref()
            .map(|r| r.status.to_string())
            .unwrap_or_else(|e| format!("error: {e:#}"));
        *statuses.entry(s).or_insert(0) += 1;
    }
    eprintln!("[e2e] 200 concurrent requests to a sleeping Deployment: {statuses:?}");
    assert_eq!(
        statuses.get("200"),
        Some(&200),
        "every request succeeds: {statuses:?}"
    );
    let audit = bed.state_dir.join("logs/audit.log");
    let patches = scale_patches(&audit, &ns.name, "burst")?;
    assert_eq!(
        patches,
        1,
        "exactly one deployments/scale PATCH in {}",
        audit.display()
    );
    ns.cleanup().await
}

#[tokio::test]
async fn every_host_form_wakes_the_same_deployment() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    // Istio routes the bare name (and name:port) only for callers in the Service's own
    // namespace: the caller is a pod there, with its own sidecar.
    let ns = TempNamespace::create(&bed, "hosts", &[("kzscaler.io/injection", "enabled")]).await?;
    let svc = format!("h{}", ns.name.rsplit('-').next().unwrap_or("x"));
    let (proxy, admin) = create_caller(&bed.client, &ns.name, "caller", &[]).await?;
    ns.wait_for("the caller's sidecar with the filter", WAKE, || async {
        Ok(wasm_filter_loaded(&bed, &admin)
            .await
            .unwrap_or(false)
            .then_some(()))
    })
    .await?;
    let c = asleep_service(&ns, &svc, "http").await?;
    let n = &ns.name;
    for host in [
        svc.clone(),
        format!("{svc}:80"),
        format!("{svc}.{n}"),
        format!("{svc}.{n}:80"),
        format!("{svc}.{n}.svc.cluster.local"),
        format!("{svc}.{n}.svc.cluster.local:80"),
    ] {
        ns.api::<Deployment>()
            .patch_scale(
                &svc,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 0}})),
            )
            .await?;
        ns.wait_for("the EndpointSlice to lose its endpoints", WAKE, || async {
            let slices = ns
                .api::<EndpointSlice>()
                .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
                .await?;
            let n: usize = slices
                .iter()
                .map(|s| s.endpoints.as_ref().map_or(0, Vec::len))
                .sum();
            Ok((n == 0).then_some(()))
        })
        .await?;
        wait_filter_sees(&ns, &controller(&bed)?, &c, State::Asleep).await?;
        let reply = bed.get_from(&proxy, &host, "/", WAKE).await?;
        assert_eq!(reply.status, 200, "Host {host}: {}", reply.body);
        assert_eq!(
            replicas(&ns, &svc).await?,
            1,
            "Host {host} woke the Deployment"
        );
    }
    ns.cleanup().await
}

#[tokio::test]
async fn grpc_call_wakes_the_service_and_a_short_deadline_fails_fast_unavailable()
-> anyhow::Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "grpcwake", &[]).await?;
    asleep_service(&ns, "api", "grpc").await?;
    let chan = tonic::transport::Endpoint::from_shared(format!("http://{}", bed.envoy))?
        .origin(format!("http://api.{}:80", ns.name).parse()?)
        .connect()
        .await?;

    // Pods that cannot be scheduled, so a 1 s call cannot wake it: the filter answers
    // UNAVAILABLE before the caller's own deadline (tonic would end the call itself with
    // CANCELLED, or Envoy with DEADLINE_EXCEEDED, if it did not).
    let deployments = ns.api::<Deployment>();
    set_schedulable(&deployments, "api", false).await?;
    let mut short = tonic::Request::new(HealthCheckRequest::default());
    short.set_timeout(Duration::from_secs(1));
    let err = HealthClient::new(chan.clone())
        .check(short)
        .await
        .err()
        .context("a 1 s call cannot wake a Deployment whose pods cannot be scheduled")?;
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    // Schedulable again: the wake already under way completes and the next call is served.
    set_schedulable(&deployments, "api", true).await?;

    let mut call = tonic::Request::new(HealthCheckRequest::default());
    call.set_timeout(WAKE);
    let resp = HealthClient::new(chan).check(call).await?;
    assert_eq!(resp.into_inner().status, ServingStatus::Serving as i32);
    assert!(replicas(&ns, "api").await? >= 1);
    ns.cleanup().await
}

#[tokio::test]
async fn with_the_controller_stopped_awake_services_pass_and_asleep_ones_get_503_in_time()
-> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "noctl", &[]).await?;
    let mut mesh = PrivateMesh::start(&bed, &ns.name).await?;
    let ctl = mesh.controller_addr.to_string();
    for (name, replicas) in [("awake", 1), ("asleep", 0)] {
        ns.api::<Service>()
            .create(&PostParams::default(), &service(name, name, 80, "http"))
            .await?;
        ns.api::<Deployment>()
            .create(
                &PostParams::default(),
                &managed_deployment(name, replicas, "2s"),
            )
            .await?;
    }
    wait_filter_sees(&ns, &ctl, &cluster(&ns.name, "awake", 80), State::Awake).await?;
    wait_filter_sees(&ns, &ctl, &cluster(&ns.name, "asleep", 80), State::Asleep).await?;
    mesh.stop_controller().await?;

    let awake = bed
        .get_from(&mesh.envoy, &format!("awake.{}", ns.name), "/", WAKE)
        .await?;
    assert_eq!(
        awake.status, 200,
        "an awake service passes untouched: {}",
        awake.body
    );
    let asleep = bed
        .get_from(&mesh.envoy, &format!("asleep.{}", ns.name), "/", WAKE)
        .await?;
    assert_eq!(asleep.status, 503, "{}", asleep.body);
    assert!(
        asleep.headers.contains_key("retry-after"),
        "{:?}",
        asleep.headers
    );
    assert!(
        asleep.body.contains("kzscaler"),
        "answered by the filter: {}",
        asleep.body
    );
    assert_eq!(
        replicas(&ns, "asleep").await?,
        0,
        "nothing woke it without a controller"
    );
    drop(mesh);
    ns.cleanup().await
}

#[tokio::test]
async fn a_virtual_service_timeout_bounds_the_hold_of_a_plain_http_request() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "vstimeout", &[]).await?;
    create_managed(&ns, "web", 0, &[]).await?;
    // Its pods cannot start: only a deadline ends the hold.
    set_schedulable(&ns.api::<Deployment>(), "web", false).await?;
    let fqdn = format!("web.{}.svc.cluster.local", ns.name);
    create_istio(
        &ns,
        "VirtualService",
        "web",
        json!({"hosts": [fqdn], "http": [{"timeout": "2s", "route": [{"destination": {"host": fqdn}}]}]}),
    )
    .await?;
    let ctl = controller(&bed)?;
    ns.wait_for(
        "the controller to publish the VirtualService's route timeout",
        Duration::from_secs(30),
        || async {
            let snap = snapshot(&bed, &ctl).await?;
            Ok(snap
                .virtual_services
                .iter()
                .any(|v| v.namespace == ns.name && v.routes.iter().any(|r| r.timeout_ms == 2_000))
                .then_some(()))
        },
    )
    .await?;
    let admin = bed
        .envoy_admin
        .clone()
        .context("KZSCALER_ENVOY_ADMIN is not set")?;
    let route = format!("namespaces/{}/virtual-service/web", ns.name);
    ns.wait_for(
        "the caller's Envoy to route by the VirtualService",
        Duration::from_secs(30),
        || async {
            let r = bed
                .get_from(
                    &admin,
                    "admin",
                    "/config_dump?resource=dynamic_route_configs",
                    Duration::from_secs(5),
                )
                .await?;
            Ok(r.body.contains(&route).then_some(()))
        },
    )
    .await?;
    wait_filter_sees(&ns, &ctl, &cluster(&ns.name, "web", 80), State::Asleep).await?;

    let t = std::time::Instant::now();
    let r = bed
        .get(&format!("web.{}", ns.name), "/", Duration::from_secs(40))
        .await?;
    let took = t.elapsed();
    eprintln!(
        "[e2e] held under a 2 s route timeout: {} after {} ms",
        r.status,
        took.as_millis()
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("kzscaler"), "kzscaler's answer: {}", r.body);
    assert!(
        took < Duration::from_secs(2),
        "answered before the route's 2 s timeout, not after the 30 s wake timeout: {took:?}"
    );
    ns.cleanup().await
}

#[tokio::test]
async fn headers_with_any_bytes_are_held_and_woken_like_any_other() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "bytes", &[]).await?;
    asleep_service(&ns, "web", "http").await?;
    // A Latin-1 User-Agent (legal obs-text) and a grpc-timeout whose last character is two
    // bytes: both reach the filter on the first request of a period. The SDK's string
    // accessor panicked on the first, the deadline parser on the second, and a panic kills
    // the VM.
    let mut request = format!("GET /bytes HTTP/1.1\r\nhost: web.{}\r\n", ns.name).into_bytes();
    request.extend_from_slice(b"user-agent: caf\xe9-client/1.0\r\ngrpc-timeout: 1\xc2\xb5\r\n");
    request.extend_from_slice(b"connection: close\r\n\r\n");
    let mut tcp = tokio::net::TcpStream::connect(&bed.envoy).await?;
    tcp.write_all(&request).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(WAKE, tcp.read_to_end(&mut answer))
        .await
        .context("no answer through Envoy")??;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "held and woken: {answer}"
    );
    // The VM is still alive: the next request is served as usual.
    let again = bed.get(&format!("web.{}", ns.name), "/again", WAKE).await?;
    assert_eq!(again.status, 200, "{}", again.body);
    ns.cleanup().await
}

/// A counter of the controller's `/metrics`, e.g. `kzscaler_snapshot_requests_total` with
/// `status="delta"`.
async fn counter(bed: &TestBed, addr: &str, name: &str, label: &str) -> anyhow::Result<f64> {
    let r = bed
        .get_from(addr, "x", "/metrics", Duration::from_secs(2))
        .await?;
    Ok(r.body
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

#[tokio::test]
async fn the_sidecar_learns_of_a_new_destination_and_its_wake_by_deltas() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "delta", &[]).await?;
    let mesh = PrivateMesh::start(&bed, &ns.name).await?;
    let ctl = mesh.controller_addr.to_string();
    let deltas = |bed: TestBed, ctl: String| async move {
        counter(
            &bed,
            &ctl,
            "kzscaler_snapshot_requests_total",
            "status=\"delta\"",
        )
        .await
    };
    // The filter holds its first, full snapshot by now; "web" comes after it.
    let before = deltas(bed.clone(), ctl.clone()).await?;
    create_managed(&ns, "web", 0, &[]).await?;
    wait_filter_sees(&ns, &ctl, &cluster(&ns.name, "web", 80), State::Asleep).await?;
    assert!(
        deltas(bed.clone(), ctl.clone()).await? > before,
        "the filter asked for what changed since its version, and got a delta"
    );
    // Idle, the filter keeps one long poll open instead of polling every 200 ms.
    let all = |bed: TestBed, ctl: String| async move {
        counter(&bed, &ctl, "kzscaler_snapshot_requests_total", "status=").await
    };
    let polls = all(bed.clone(), ctl.clone()).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let polled = all(bed.clone(), ctl.clone()).await? - polls;
    assert!(
        polled <= 3.0,
        "{polled} snapshot requests in 3 s with nothing changing (15 without the long poll)"
    );
    // Held (only a delta told the filter it sleeps), woken, answered.
    let r = bed
        .get_from(&mesh.envoy, &format!("web.{}", ns.name), "/", WAKE)
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(replicas(&ns, "web").await?, 1);
    drop(mesh);
    ns.cleanup().await
}
