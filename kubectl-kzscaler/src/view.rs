//! What `status` and `explain` show, computed from API objects alone (pure: no I/O here).
//! What is managed, which Services match, and what a wake scales to come from the
//! controller's own index (`kzscaler_core::index`), so the two never disagree.
//!
//! ```text
//!  Deployments, Services, HPAs ──▶ Index ──▶ rows() ─┐
//!  Pods, Namespaces ────────────────────────▶ footers() ──▶ table.rs or JSON/YAML
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kzscaler_core::index::Index;
use kzscaler_core::managed::{Key, Managed, state_of};
use kzscaler_core::wire::State;
use kzscaler_core::{format_duration, names};
use serde::Serialize;

use crate::age;

/// One managed Deployment (or one whose kzscaler annotations are wrong).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// Namespace.
    pub namespace: String,
    /// Deployment name.
    pub name: String,
    /// awake, draining, asleep, waking, or invalid.
    pub state: &'static str,
    /// `status.readyReplicas`.
    pub ready: i32,
    /// `spec.replicas`.
    pub desired: i32,
    /// `kzscaler.io/idle-timeout` (or the default).
    pub idle_timeout: String,
    /// `kzscaler.io/wake-timeout` (or the default).
    pub wake_timeout: String,
    /// `kzscaler.io/paused`.
    pub paused: bool,
    /// `kzscaler.io/last-request` (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_request: Option<String>,
    /// `kzscaler.io/slept-at` (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slept_at: Option<String>,
    /// `kzscaler.io/replicas-before-sleep`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas_before_sleep: Option<String>,
    /// Replicas a wake scales to (as the controller computes it; 0 when it ignores the
    /// Deployment).
    pub wake_replicas: u32,
    /// `kzscaler.io/last-wake`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_wake: Option<Wake>,
    /// Services matched to it: its destinations (as the controller matches them).
    pub services: Vec<String>,
    /// An HPA targeting it: `name (min..max)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hpa: Option<Hpa>,
    /// Why kzscaler ignores it, when its annotations are wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What kzscaler ignores about it while managing it: a bad value, a Service selecting
    /// other managed Deployments too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The phases of the last wake, in ms from the first request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Wake {
    /// Replicas asked for.
    pub replicas: u32,
    /// Until the scale call returned.
    #[serde(alias = "scale_ms")]
    pub scale_ms: u64,
    /// Until a pod was ready.
    #[serde(alias = "pod_ready_ms")]
    pub pod_ready_ms: Option<u64>,
    /// Until a ready endpoint was listed.
    #[serde(alias = "endpoint_ready_ms")]
    pub endpoint_ready_ms: Option<u64>,
}

impl Wake {
    /// The whole wake: until the endpoint was ready (or the last phase seen).
    pub fn total_ms(&self) -> u64 {
        self.endpoint_ready_ms
            .or(self.pod_ready_ms)
            .unwrap_or(self.scale_ms)
    }

    /// `scale=6ms,pod=66ms,endpoint=70ms`.
    pub fn phases(&self) -> String {
        let f = |ms: Option<u64>| ms.map_or("-".to_owned(), age::millis);
        format!(
            "scale={},pod={},endpoint={}",
            age::millis(self.scale_ms),
            f(self.pod_ready_ms),
            f(self.endpoint_ready_ms)
        )
    }
}

/// An HPA on a Deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hpa {
    /// Its name.
    pub name: String,
    /// minReplicas (default 1).
    pub min: i32,
    /// maxReplicas.
    pub max: i32,
}

/// Injection in one namespace: who can wake what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Footer {
    /// The namespace.
    pub namespace: String,
    /// Labelled `kzscaler.io/injection=enabled` (None: namespaces could not be read).
    pub injection: Option<bool>,
    /// Pods carrying the filter label.
    pub with_filter: usize,
    /// All pods.
    pub pods: usize,
}

fn annotations(d: &Deployment) -> BTreeMap<String, String> {
    d.metadata.annotations.clone().unwrap_or_default()
}

/// The state as kubectl kzscaler shows it: the controller's rule for a Deployment
/// ([`state_of`], over its ready replicas here), with the drain it recorded.
pub fn state(desired: i32, ready: i32, recorded: Option<&str>, invalid: bool) -> &'static str {
    if invalid {
        return "invalid";
    }
    match state_of(desired, usize::try_from(ready).unwrap_or(0)) {
        State::Asleep => "asleep",
        State::Waking => "waking",
        _ if recorded == Some("draining") => "draining",
        _ => "awake",
    }
}

