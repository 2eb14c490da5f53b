//! Others that scale Deployments: an HPA, and a user scaling by hand. kzscaler works with
//! them instead of fighting them. On the test bed's shared controller and Envoy.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Patch, PatchParams, PostParams};
use kzscaler_core::wire::State;
use kzscaler_e2e::kz::{cluster, create_managed, wait_filter_sees};
use kzscaler_e2e::namespace::TempNamespace;
use kzscaler_e2e::testbed::TestBed;
use serde_json::json;

const REQ: Duration = Duration::from_secs(30);

async fn create(ns: &TempNamespace, name: &str, replicas: i32, idle: &str) -> anyhow::Result<()> {
    let mut extra = vec![("kzscaler.io/idle-timeout", idle)];
    if replicas == 0 {
        // As kzscaler leaves a Deployment it put to sleep.
        extra.push(("kzscaler.io/state", "asleep"));
    }
    create_managed(ns, name, replicas, &extra).await
}

async fn deployment(
    ns: &TempNamespace,
    name: &str,
) -> anyhow::Result<(i32, BTreeMap<String, String>)> {
    let d = ns.api::<Deployment>().get(name).await?;
    Ok((
        d.spec.and_then(|s| s.replicas).unwrap_or(0),
        d.metadata.annotations.unwrap_or_default(),
    ))
}

#[tokio::test]
async fn an_asleep_deployment_scaled_by_hand_is_treated_as_awake() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "byhand", &[]).await?;
    let controller = bed.controller.clone().unwrap_or_default();
    create(&ns, "web", 0, "6s").await?;
    let web = cluster(&ns.name, "web", 80);
    wait_filter_sees(&ns, &controller, &web, State::Asleep).await?;
    // Asleep for longer than its idle timeout, so a stale idle clock would show.
    tokio::time::sleep(Duration::from_secs(7)).await;

    let scaled = Instant::now();
    ns.api::<Deployment>()
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await?;
    // The record is corrected (an Event says why); it stays up meanwhile.
    let events = ns
        .wait_for(
            "a StateCorrected Event",
            Duration::from_secs(15),
            || async {
                let e = kubectl_events(&ns).await?;
                Ok(e.contains("StateCorrected").then_some(e))
            },
        )
        .await?;
    assert!(events.contains("set outside kzscaler"), "{events}");
    assert_eq!(
        deployment(&ns, "web").await?.0,
        2,
        "still up when corrected"
    );
    // Awake means a full idle timeout from now on, not an instant sleep on a stale clock.
    ns.wait_for(
        "the hand-scaled Deployment to sleep after its idle timeout",
        Duration::from_secs(30),
        || async { Ok((deployment(&ns, "web").await?.0 == 0).then_some(())) },
    )
    .await?;
    let slept_after = scaled.elapsed();
    assert!(
        slept_after >= Duration::from_secs(6),
        "slept {slept_after:?} after being scaled up, before its 6 s idle timeout"
    );
    let (_, a) = deployment(&ns, "web").await?;
    assert_eq!(
        a.get("kzscaler.io/replicas-before-sleep")
            .map(String::as_str),
        Some("2"),
        "{a:?}"
    );
    eprintln!(
        "scaled to 2 by hand; slept again after {} ms",
        slept_after.as_millis()
    );
    ns.cleanup().await
}

async fn kubectl_events(ns: &TempNamespace) -> anyhow::Result<String> {
    let list = ns
        .api::<k8s_openapi::api::events::v1::Event>()
        .list(&Default::default())
        .await?;
    Ok(list
        .items
        .iter()
        .map(|e| {
            format!(
                "{} {}\n",
                e.reason.as_deref().unwrap_or(""),
                e.note.as_deref().unwrap_or("")
            )
        })
        .collect())
}

#[tokio::test]
async fn with_an_hpa_it_wakes_to_min_replicas_and_sleep_is_not_undone() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "hpa", &[]).await?;
    let controller = bed.controller.clone().unwrap_or_default();
    create(&ns, "web", 0, "3s").await?;
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 3, "maxReplicas": 5,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                         "target": {"type": "Utilization", "averageUtilization": 80}}}]
        }
    }))?;
    ns.api::<HorizontalPodAutoscaler>()
        .create(&PostParams::default(), &hpa)
        .await?;
    let web = cluster(&ns.name, "web", 80);
    wait_filter_sees(&ns, &controller, &web, State::Asleep).await?;

    let r = bed.get(&format!("web.{}", ns.name), "/", REQ).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        deployment(&ns, "web").await?.0,
        3,
        "woken to the HPA's minReplicas"
    );

    ns.wait_for(
        "the idle Deployment to sleep despite its HPA",
        Duration::from_secs(20),
        || async { Ok((deployment(&ns, "web").await?.0 == 0).then_some(())) },
    )
    .await?;
    // The HPA (sync period 1 s on the test bed) sees 0 replicas and stands aside.
    let hpas = ns.api::<HorizontalPodAutoscaler>();
    ns.wait_for(
        "the HPA to report scaling disabled",
        Duration::from_secs(15),
        || async {
            let h = hpas.get("web").await?;
            let active = h
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "ScalingActive");
            Ok(active
                .filter(|c| c.status == "False")
                .and_then(|c| c.reason)
                .filter(|r| r == "ScalingDisabled"))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        deployment(&ns, "web").await?.0,
        0,
        "the HPA did not scale it back up"
    );
    ns.cleanup().await
}
