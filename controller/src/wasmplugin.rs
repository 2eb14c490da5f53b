//! One Istio WasmPlugin per opted-in namespace, kept by the controller.
//!
//! ```text
//!  Namespaces (watch) ──┐                      opted in: server-side apply WasmPlugin "kzscaler"
//!  every resync period ─┴─▶ reconcile_all ──▶ (selects kzscaler.io/filter=true, FAIL_OPEN,
//!                                              module URL + sha256, plugin config, owned by the
//!                                              Namespace); drift is put back on the next pass
//!                                             not opted in: delete ours
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::runtime::reflector;
use kube::{Api, Client};
use kzscaler_core::names;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// The WasmPlugin's name in every opted-in namespace (the webhook's annotation names it).
pub const NAME: &str = "kzscaler";
/// Label on the WasmPlugins kzscaler owns.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "kzscaler");
const FIELD_MANAGER: &str = "kzscaler-controller";

/// What every WasmPlugin carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Where sidecars fetch the module (`oci://`, `http(s)://`, `file://`).
    pub url: String,
    /// The module's sha256 (hex), when known.
    pub sha256: Option<String>,
    /// The filter's plugin configuration.
    pub plugin_config: Value,
}

/// The API resource of Istio's WasmPlugin.
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "extensions.istio.io",
        "v1alpha1",
        "WasmPlugin",
    ))
}

/// Whether the namespace asks for the filter (and is not being deleted).
pub fn opted_in(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none()
        && ns
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(names::INJECTION_LABEL))
            .is_some_and(|v| v == names::INJECTION_ENABLED)
}

/// The WasmPlugin an opted-in namespace should have.
pub fn desired(ns: &Namespace, s: &Settings) -> Option<Value> {
    let name = ns.metadata.name.as_ref()?;
    let uid = ns.metadata.uid.as_ref()?;
    let mut spec = json!({
        "selector": {"matchLabels": {names::FILTER_LABEL: "true"}},
        "url": s.url,
        "pluginName": "kzscaler",
        "failStrategy": "FAIL_OPEN",
        "phase": "UNSPECIFIED_PHASE",
        "pluginConfig": s.plugin_config,
        "match": [{"mode": "CLIENT_AND_SERVER"}],
    });
    if let Some(sha) = &s.sha256 {
        spec["sha256"] = json!(sha);
    }
    Some(json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {
            "name": NAME,
            "namespace": name,
            "labels": {MANAGED_BY.0: MANAGED_BY.1},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Namespace", "name": name, "uid": uid,
                                  "blockOwnerDeletion": false, "controller": true}]
        },
        "spec": spec
    }))
}

/// Whether an existing WasmPlugin's spec differs from the desired one in a field we set.
pub fn drifted(existing: &DynamicObject, desired: &Value) -> bool {
    let have = existing.data.get("spec").cloned().unwrap_or(Value::Null);
    let Some(want) = desired.get("spec").and_then(Value::as_object) else {
        return true;
    };
    want.iter().any(|(k, v)| have.get(k) != Some(v))
}

/// Applies or deletes WasmPlugins until the process ends: on every Namespace change, and every
/// `resync` to put back what someone edited.
pub async fn run(
    client: Client,
    settings: Arc<Settings>,
    resync: Duration,
    mut leadership: tokio::sync::watch::Receiver<crate::lease::Leadership>,
    namespace_selector: Option<String>,
) {
    let (store, writer) = reflector::store::<Namespace>();
    let changed = Arc::new(Notify::new());
    let mut config = kube::runtime::watcher::Config::default();
    if let Some(sel) = namespace_selector {
        config = config.labels(&sel);
    }
    // Only namespaces in this controller's scope are touched, created in or deleted from.
    crate::watch::spawn_reflector_with(
        writer,
        Api::all(client.clone()),
        config,
        changed.clone(),
        "namespaces",
    );
    if store.wait_until_ready().await.is_err() {
        tracing::error!(
            "the namespace watch ended before its first list; WasmPlugins are not managed"
        );
        return;
    }
    loop {
        // Only the leader writes WasmPlugins, inside its term (a leader resumed after a pause
        // past its term writes nothing), and for no longer than the term lasts.
        let term = leadership.borrow_and_update().term_left();
        if let Some(left) = term {
            let namespaces = store.state();
            let pass = reconcile_all(&client, &namespaces, &settings);
            if tokio::time::timeout(left.min(crate::lease::WRITE_TIMEOUT * 3), pass)
                .await
                .is_err()
            {
                tracing::warn!(
                    "WasmPlugin reconcile abandoned: the leadership term ended or the API server was too slow"
                );
            }
        }
        tokio::select! {
            () = changed.notified() => tokio::time::sleep(Duration::from_millis(20)).await,
            () = tokio::time::sleep(resync) => {}
            r = leadership.changed() => if r.is_err() { return },
        }
    }
}