/// The index the controller keeps, over these objects: the one place that decides what is
/// managed, which Services match which Deployment, and what a wake scales to.
fn index(
    deployments: &[Deployment],
    services: &[Service],
    hpas: &[HorizontalPodAutoscaler],
) -> Index {
    // The plugin lists no EndpointSlices: its state reads the Deployment's ready replicas.
    Index::from_refs(deployments, services, [], hpas, "cluster.local")
}

/// Rows for the Deployments kzscaler manages (or would, but for an annotation error), sorted
/// by namespace and name.
pub fn rows(
    deployments: &[Deployment],
    services: &[Service],
    hpas: &[HorizontalPodAutoscaler],
) -> Vec<Row> {
    let index = index(deployments, services, hpas);
    let mut out: Vec<Row> = deployments
        .iter()
        .filter_map(|d| row(d, &index, hpas))
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// The row of the Deployment `name` among `deployments` (its whole namespace: whether a
/// Service matches it depends on the others), if kzscaler concerns it.
pub fn row_of(
    name: &str,
    deployments: &[Deployment],
    services: &[Service],
    hpas: &[HorizontalPodAutoscaler],
) -> Option<Row> {
    let d = deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some(name))?;
    row(d, &index(deployments, services, hpas), hpas)
}

/// The row of one Deployment, as the index sees it.
fn row(d: &Deployment, index: &Index, hpas: &[HorizontalPodAutoscaler]) -> Option<Row> {
    let key = Key {
        namespace: d.metadata.namespace.clone().unwrap_or_default(),
        name: d.metadata.name.clone().unwrap_or_default(),
    };
    let managed = index.managed().get(&key);
    let problem = index.problem("Deployment", &key).map(|p| p.message.clone());
    // Kzscaler's business: managed, or with kzscaler settings that are wrong (so the user
    // sees why nothing happens); the index decides both.
    let (error, warnings) = match (managed, problem) {
        (None, None) => return None,
        (None, Some(p)) => (Some(p), Vec::new()),
        // Managed, with a value it ignores (a bad count before sleep) or a Service it
        // ignores (one selecting several managed Deployments).
        (Some(_), p) => (
            None,
            p.into_iter()
                .chain(
                    index
                        .ignored_services_of(&key)
                        .into_iter()
                        .map(|p| p.message.clone()),
                )
                .collect(),
        ),
    };
    let a = annotations(d);
    let spec = managed.map(|m| &m.spec);
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = d
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let hpa = hpas
        .iter()
        .filter(|h| h.metadata.namespace.as_deref() == Some(key.namespace.as_str()))
        .find(|h| {
            h.spec.scale_target_ref.kind == "Deployment" && h.spec.scale_target_ref.name == key.name
        })
        .map(|h| Hpa {
            name: h.metadata.name.clone().unwrap_or_default(),
            min: h.spec.min_replicas.unwrap_or(1),
            max: h.spec.max_replicas,
        });
    let dur = |d: std::time::Duration| format_duration(d);
    Some(Row {
        state: state(
            desired,
            ready,
            a.get(names::STATE).map(String::as_str),
            error.is_some(),
        ),
        ready,
        desired,
        idle_timeout: spec.map_or("-".to_owned(), |s| dur(s.idle_timeout)),
        wake_timeout: spec.map_or("-".to_owned(), |s| dur(s.wake_timeout)),
        paused: spec.is_some_and(|s| s.paused),
        last_request: a.get(names::LAST_REQUEST).cloned(),
        slept_at: a.get(names::SLEPT_AT).cloned(),
        replicas_before_sleep: a.get(names::REPLICAS_BEFORE_SLEEP).cloned(),
        // What the controller would scale to; an ignored Deployment is not woken.
        wake_replicas: managed.map_or(0, Managed::wake_replicas),
        last_wake: a
            .get(names::LAST_WAKE)
            .and_then(|v| serde_json::from_str(v).ok()),
        services: index.services_of(&key).to_vec(),
        hpa,
        error,
        warnings,
        namespace: key.namespace,
        name: key.name,
    })
}

/// Injection and filter coverage of each namespace that has rows.
pub fn footers(rows: &[Row], namespaces: Option<&[Namespace]>, pods: &[Pod]) -> Vec<Footer> {
    let mut names_seen: Vec<&str> = rows.iter().map(|r| r.namespace.as_str()).collect();
    names_seen.dedup();
    names_seen
        .into_iter()
        .map(|ns| {
            let injection = namespaces.map(|all| {
                all.iter()
                    .find(|n| n.metadata.name.as_deref() == Some(ns))
                    .and_then(|n| n.metadata.labels.as_ref())
                    .and_then(|l| l.get(names::INJECTION_LABEL))
                    .is_some_and(|v| v == names::INJECTION_ENABLED)
            });
            let here: Vec<&Pod> = pods
                .iter()
                .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
                .collect();
            let with_filter = here
                .iter()
                .filter(|p| {
                    p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(names::FILTER_LABEL))
                        .is_some_and(|v| v == "true")
                })
                .count();
            Footer {
                namespace: ns.to_owned(),
                injection,
                with_filter,
                pods: here.len(),
            }
        })
        .collect()
}

