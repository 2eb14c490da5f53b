//! Admission decisions: pure functions from an `AdmissionRequest` to an `AdmissionResponse`.

use std::time::Duration;

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kzscaler_core::names;
use kzscaler_core::spec::ManagedSpec;

use crate::mutate::pod_patch;

/// What a decision was, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed unchanged.
    Admitted,
    /// Allowed with a patch.
    Mutated,
    /// Refused, with a reason.
    Denied,
    /// The request could not be read.
    Error,
}

impl Outcome {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Admitted => "admitted",
            Outcome::Mutated => "mutated",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }
}

/// The name of the WasmPlugin the controller keeps in each opted-in namespace.
pub const WASMPLUGIN_NAME: &str = "kzscaler";

fn request(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, String> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not an AdmissionReview: {e}"))?;
    review
        .try_into()
        .map_err(|e| format!("the AdmissionReview has no request: {e}"))
}

/// Pod CREATE: adds the filter label and the WasmPlugin annotation (idempotent).
pub fn mutate(body: &[u8], wasmplugin: &str) -> (AdmissionResponse, Outcome) {
    let req = match request(body) {
        Ok(r) => r,
        Err(e) => return (AdmissionResponse::invalid(e), Outcome::Error),
    };
    let resp = AdmissionResponse::from(&req);
    let Some(pod) = req.object.as_ref() else {
        return (resp, Outcome::Admitted);
    };
    let namespace = req
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    let ops = pod_patch(
        pod.metadata.labels.as_ref(),
        pod.metadata.annotations.as_ref(),
        &namespace,
        wasmplugin,
    );
    if ops.is_empty() {
        return (resp, Outcome::Admitted);
    }
    match resp.with_patch(json_patch::Patch(ops)) {
        Ok(r) => (r, Outcome::Mutated),
        Err(e) => (
            AdmissionResponse::from(&req)
                .deny(format!("kzscaler: cannot encode the pod patch: {e}")),
            Outcome::Error,
        ),
    }
}

/// What the validating webhook enforces beyond the annotations' own syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The shortest `kzscaler.io/idle-timeout` allowed: the controller's drain period (a
    /// Deployment must stay idle through the drain before it sleeps).
    pub min_idle_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_idle_timeout: DEFAULT_MIN_IDLE_TIMEOUT,
        }
    }
}

/// The default of [`Policy::min_idle_timeout`]: above the controller's default drain period
/// (two 1 s filter polls plus 500 ms).
pub const DEFAULT_MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// Deployment CREATE/UPDATE: refuses kzscaler annotations with values that cannot be used,
/// naming the annotation, the value and what was expected; and keys in the `kzscaler.io/`
/// prefix that kzscaler does not know (a typo would be ignored in silence), listing the
/// known ones. On UPDATE, unknown keys and a short idle timeout are refused only when the
/// update sets them: a Deployment that already has one stays updatable (by the controller
/// too).
pub fn validate(body: &[u8], policy: Policy) -> (AdmissionResponse, Outcome) {
    let req = match request(body) {
        Ok(r) => r,
        Err(e) => return (AdmissionResponse::invalid(e), Outcome::Error),
    };
    let resp = AdmissionResponse::from(&req);
    let Some(obj) = req.object.as_ref() else {
        return (resp, Outcome::Admitted);
    };
    let mut annotations = obj.metadata.annotations.clone().unwrap_or_default();
    let old = req
        .old_object
        .as_ref()
        .and_then(|o| o.metadata.annotations.clone())
        .unwrap_or_default();
    let set_here = |key: &str| annotations.get(key) != old.get(key);
    if let Some(key) = annotations.keys().find(|k| {
        k.starts_with(names::PREFIX)
            && !names::DEPLOYMENT_ANNOTATIONS.contains(&k.as_str())
            && set_here(k)
    }) {
        return (resp.deny(unknown_key(key)), Outcome::Denied);
    }
    let idle_set_here = set_here(names::IDLE_TIMEOUT);
    // Settings on a Deployment that is not (yet) managed are checked too: a typo should not
    // wait until someone turns scale-to-zero on.
    if !annotations.contains_key(names::SCALE_TO_ZERO)
        && annotations.keys().any(|k| k.starts_with(names::PREFIX))
    {
        annotations.insert(names::SCALE_TO_ZERO.to_owned(), "true".to_owned());
    }
    match ManagedSpec::from_annotations(&annotations) {
        Ok(Some(spec)) if idle_set_here && spec.idle_timeout < policy.min_idle_timeout => {
            let value = annotations
                .get(names::IDLE_TIMEOUT)
                .map_or("", String::as_str);
            let msg = format!(
                "kzscaler: annotation {}: {value:?} is not valid: expected at least {} (the controller's drain period: a Deployment stays idle through the drain before it sleeps)",
                names::IDLE_TIMEOUT,
                kzscaler_core::duration::format_duration(policy.min_idle_timeout),
            );
            (resp.deny(msg), Outcome::Denied)
        }
        Ok(_) => (resp, Outcome::Admitted),
        Err(e) => (resp.deny(format!("kzscaler: {e}")), Outcome::Denied),
    }
}

