//! Leader election and restarts, on the test bed: private controllers (killed and restarted
//! by the tests) behind a private Envoy running the filter.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use kzscaler_core::wire::State;
use kzscaler_e2e::kz::{
    PrivateMesh, Setup, annotations, cluster, create_managed, replicas, scale_patches,
    set_schedulable, snapshot, wait_filter_sees,
};
use kzscaler_e2e::namespace::TempNamespace;
use kzscaler_e2e::testbed::TestBed;
use serde_json::json;

const REQ: Duration = Duration::from_secs(30);

/// `reportingInstance` of the Events with `reason` about Deployment `name`, once there are
/// `n` of them (the controller publishes a Woke Event just after answering).
async fn reporters(
    ns: &TempNamespace,
    name: &str,
    reason: &str,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    ns.wait_for(
        &format!("{n} {reason} Event(s) for {name}"),
        Duration::from_secs(10),
        || async {
            let found = events(ns, name, reason).await?;
            Ok((found.len() >= n).then_some(found))
        },
    )
    .await
}

async fn events(ns: &TempNamespace, name: &str, reason: &str) -> anyhow::Result<Vec<String>> {
    Ok(ns
        .api::<Event>()
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .map(|e| e.reporting_instance.unwrap_or_default())
        .collect())
}

async fn scale_to(ns: &TempNamespace, name: &str, n: i32) -> anyhow::Result<()> {
    ns.api::<Deployment>()
        .patch_scale(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": n}})),
        )
        .await?;
    Ok(())
}

/// A private mesh with two controller replicas for `ns`: the mesh, and which replica leads
/// and which follows.
async fn two_controllers(
    bed: &TestBed,
    ns: &TempNamespace,
) -> anyhow::Result<(PrivateMesh, usize, usize)> {
    let mesh = PrivateMesh::start_setup(
        bed,
        &ns.name,
        Setup {
            namespace: Some(ns.name.clone()),
            controllers: 2,
            ..Setup::kzscaler()?
        },
    )
    .await?;
    let leader = mesh
        .leader(bed)
        .await
        .ok_or_else(|| anyhow::anyhow!("no leader although start_setup waited for one"))?;
    Ok((mesh, leader, 1 - leader))
}

#[tokio::test]
async fn only_the_leader_scales_and_the_other_replica_takes_over_when_it_is_killed()
-> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "leader", &[]).await?;
    // (The follower's 503 to activate and activity is unit-tested in api.rs.)
    let (mut mesh, leader, follower) = two_controllers(&bed, &ns).await?;
    let (l_addr, f_addr) = (
        mesh.controllers[leader].addr.to_string(),
        mesh.controllers[follower].addr.to_string(),
    );
    create_managed(&ns, "web", 0, &[]).await?;
    let web = cluster(&ns.name, "web", 80);
    wait_filter_sees(&ns, &l_addr, &web, State::Asleep).await?;

    // The follower refuses to act, and says who leads.
    let refused = bed.get_from(&f_addr, "x", "/leaderz", REQ).await?;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        refused
            .body
            .contains(&format!("leader: {}", mesh.controllers[leader].identity)),
        "{}",
        refused.body
    );

    let host = format!("web.{}", ns.name);
    let r = bed.get_from(&mesh.envoy, &host, "/", REQ).await?;
    assert_eq!(r.status, 200, "{}\n{}", r.body, mesh.logs(20));
    assert_eq!(
        reporters(&ns, "web", "Woke", 1).await?,
        vec![mesh.controllers[leader].identity.clone()],
        "the leader woke it, once"
    );

    // Back to sleep by hand, then kill the leader (no release) and ask at once.
    scale_to(&ns, "web", 0).await?;
    wait_filter_sees(&ns, &l_addr, &web, State::Asleep).await?;
    mesh.kill_controller(leader).await?;
    let t = Instant::now();
    let r = bed.get_from(&mesh.envoy, &host, "/", REQ).await?;
    let took = t.elapsed();
    assert_eq!(
        r.status,
        200,
        "the held request survives the failover: {}\n{}",
        r.body,
        mesh.logs(30)
    );
    eprintln!(
        "leader killed: held request answered 200 after {} ms (lease duration 2 s)",
        took.as_millis()
    );
    assert_eq!(mesh.leader(&bed).await, Some(follower));
    let mut woke = reporters(&ns, "web", "Woke", 2).await?;
    woke.sort();
    let mut expected = vec![
        mesh.controllers[leader].identity.clone(),
        mesh.controllers[follower].identity.clone(),
    ];
    expected.sort();
    assert_eq!(woke, expected, "the second wake is the new leader's");
    drop(mesh);
    ns.cleanup().await
}