/// The age of an RFC 3339 timestamp at `now`, like `kubectl get` prints it; `<none>` when
/// absent or unreadable.
pub fn age_of(at: Option<&str>, now: Timestamp) -> String {
    at.and_then(|v| v.parse::<Timestamp>().ok())
        .map_or("<none>".to_owned(), |t| {
            age::human(now.as_second() - t.as_second())
        })
}

/// The table's header and cells for `rows`; `wide` adds the wake phases and the Services,
/// `all_namespaces` the NAMESPACE column.
pub fn table(
    rows: &[Row],
    now: Timestamp,
    wide: bool,
    all_namespaces: bool,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let mut header = vec![
        "NAME",
        "STATE",
        "REPLICAS",
        "IDLE-TIMEOUT",
        "LAST-REQUEST",
        "SLEPT",
        "LAST-WAKE",
    ];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    if wide {
        header.extend(["WAKE-PHASES", "SERVICES"]);
    }
    let cells = rows
        .iter()
        .map(|r| {
            let mut c = vec![
                r.name.clone(),
                r.state.to_owned(),
                format!("{}/{}", r.ready, r.desired),
                if r.paused {
                    "paused".to_owned()
                } else {
                    r.idle_timeout.clone()
                },
                age_of(r.last_request.as_deref(), now),
                age_of(r.slept_at.as_deref(), now),
                r.last_wake
                    .as_ref()
                    .map_or("<none>".to_owned(), |w| age::millis(w.total_ms())),
            ];
            if all_namespaces {
                c.insert(0, r.namespace.clone());
            }
            if wide {
                c.push(
                    r.last_wake
                        .as_ref()
                        .map_or("<none>".to_owned(), Wake::phases),
                );
                c.push(if r.services.is_empty() {
                    "<none>".to_owned()
                } else {
                    r.services.join(",")
                });
            }
            c
        })
        .collect();
    (header, cells)
}