async fn reconcile_all(client: &Client, namespaces: &[Arc<Namespace>], s: &Settings) {
    let ar = api_resource();
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let ours = match all
        .list(&ListParams::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)))
        .await
    {
        Ok(l) => l.items,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list WasmPlugins (are Istio's CRDs installed?); retrying later");
            return;
        }
    };
    let existing: BTreeMap<String, &DynamicObject> = ours
        .iter()
        .filter_map(|w| Some((w.metadata.namespace.clone()?, w)))
        .collect();
    for ns in namespaces {
        let Some(name) = ns.metadata.name.as_deref() else {
            continue;
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), name, &ar);
        if opted_in(ns) {
            let Some(want) = desired(ns, s) else { continue };
            if existing.get(name).is_some_and(|w| !drifted(w, &want)) {
                continue;
            }
            let pp = PatchParams::apply(FIELD_MANAGER).force();
            match api.patch(NAME, &pp, &Patch::Apply(&want)).await {
                Ok(_) => tracing::info!(namespace = name, "WasmPlugin applied"),
                Err(e) => {
                    tracing::warn!(namespace = name, error = %e, "cannot apply the WasmPlugin")
                }
            }
        } else if existing.contains_key(name) {
            match api.delete(NAME, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(namespace = name, "namespace opted out: WasmPlugin deleted")
                }
                Err(e) => {
                    tracing::warn!(namespace = name, error = %e, "cannot delete the WasmPlugin")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(labels: Value) -> Namespace {
        serde_json::from_value(
            json!({"metadata": {"name": "shop", "uid": "u-1", "labels": labels}}),
        )
        .unwrap()
    }

    fn settings() -> Settings {
        Settings {
            url: "http://kzscaler-controller.kzscaler-system:8080/v1/module".into(),
            sha256: Some("ab".repeat(32)),
            plugin_config: json!({"poll_period_ms": 1000}),
        }
    }

    #[test]
    fn only_labelled_namespaces_are_opted_in() {
        assert!(opted_in(&ns(json!({"kzscaler.io/injection": "enabled"}))));
        assert!(!opted_in(&ns(json!({"kzscaler.io/injection": "disabled"}))));
        assert!(!opted_in(&ns(json!({}))));
    }

    #[test]
    fn desired_plugin_selects_the_injected_label_fails_open_and_is_owned() {
        let w = desired(
            &ns(json!({"kzscaler.io/injection": "enabled"})),
            &settings(),
        )
        .unwrap();
        assert_eq!(
            w["spec"]["selector"]["matchLabels"]["kzscaler.io/filter"],
            "true"
        );
        assert_eq!(w["spec"]["failStrategy"], "FAIL_OPEN");
        assert_eq!(w["spec"]["sha256"], "ab".repeat(32));
        assert_eq!(w["spec"]["pluginConfig"]["poll_period_ms"], 1000);
        assert_eq!(w["metadata"]["ownerReferences"][0]["kind"], "Namespace");
        assert_eq!(w["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(w["metadata"]["name"], NAME);
    }

    #[test]
    fn drift_is_any_field_we_set_that_differs() {
        let want = desired(&ns(json!({})), &settings()).unwrap();
        let mut have: DynamicObject = serde_json::from_value(want.clone()).unwrap();
        assert!(!drifted(&have, &want));
        have.data["spec"]["failStrategy"] = json!("FAIL_CLOSE");
        assert!(drifted(&have, &want));
    }
}