#[tokio::test]
async fn a_controller_killed_while_draining_loses_no_request_and_carries_on() -> anyhow::Result<()>
{
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "killdrain", &[]).await?;
    // A long drain period leaves time to kill the controller while draining.
    let mut mesh = PrivateMesh::start_setup(
        &bed,
        &ns.name,
        Setup {
            namespace: Some(ns.name.clone()),
            controller_args: vec!["--drain-period-ms".into(), "4000".into()],
            ..Setup::kzscaler()?
        },
    )
    .await?;
    let ctl = mesh.controller_addr.to_string();
    create_managed(&ns, "web", 1, &[("kzscaler.io/idle-timeout", "2s")]).await?;
    let web = cluster(&ns.name, "web", 80);
    wait_filter_sees(&ns, &ctl, &web, State::Draining).await?;
    mesh.kill_controller(0).await?;

    // Requests while no controller runs: the Deployment is still up, so all pass.
    let host = format!("web.{}", ns.name);
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..10 {
        let r = bed.get_from(&mesh.envoy, &host, "/", REQ).await?;
        *statuses.entry(r.status).or_insert(0) += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        replicas(&ns, "web").await?,
        1,
        "not slept by a dead controller"
    );

    // Restarted (same identity, like a restarted container): it re-evaluates from scratch:
    // a whole idle timeout, the drain again, then sleep; and a request wakes it.
    mesh.restart_controller(0)?;
    ns.wait_for(
        "the restarted controller to put the idle Deployment to sleep",
        Duration::from_secs(20),
        || async { Ok((replicas(&ns, "web").await? == 0).then_some(())) },
    )
    .await?;
    assert_eq!(
        annotations(&ns, "web")
            .await?
            .get("kzscaler.io/state")
            .map(String::as_str),
        Some("asleep")
    );
    assert_eq!(
        annotations(&ns, "web")
            .await?
            .get("kzscaler.io/replicas-before-sleep")
            .map(String::as_str),
        Some("1")
    );
    wait_filter_sees(&ns, &ctl, &web, State::Asleep).await?;
    let r = bed.get_from(&mesh.envoy, &host, "/", REQ).await?;
    *statuses.entry(r.status).or_insert(0) += 1;
    eprintln!("statuses across kill, restart, sleep and wake: {statuses:?}");
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "{statuses:?}\n{}",
        mesh.logs(30)
    );
    drop(mesh);
    ns.cleanup().await
}

#[tokio::test]
async fn a_controller_killed_while_waking_loses_no_request_and_scales_once() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "killwake", &[]).await?;
    let mut mesh = PrivateMesh::start(&bed, &ns.name).await?;
    let ctl = mesh.controller_addr.to_string();
    create_managed(&ns, "web", 0, &[]).await?;
    // Pods that cannot be scheduled keep the wake going until the test lets them run.
    ns.api::<Deployment>()
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {"nodeSelector": {"kzscaler-e2e/nowhere": "true"}}}},
                                 "metadata": {"annotations": {"kzscaler.io/state": "asleep"}}})),
        )
        .await?;
    let web = cluster(&ns.name, "web", 80);
    wait_filter_sees(&ns, &ctl, &web, State::Asleep).await?;

    let (envoy, host) = (mesh.envoy.clone(), format!("web.{}", ns.name));
    let held = {
        let bed = bed.clone();
        tokio::spawn(async move { bed.get_from(&envoy, &host, "/", REQ).await })
    };
    ns.wait_for(
        "the wake to start (replicas 1)",
        Duration::from_secs(10),
        || async { Ok((replicas(&ns, "web").await? == 1).then_some(())) },
    )
    .await?;
    mesh.kill_controller(0).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    mesh.restart_controller(0)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Now the pods may run.
    set_schedulable(&ns.api::<Deployment>(), "web", true).await?;
    let r = held.await??;
    assert_eq!(
        r.status,
        200,
        "the request held across the restart: {}\n{}",
        r.body,
        mesh.logs(30)
    );
    assert_eq!(
        kzscaler_e2e::kz::scale_patches(&bed.state_dir.join("logs/audit.log"), &ns.name, "web")?,
        1,
        "the restarted controller found the wake under way and did not scale again"
    );
    // The dead controller never wrote `awake`; the restarted one corrects the record.
    ns.wait_for(
        "kzscaler.io/state to say awake",
        Duration::from_secs(15),
        || async {
            Ok((annotations(&ns, "web")
                .await?
                .get("kzscaler.io/state")
                .map(String::as_str)
                == Some("awake"))
            .then_some(()))
        },
    )
    .await?;
    drop(mesh);
    ns.cleanup().await
}

#[tokio::test]
async fn a_leader_paused_across_a_failover_changes_no_replicas_when_it_resumes()
-> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "fence", &[]).await?;
    let (mesh, leader, follower) = two_controllers(&bed, &ns).await?;
    let l_addr = mesh.controllers[leader].addr.to_string();
    create_managed(&ns, "web", 1, &[("kzscaler.io/idle-timeout", "2s")]).await?;
    let web = cluster(&ns.name, "web", 80);

    // The leader finds web idle and drains it: pause it there, before its scale to 0.
    ns.wait_for(
        "the leader to drain the idle Deployment",
        Duration::from_secs(30),
        || async {
            let snap = snapshot(&bed, &l_addr).await?;
            Ok(snap
                .destinations
                .iter()
                .any(|d| d.cluster == web && d.state == State::Draining)
                .then_some(()))
        },
    )
    .await?;
    mesh.pause_controller(leader)?;
    // The other replica takes over; web is pinned awake for it.
    ns.api::<Deployment>()
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"kzscaler.io/paused": "true"}}})),
        )
        .await?;
    let took_over = ns
        .wait_for(
            "the other replica to take the Lease",
            Duration::from_secs(15),
            || async { Ok((mesh.leader(&bed).await == Some(follower)).then_some(())) },
        )
        .await;
    let audit = bed.state_dir.join("logs/audit.log");
    let before = scale_patches(&audit, &ns.name, "web")?;
    // Resumed, the old leader still believes it leads, and its drain is long over.
    mesh.resume_controller(leader)?;
    took_over?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        replicas(&ns, "web").await?,
        1,
        "the resumed old leader put it to sleep\n{}",
        mesh.logs(30)
    );
    assert_eq!(
        scale_patches(&audit, &ns.name, "web")?,
        before,
        "the resumed old leader sent a scale\n{}",
        mesh.logs(30)
    );
    drop(mesh);
    ns.cleanup().await
}