/// The footer line of one namespace.
pub fn footer_line(f: &Footer) -> String {
    if f.injection.is_none() {
        return format!(
            "namespace {}: injection unknown (cannot read Namespaces); {}/{} pods carry the filter",
            f.namespace, f.with_filter, f.pods
        );
    }
    if f.injection == Some(true) {
        format!(
            "namespace {}: injection on ({}={}); {}/{} pods carry the filter and can wake managed services",
            f.namespace,
            names::INJECTION_LABEL,
            names::INJECTION_ENABLED,
            f.with_filter,
            f.pods
        )
    } else {
        format!(
            "namespace {}: injection off; {}/{} pods carry the filter (label the namespace {}={} so its pods can wake services)",
            f.namespace,
            f.with_filter,
            f.pods,
            names::INJECTION_LABEL,
            names::INJECTION_ENABLED
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(name: &str, replicas: i32, ready: i32, ann: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": name, "annotations": ann},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}}},
            "status": {"readyReplicas": ready}
        }))
        .unwrap()
    }

    fn service(name: &str, app: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": name},
            "spec": {"selector": {"app": app}}
        }))
        .unwrap()
    }

    #[test]
    fn state_follows_replicas_and_the_recorded_drain() {
        assert_eq!(state(0, 0, Some("awake"), false), "asleep");
        assert_eq!(state(2, 0, Some("asleep"), false), "waking");
        assert_eq!(state(2, 2, Some("draining"), false), "draining");
        assert_eq!(state(2, 2, None, false), "awake");
        assert_eq!(state(2, 2, None, true), "invalid");
    }

    #[test]
    fn rows_cover_managed_and_misconfigured_deployments_only() {
        let deps = [
            deployment(
                "web",
                2,
                2,
                json!({"kzscaler.io/scale-to-zero": "true", "kzscaler.io/idle-timeout": "7m",
                       "kzscaler.io/last-wake": r#"{"replicas":2,"scale_ms":6,"pod_ready_ms":60,"endpoint_ready_ms":70}"#}),
            ),
            deployment("plain", 1, 1, json!({})),
            deployment("off", 1, 1, json!({"kzscaler.io/scale-to-zero": "false"})),
            deployment(
                "typo",
                1,
                1,
                json!({"kzscaler.io/scale-to-zero": "true", "kzscaler.io/idle-timeout": "soon"}),
            ),
        ];
        let rows = rows(&deps, &[service("web", "web"), service("db", "db")], &[]);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["typo", "web"]);
        let typo = &rows[0];
        assert_eq!(typo.state, "invalid");
        assert!(
            typo.error
                .as_deref()
                .is_some_and(|e| e.contains("kzscaler.io/idle-timeout: \"soon\"")),
            "{typo:?}"
        );
        let web = &rows[1];
        assert_eq!((web.state, web.idle_timeout.as_str()), ("awake", "7m"));
        assert_eq!(web.services, ["web"]);
        assert_eq!(web.last_wake.as_ref().map(Wake::total_ms), Some(70));
    }

    fn hpa(name: &str, target: &str, min: i32) -> HorizontalPodAutoscaler {
        serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": name},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
                     "minReplicas": min, "maxReplicas": 9}
        }))
        .unwrap()
    }

    #[test]
    fn a_service_selecting_two_managed_deployments_is_ignored_for_both_as_the_controller_does() {
        let managed = json!({"kzscaler.io/scale-to-zero": "true"});
        let mut api = deployment("api", 1, 1, managed.clone());
        let mut worker = deployment("worker", 1, 1, managed);
        for (d, role) in [(&mut api, "api"), (&mut worker, "worker")] {
            let labels = &mut d
                .spec
                .as_mut()
                .unwrap()
                .template
                .metadata
                .as_mut()
                .unwrap()
                .labels;
            *labels = Some(BTreeMap::from([
                ("tier".to_owned(), "back".to_owned()),
                ("role".to_owned(), role.to_owned()),
            ]));
        }
        let tier = service("tier", "unused");
        let mut tier = tier;
        tier.spec.as_mut().unwrap().selector =
            Some(BTreeMap::from([("tier".to_owned(), "back".to_owned())]));
        let mut own = service("api", "unused");
        own.spec.as_mut().unwrap().selector =
            Some(BTreeMap::from([("role".to_owned(), "api".to_owned())]));
        let rows = rows(&[api, worker], &[tier, own], &[]);
        assert_eq!(
            rows[0].services,
            ["api"],
            "the ambiguous Service is not api's"
        );
        assert!(rows[1].services.is_empty());
        for r in &rows {
            assert_eq!(r.state, "awake", "{r:?}");
            assert!(
                r.warnings.len() == 1 && r.warnings[0].contains("Service tier selects 2"),
                "{r:?}"
            );
        }
    }

    #[test]
    fn a_bad_count_before_sleep_is_a_warning_on_a_managed_deployment_not_an_error() {
        let d = deployment(
            "web",
            1,
            1,
            json!({"kzscaler.io/scale-to-zero": "true", "kzscaler.io/replicas-before-sleep": "lots"}),
        );
        let rows = rows(&[d], &[service("web", "web")], &[]);
        assert_eq!(rows[0].state, "awake");
        assert_eq!(rows[0].error, None);
        assert!(rows[0].warnings[0].contains("\"lots\""), "{:?}", rows[0]);
        assert_eq!(rows[0].wake_replicas, 1);
    }

    #[test]
    fn a_wake_scales_to_the_largest_hpa_minimum_as_the_controller_computes_it() {
        let d = deployment("web", 0, 0, json!({"kzscaler.io/scale-to-zero": "true"}));
        let hpas = [hpa("small", "web", 2), hpa("large", "web", 4)];
        let rows = rows(&[d], &[], &hpas);
        assert_eq!(rows[0].wake_replicas, 4);
    }

    #[test]
    fn table_masks_nothing_and_adds_columns_for_wide_and_all_namespaces() {
        let now: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
        let d = deployment(
            "web",
            0,
            0,
            json!({"kzscaler.io/scale-to-zero": "true", "kzscaler.io/slept-at": "2026-11-28T11:55:00Z",
                   "kzscaler.io/last-request": "2026-11-28T11:44:30Z"}),
        );
        let rows = rows(&[d], &[], &[]);
        let (h, c) = table(&rows, now, false, false);
        assert_eq!(
            h,
            [
                "NAME",
                "STATE",
                "REPLICAS",
                "IDLE-TIMEOUT",
                "LAST-REQUEST",
                "SLEPT",
                "LAST-WAKE"
            ]
        );
        assert_eq!(c[0], ["web", "asleep", "0/0", "10m", "15m", "5m", "<none>"]);
        let (h, c) = table(&rows, now, true, true);
        assert_eq!(h.len(), 10);
        assert_eq!(c[0][0], "shop");
        assert_eq!(c[0][9], "<none>");
    }

    #[test]
    fn footer_says_who_can_wake_what() {
        let f = Footer {
            namespace: "shop".into(),
            injection: Some(true),
            with_filter: 3,
            pods: 5,
        };
        assert_eq!(
            footer_line(&f),
            "namespace shop: injection on (kzscaler.io/injection=enabled); 3/5 pods carry the filter and can wake managed services"
        );
    }
}
