//! What `status` and `explain` show, computed from API objects alone (pure: no I/O here).
//!
//! ```text
//!  Deployments, Services, HPAs, Pods, Namespaces ──▶ rows() / footer() ──▶ table.rs or JSON/YAML
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kzscaler_core::{ManagedSpec, format_duration, names};
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
    /// Replicas a wake scales to (as the controller computes it).
    pub wake_replicas: u32,
    /// `kzscaler.io/last-wake`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_wake: Option<Wake>,
    /// Services that select its pods.
    pub services: Vec<String>,
    /// An HPA targeting it: `name (min..max)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hpa: Option<Hpa>,
    /// Why kzscaler ignores it, when its annotations are wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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

/// The state as kubectl kzscaler shows it.
pub fn state(desired: i32, ready: i32, recorded: Option<&str>, invalid: bool) -> &'static str {
    if invalid {
        "invalid"
    } else if desired == 0 {
        "asleep"
    } else if ready == 0 {
        "waking"
    } else if recorded == Some("draining") {
        "draining"
    } else {
        "awake"
    }
}

/// Whether a Deployment is kzscaler's business: managed, or with kzscaler settings that are
/// wrong (so the user sees why nothing happens).
fn concerns_kzscaler(a: &BTreeMap<String, String>) -> bool {
    a.get(names::SCALE_TO_ZERO).map(|v| v.trim()) != Some("false")
        && a.keys().any(|k| k == names::SCALE_TO_ZERO)
}

/// Rows for the Deployments kzscaler manages (or would, but for an annotation error), sorted
/// by namespace and name.
pub fn rows(
    deployments: &[Deployment],
    services: &[Service],
    hpas: &[HorizontalPodAutoscaler],
) -> Vec<Row> {
    let mut out: Vec<Row> = deployments
        .iter()
        .filter_map(|d| row(d, services, hpas))
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// The row of one Deployment, if kzscaler concerns it.
pub fn row(d: &Deployment, services: &[Service], hpas: &[HorizontalPodAutoscaler]) -> Option<Row> {
    let a = annotations(d);
    if !concerns_kzscaler(&a) {
        return None;
    }
    let namespace = d.metadata.namespace.clone().unwrap_or_default();
    let name = d.metadata.name.clone().unwrap_or_default();
    let (spec, mut error) = match ManagedSpec::from_annotations(&a) {
        Ok(Some(s)) => (Some(s), None),
        Ok(None) => return None,
        Err(e) => (None, Some(e.to_string())),
    };
    // Written by the controller; a bad value makes it ignore the annotation (with an Event).
    let before_sleep = kzscaler_core::spec::replicas_before_sleep(&a);
    if error.is_none()
        && let Err(e) = &before_sleep
    {
        error = Some(e.to_string());
    }
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = d
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let template_labels = d
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let mut svc: Vec<String> = services
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .filter(|s| {
            let sel = s.spec.as_ref().and_then(|sp| sp.selector.clone());
            sel.is_some_and(|sel| {
                !sel.is_empty() && sel.iter().all(|(k, v)| template_labels.get(k) == Some(v))
            })
        })
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    svc.sort();
    let hpa = hpas
        .iter()
        .filter(|h| h.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .find(|h| {
            h.spec.scale_target_ref.kind == "Deployment" && h.spec.scale_target_ref.name == name
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
        idle_timeout: spec
            .as_ref()
            .map_or("-".to_owned(), |s| dur(s.idle_timeout)),
        wake_timeout: spec
            .as_ref()
            .map_or("-".to_owned(), |s| dur(s.wake_timeout)),
        paused: spec.as_ref().is_some_and(|s| s.paused),
        last_request: a.get(names::LAST_REQUEST).cloned(),
        slept_at: a.get(names::SLEPT_AT).cloned(),
        replicas_before_sleep: a.get(names::REPLICAS_BEFORE_SLEEP).cloned(),
        wake_replicas: kzscaler_core::spec::wake_replicas(
            hpa.as_ref().and_then(|h| u32::try_from(h.min).ok()),
            before_sleep.ok().flatten(),
            spec.as_ref().and_then(|s| s.wake_replicas),
        ),
        last_wake: a
            .get(names::LAST_WAKE)
            .and_then(|v| serde_json::from_str(v).ok()),
        services: svc,
        hpa,
        error,
        namespace,
        name,
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