/// The denial of an unknown key, the way kubectl names an unknown field.
fn unknown_key(key: &str) -> String {
    let closest = names::DEPLOYMENT_ANNOTATIONS
        .iter()
        .min_by_key(|k| edit_distance(key, k))
        .filter(|k| edit_distance(key, k) <= 3);
    let hint = closest.map_or(String::new(), |k| format!(" (did you mean {k}?)"));
    format!(
        "kzscaler: unknown annotation \"{key}\"{hint}: the kzscaler.io/ annotations of a Deployment are {}",
        names::DEPLOYMENT_ANNOTATIONS.join(", ")
    )
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn review(kind: &str, object: Value) -> Vec<u8> {
        let (group, version, resource) = match kind {
            "Pod" => ("", "v1", "pods"),
            _ => ("apps", "v1", "deployments"),
        };
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "7f0c5bd6-1111-2222-3333-444455556666",
                "kind": {"group": group, "version": version, "kind": kind},
                "resource": {"group": group, "version": version, "resource": resource},
                "requestKind": {"group": group, "version": version, "kind": kind},
                "requestResource": {"group": group, "version": version, "resource": resource},
                "namespace": "shop",
                "operation": "CREATE",
                "userInfo": {"username": "test"},
                "object": object,
                "dryRun": false
            }
        }))
        .unwrap()
    }

    fn response(r: AdmissionResponse) -> Value {
        serde_json::to_value(r.into_review()).unwrap()["response"].clone()
    }

    #[test]
    fn pod_gets_label_and_annotation_as_a_patch() {
        let body = review(
            "Pod",
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-", "namespace": "shop", "labels": {"app": "web"}}}),
        );
        let (resp, outcome) = mutate(&body, WASMPLUGIN_NAME);
        assert_eq!(outcome, Outcome::Mutated);
        let r = response(resp);
        assert_eq!(r["allowed"], true);
        assert_eq!(r["uid"], "7f0c5bd6-1111-2222-3333-444455556666");
        assert_eq!(r["patchType"], "JSONPatch");
        // kube-core sends the patch as a JSON array of bytes, which the API server accepts:
        // decode it and apply it to the pod, as the API server would.
        let bytes: Vec<u8> = serde_json::from_value(r["patch"].clone()).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-", "namespace": "shop", "labels": {"app": "web"}}});
        json_patch::patch(&mut pod, &patch).unwrap();
        assert_eq!(
            pod["metadata"]["labels"],
            json!({"app": "web", "kzscaler.io/filter": "true"})
        );
        assert_eq!(
            pod["metadata"]["annotations"],
            json!({"kzscaler.io/wasmplugin": "shop/kzscaler",
                "sidecar.istio.io/statsInclusionSuffixes": "membership_total"})
        );
    }

    #[test]
    fn already_injected_pod_is_admitted_unchanged() {
        let body = review(
            "Pod",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "p", "namespace": "shop",
            "labels": {"kzscaler.io/filter": "true"},
            "annotations": {"kzscaler.io/wasmplugin": "shop/kzscaler",
                "sidecar.istio.io/statsInclusionSuffixes": "membership_total"}}}),
        );
        let (resp, outcome) = mutate(&body, WASMPLUGIN_NAME);
        assert_eq!(outcome, Outcome::Admitted);
        assert!(response(resp)["patch"].is_null());
    }

    #[test]
    fn bad_annotation_is_denied_naming_it() {
        let body = review(
            "Deployment",
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "annotations": {
                "kzscaler.io/scale-to-zero": "true", "kzscaler.io/idle-timeout": "10"}}}),
        );
        let (resp, outcome) = validate(&body, Policy::default());
        assert_eq!(outcome, Outcome::Denied);
        let r = response(resp);
        assert_eq!(r["allowed"], false);
        let msg = r["status"]["message"].as_str().unwrap();
        assert!(
            msg.contains("kzscaler.io/idle-timeout") && msg.contains("\"10\""),
            "{msg}"
        );
    }

    #[test]
    fn bad_settings_on_an_unmanaged_deployment_are_denied_too() {
        let body = review(
            "Deployment",
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "annotations": {
                "kzscaler.io/wake-timeout": "forever"}}}),
        );
        let (resp, outcome) = validate(&body, Policy::default());
        assert_eq!(outcome, Outcome::Denied);
        let msg = response(resp)["status"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            msg.contains("kzscaler.io/wake-timeout") && msg.contains("forever"),
            "{msg}"
        );
    }

    #[test]
    fn good_and_unmanaged_deployments_are_admitted() {
        for ann in [
            json!({}),
            json!({"kzscaler.io/scale-to-zero": "true", "kzscaler.io/idle-timeout": "5m"}),
        ] {
            let body = review(
                "Deployment",
                json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "shop", "annotations": ann}}),
            );
            assert_eq!(validate(&body, Policy::default()).1, Outcome::Admitted);
        }
    }

    fn deployment_update(old: Value, new: Value) -> Vec<u8> {
        let mut review: Value = serde_json::from_slice(&review(
            "Deployment",
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "shop", "annotations": new}}),
        ))
        .unwrap();
        review["request"]["operation"] = json!("UPDATE");
        review["request"]["oldObject"] = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "annotations": old}});
        serde_json::to_vec(&review).unwrap()
    }

    fn denial(body: &[u8]) -> String {
        let (resp, outcome) = validate(body, Policy::default());
        assert_eq!(outcome, Outcome::Denied);
        response(resp)["status"]["message"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn a_misspelled_key_is_denied_with_the_known_ones() {
        let body = review(
            "Deployment",
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "annotations": {
                "kzscaler.io/scale-to-zero": "true", "kzscaler.io/idel-timeout": "5m"}}}),
        );
        let msg = denial(&body);
        assert!(
            msg.contains(r#"unknown annotation "kzscaler.io/idel-timeout""#)
                && msg.contains("did you mean kzscaler.io/idle-timeout?")
                && msg.contains("kzscaler.io/wake-timeout, kzscaler.io/wake-replicas"),
            "{msg}"
        );
    }

    #[test]
    fn an_idle_timeout_shorter_than_the_drain_is_denied_naming_the_minimum() {
        let body = review(
            "Deployment",
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "annotations": {
                "kzscaler.io/scale-to-zero": "true", "kzscaler.io/idle-timeout": "1ms"}}}),
        );
        let msg = denial(&body);
        assert!(
            msg.contains("kzscaler.io/idle-timeout")
                && msg.contains(r#""1ms""#)
                && msg.contains("at least 3s"),
            "{msg}"
        );
        let lower = Policy {
            min_idle_timeout: Duration::from_millis(1),
        };
        assert_eq!(validate(&body, lower).1, Outcome::Admitted);
    }

    #[test]
    fn an_update_that_keeps_an_old_unknown_key_or_short_timeout_is_admitted() {
        // The controller annotates Deployments that predate the webhook: its writes must not
        // be refused for what it did not set.
        let old = json!({"kzscaler.io/scale-to-zero": "true", "kzscaler.io/idel-timeout": "5m",
            "kzscaler.io/idle-timeout": "1s"});
        let mut new = old.clone();
        new["kzscaler.io/state"] = json!("asleep");
        let body = deployment_update(old.clone(), new);
        assert_eq!(validate(&body, Policy::default()).1, Outcome::Admitted);
        let mut typo = old.clone();
        typo["kzscaler.io/pasued"] = json!("true");
        let msg = denial(&deployment_update(old, typo));
        assert!(
            msg.contains("kzscaler.io/pasued") && msg.contains("did you mean kzscaler.io/paused?"),
            "{msg}"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_crash() {
        let (resp, outcome) = mutate(b"{not json", WASMPLUGIN_NAME);
        assert_eq!(outcome, Outcome::Error);
        let r = response(resp);
        assert_eq!(r["allowed"], false);
        assert!(
            r["status"]["message"]
                .as_str()
                .unwrap()
                .contains("AdmissionReview")
        );
    }
}
