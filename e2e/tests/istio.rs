//! The kzscaler filter under a real istiod: the controller's WasmPlugin reaches exactly the
//! sidecars the webhook labels (through ECDS, the module fetched by pilot-agent), and Istio's
//! own cluster names (DestinationRule subsets) still wake and keep awake their Deployment.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::PostParams;
use kzscaler_core::wire::State;
use kzscaler_e2e::fixtures::service;
use kzscaler_e2e::kz::{
    cluster, create_caller, create_istio, managed_deployment, replicas, wait_filter_sees,
    wasm_filter_loaded,
};
use kzscaler_e2e::namespace::TempNamespace;
use kzscaler_e2e::testbed::TestBed;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// Waits until the sidecar at `admin` is ready (it has istiod's config), then says whether
/// its ECDS holds the kzscaler Wasm filter, waiting a little for one to arrive.
async fn sidecar_has_filter(ns: &TempNamespace, admin: &str) -> anyhow::Result<bool> {
    ns.wait_for("the sidecar's Envoy to be ready", WAIT, || async {
        let r = ns
            .bed
            .get_from(admin, "x", "/ready", Duration::from_secs(1))
            .await;
        Ok(r.is_ok_and(|r| r.status == 200).then_some(()))
    })
    .await?;
    // Its listeners came from istiod with the ECDS reference, if any: once ready, a filter
    // that is coming comes within the WasmPlugin resync (2 s on the test bed) and a fetch.
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < until {
        if wasm_filter_loaded(&ns.bed, admin).await? {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(false)
}

#[tokio::test]
async fn the_wasmplugin_reaches_labelled_sidecars_only() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let opted =
        TempNamespace::create(&bed, "ecds", &[("kzscaler.io/injection", "enabled")]).await?;
    let plain = TempNamespace::create(&bed, "ecds-plain", &[]).await?;
    let (_, with) = create_caller(&bed.client, &opted.name, "with", &[]).await?;
    let (_, opted_out) = create_caller(
        &bed.client,
        &opted.name,
        "opted-out",
        &[("kzscaler.io/inject", "false")],
    )
    .await?;
    let (_, unlabelled) = create_caller(&bed.client, &plain.name, "caller", &[]).await?;

    assert!(
        sidecar_has_filter(&opted, &with).await?,
        "a pod in an opted-in namespace runs the filter from the controller's WasmPlugin"
    );
    let dump = bed
        .get_from(
            &with,
            "x",
            "/config_dump?resource=ecds_filters",
            Duration::from_secs(2),
        )
        .await?;
    assert!(
        dump.body.contains(&format!(
            "extensions.istio.io/trafficextension/{}.kzscaler~istio-translated-wasmplugin",
            opted.name
        )),
        "the ECDS resource is istiod's translation of WasmPlugin {}/kzscaler: {}",
        opted.name,
        dump.body
    );
    // pilot-agent fetched the module over http and handed Envoy a local file.
    assert!(
        dump.body.contains("/var/lib/istio/data/"),
        "the module is pilot-agent's local copy: {}",
        dump.body
    );
    assert!(
        !sidecar_has_filter(&opted, &opted_out).await?,
        "a pod labelled kzscaler.io/inject=false gets no filter"
    );
    assert!(
        !sidecar_has_filter(&plain, &unlabelled).await?,
        "a pod in a namespace without the label gets no filter"
    );
    opted.cleanup().await?;
    plain.cleanup().await
}

#[tokio::test]
async fn a_subset_route_holds_wakes_and_keeps_awake_its_deployment() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "subset", &[]).await?;
    let host = format!("web.{}.svc.cluster.local", ns.name);
    // Pods labelled version=v1; a DestinationRule with subsets v1 and v2 and a VirtualService
    // sending everything to v1: Envoy routes to outbound|80|v1|web...
    let mut d = managed_deployment("web", 0, "30s");
    let a = d.metadata.annotations.get_or_insert_default();
    a.insert("kzscaler.io/idle-timeout".into(), "3s".into());
    if let Some(spec) = d.spec.as_mut() {
        spec.template
            .metadata
            .get_or_insert_default()
            .labels
            .get_or_insert_default()
            .insert("version".into(), "v1".into());
    }
    ns.api::<Service>()
        .create(&PostParams::default(), &service("web", "web", 80, "http"))
        .await?;
    ns.api::<Deployment>()
        .create(&PostParams::default(), &d)
        .await?;
    create_istio(
        &ns,
        "DestinationRule",
        "web",
        json!({"host": host, "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}}
        ]}),
    )
    .await?;
    create_istio(
        &ns,
        "VirtualService",
        "web",
        json!({"hosts": [host], "http": [{"route": [{"destination": {"host": host, "subset": "v1"}}]}]}),
    )
    .await?;
    let ctl = bed
        .controller
        .clone()
        .ok_or_else(|| anyhow::anyhow!("KZSCALER_CONTROLLER is not set"))?;
    wait_filter_sees(&ns, &ctl, &cluster(&ns.name, "web", 80), State::Asleep).await?;
    let admin = bed
        .envoy_admin
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("KZSCALER_ENVOY_ADMIN is not set: is the test bed up?"))?;
    let subset = format!("outbound|80|v1|{host}");
    ns.wait_for(
        "the caller's Envoy to have the v1 subset's cluster",
        WAIT,
        || async {
            let r = bed
                .get_from(admin, "x", "/clusters", Duration::from_secs(2))
                .await?;
            Ok(r.body.contains(&subset).then_some(()))
        },
    )
    .await?;
    let reply = bed
        .get(&format!("web.{}", ns.name), "/via-v1", WAIT)
        .await?;
    assert_eq!(
        reply.status, 200,
        "held, woken and routed to v1: {}",
        reply.body
    );
    assert_eq!(replicas(&ns, "web").await?, 1);
    // Requests through the subset count as its activity: two idle timeouts of them.
    for i in 0..12 {
        let r = bed
            .get(
                &format!("web.{}", ns.name),
                &format!("/keep/{i}"),
                Duration::from_secs(10),
            )
            .await?;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        replicas(&ns, "web").await?,
        1,
        "subset traffic kept it awake"
    );
    ns.wait_for(
        "web to sleep once the traffic stops",
        Duration::from_secs(15),
        || async { Ok((replicas(&ns, "web").await? == 0).then_some(())) },
    )
    .await?;
    ns.cleanup().await
}
