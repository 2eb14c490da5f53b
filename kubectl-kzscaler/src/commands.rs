//! The commands: read through the API server, print, and act by annotating Deployments
//! (the controller does the scaling).

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use kzscaler_core::names;
use serde_json::json;

use crate::explain::{EventLine, explain};
use crate::view::{self, Row};

/// Output format of `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Adds the wake phases and the Services.
    Wide,
    /// Machine-readable rows.
    Json,
    /// Machine-readable rows.
    Yaml,
}

/// Where to look.
#[derive(Clone)]
pub struct Scope {
    /// The client.
    pub client: Client,
    /// The namespace (`-n`, else the context's).
    pub namespace: String,
    /// `-A`.
    pub all: bool,
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("namespace", &self.namespace)
            .field("all", &self.all)
            .finish_non_exhaustive()
    }
}

fn list_params() -> ListParams {
    ListParams::default()
}

async fn list<K>(scope: &Scope) -> anyhow::Result<Vec<K>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let api: Api<K> = if scope.all {
        Api::all(scope.client.clone())
    } else {
        Api::namespaced(scope.client.clone(), &scope.namespace)
    };
    Ok(api.list(&list_params()).await?.items)
}

/// Checks that kzscaler runs: its Lease exists (else an error); warns when nobody renews it.
pub async fn check_installed(client: &Client) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), names::SYSTEM_NAMESPACE);
    match api.get_opt(names::LEASE_NAME).await {
        Ok(Some(lease)) => {
            let spec = lease.spec.unwrap_or_default();
            let holder = spec.holder_identity.unwrap_or_default();
            let renewed = spec.renew_time.map(|t| t.0);
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            let stale =
                renewed.is_none_or(|t| Timestamp::now().as_second() - t.as_second() > 3 * duration);
            if holder.is_empty() || stale {
                eprintln!(
                    "warning: no kzscaler controller is running (Lease {}/{} last renewed {} ago): nothing will wake or sleep",
                    names::SYSTEM_NAMESPACE,
                    names::LEASE_NAME,
                    view::age_of(renewed.map(|t| t.to_string()).as_deref(), Timestamp::now())
                );
            }
            Ok(())
        }
        Ok(None) => {
            // Leader election may be off (one replica, --no-leader-elect): then the
            // controller's Deployment is what shows it is installed.
            let deployments: Api<Deployment> =
                Api::namespaced(client.clone(), names::SYSTEM_NAMESPACE);
            match deployments.get_opt("kzscaler-controller").await {
                Ok(Some(_)) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 403 => Ok(()),
                _ => bail!(
                    "kzscaler is not installed: no controller found (no Lease {ns}/{lease} and no Deployment {ns}/kzscaler-controller; install with kubectl apply -k manifests/)",
                    ns = names::SYSTEM_NAMESPACE,
                    lease = names::LEASE_NAME
                ),
            }
        }
        // Not allowed to read Leases: do not stand in the way.
        Err(kube::Error::Api(e)) if e.code == 403 => Ok(()),
        Err(e) => Err(e).context("reading the kzscaler controller's Lease"),
    }
}

/// `status`.
pub async fn status(scope: &Scope, output: Option<Output>) -> anyhow::Result<()> {
    check_installed(&scope.client).await?;
    let (deps, svcs, hpas) = tokio::try_join!(
        list::<Deployment>(scope),
        list::<Service>(scope),
        list::<HorizontalPodAutoscaler>(scope),
    )?;
    let rows = view::rows(&deps, &svcs, &hpas);
    match output {
        Some(Output::Json) => {
            println!("{}", serde_json::to_string_pretty(&rows)?);
            return Ok(());
        }
        Some(Output::Yaml) => {
            print!("{}", serde_yaml_ng::to_string(&rows)?);
            return Ok(());
        }
        _ => {}
    }
    if rows.is_empty() {
        if scope.all {
            eprintln!("No Deployments managed by kzscaler found.");
        } else {
            eprintln!(
                "No Deployments managed by kzscaler found in namespace {}.",
                scope.namespace
            );
        }
        return Ok(());
    }
    let (header, cells) = view::table(
        &rows,
        Timestamp::now(),
        output == Some(Output::Wide),
        scope.all,
    );
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let state_col = header.iter().position(|h| *h == "STATE");
    print!(
        "{}",
        crate::table::render(&header, &cells, state_col.filter(|_| colour))
    );
    // Listing Namespaces may be forbidden: the footer then says so instead of guessing.
    let namespaces: Option<Vec<Namespace>> = Api::all(scope.client.clone())
        .list(&list_params())
        .await
        .map(|l| l.items)
        .ok();
    let pods = list::<Pod>(scope).await?;
    println!();
    for f in view::footers(&rows, namespaces.as_deref(), &pods) {
        println!("{}", view::footer_line(&f));
    }
    for r in &rows {
        if let Some(e) = &r.error {
            println!("error: {}/{}: {e}", r.namespace, r.name);
        }
        for w in &r.warnings {
            println!("warning: {}/{}: {w}", r.namespace, r.name);
        }
    }
    Ok(())
}

/// A Deployment that kzscaler manages, or a one-line error saying why not.
async fn managed(scope: &Scope, name: &str) -> anyhow::Result<(Api<Deployment>, Deployment, Row)> {
    let api: Api<Deployment> = Api::namespaced(scope.client.clone(), &scope.namespace);
    let Some(d) = api.get_opt(name).await? else {
        bail!("no Deployment {name:?} in namespace {:?}", scope.namespace);
    };
    // The whole namespace: whether a Service matches it depends on the other Deployments.
    let (deps, svcs, hpas) = tokio::try_join!(
        list::<Deployment>(scope),
        list::<Service>(scope),
        list::<HorizontalPodAutoscaler>(scope)
    )?;
    let Some(row) = view::row_of(name, &deps, &svcs, &hpas) else {
        bail!(
            "Deployment {:?} in namespace {:?} is not managed by kzscaler (annotate it {}=\"true\")",
            name,
            scope.namespace,
            names::SCALE_TO_ZERO
        );
    };
    Ok((api, d, row))
}

async fn annotate(
    api: &Api<Deployment>,
    name: &str,
    value: serde_json::Value,
) -> anyhow::Result<()> {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": value}})),
    )
    .await
    .with_context(|| format!("annotating Deployment {name:?}"))?;
    Ok(())
}

/// Waits until `done` holds for the Deployment, printing once that it waits. Returns it and
/// how long the wait took.
async fn wait_for(
    api: &Api<Deployment>,
    name: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Deployment) -> bool,
) -> anyhow::Result<(Deployment, Duration)> {
    let start = Instant::now();
    eprintln!(
        "waiting up to {}s for {name} to be {what}...",
        timeout.as_secs()
    );
    loop {
        let d = api.get(name).await?;
        if done(&d) {
            return Ok((d, start.elapsed()));
        }
        if start.elapsed() >= timeout {
            bail!(
                "{name} is not {what} after {}s (see kubectl kzscaler explain {name})",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn counts(d: &Deployment) -> (i32, i32) {
    (
        d.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
        d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
    )
}

/// `wake NAME`.
pub async fn wake(scope: &Scope, name: &str, wait: Option<Duration>) -> anyhow::Result<()> {
    check_installed(&scope.client).await?;
    let (api, _, row) = managed(scope, name).await?;
    if row.error.is_some() {
        bail!("{name} cannot be woken: {}", row.error.unwrap_or_default());
    }
    if row.desired > 0 {
        println!(
            "{name} is {} ({}/{} ready): nothing to wake",
            row.state, row.ready, row.desired
        );
        return Ok(());
    }
    annotate(&api, name, json!({ names::ACTION: "wake" })).await?;
    println!("deployment.apps/{name}: wake requested");
    if let Some(timeout) = wait {
        let (d, took) = wait_for(&api, name, "awake", timeout, |d| {
            let (ready, desired) = counts(d);
            desired > 0 && ready > 0
        })
        .await?;
        let (ready, desired) = counts(&d);
        println!(
            "{name} is awake: {ready}/{desired} ready after {}",
            crate::age::duration(took)
        );
    }
    Ok(())
}

/// `sleep NAME`.
pub async fn sleep(scope: &Scope, name: &str, wait: Option<Duration>) -> anyhow::Result<()> {
    check_installed(&scope.client).await?;
    let (api, _, row) = managed(scope, name).await?;
    if let Some(e) = &row.error {
        bail!("{name} cannot be put to sleep: {e}");
    }
    if row.paused {
        bail!(
            "{name} is paused ({}=\"true\"): run kubectl kzscaler resume {name} first",
            names::PAUSED
        );
    }
    if row.desired == 0 {
        println!("{name} is already asleep");
        return Ok(());
    }
    annotate(&api, name, json!({ names::ACTION: "sleep" })).await?;
    println!("deployment.apps/{name}: sleep requested (a request during the drain cancels it)");
    if let Some(timeout) = wait {
        let (_, took) = wait_for(&api, name, "asleep", timeout, |d| counts(d).1 == 0).await?;
        println!(
            "{name} is asleep: scaled {} -> 0 after {}",
            row.desired,
            crate::age::duration(took)
        );
    }
    Ok(())
}

/// `pause NAME` (`paused` true) and `resume NAME` (false).
pub async fn pause(scope: &Scope, name: &str, paused: bool) -> anyhow::Result<()> {
    let (api, _, row) = managed(scope, name).await?;
    if row.paused == paused {
        println!(
            "{name} is already {}",
            if paused { "paused" } else { "not paused" }
        );
        return Ok(());
    }
    let value = if paused {
        json!("true")
    } else {
        serde_json::Value::Null
    };
    annotate(&api, name, json!({ names::PAUSED: value })).await?;
    if paused {
        println!("deployment.apps/{name} paused: kzscaler will not put it to sleep");
    } else {
        println!(
            "deployment.apps/{name} resumed: it sleeps after {} without requests",
            row.idle_timeout
        );
    }
    Ok(())
}

/// `explain NAME`.
pub async fn explain_one(scope: &Scope, name: &str) -> anyhow::Result<()> {
    check_installed(&scope.client).await?;
    let (_, _, row) = managed(scope, name).await?;
    let events: Api<Event> = Api::namespaced(scope.client.clone(), &scope.namespace);
    let mut lines: Vec<EventLine> = events
        .list(&list_params())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("Deployment") && r.name.as_deref() == Some(name)
            })
        })
        .map(|e| {
            // A repeated Event is one object with a series: its last time is the one to show.
            let at = e
                .series
                .as_ref()
                .map(|s| s.last_observed_time.0)
                .or(e.event_time.map(|t| t.0))
                .or(e.deprecated_last_timestamp.map(|t| t.0))
                .or(e.metadata.creation_timestamp.map(|t| t.0));
            EventLine {
                at: at.map(|t| t.to_string()),
                type_: e.type_.unwrap_or_default(),
                reason: e.reason.unwrap_or_default(),
                note: e.note.unwrap_or_default(),
            }
        })
        .collect();
    lines.sort_by(|a, b| a.at.cmp(&b.at));
    let keep = lines.len().saturating_sub(8);
    print!("{}", explain(&row, &lines[keep..], Timestamp::now()));
    Ok(())
}
