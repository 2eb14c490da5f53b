//! Admission decisions: pure functions from an `AdmissionRequest` to an `AdmissionResponse`.

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

/// Deployment CREATE/UPDATE: refuses kzscaler annotations with values that cannot be used,
/// naming the annotation, the value and what was expected.
pub fn validate(body: &[u8]) -> (AdmissionResponse, Outcome) {
    let req = match request(body) {
        Ok(r) => r,
        Err(e) => return (AdmissionResponse::invalid(e), Outcome::Error),
    };
    let resp = AdmissionResponse::from(&req);
    let Some(obj) = req.object.as_ref() else {
        return (resp, Outcome::Admitted);
    };
    let mut annotations = obj.metadata.annotations.clone().unwrap_or_default();
    // Settings on a Deployment that is not (yet) managed are checked too: a typo should not
    // wait until someone turns scale-to-zero on.
    if !annotations.contains_key(names::SCALE_TO_ZERO)
        && annotations.keys().any(|k| k.starts_with("kzscaler.io/"))
    {
        annotations.insert(names::SCALE_TO_ZERO.to_owned(), "true".to_owned());
    }
    match ManagedSpec::from_annotations(&annotations) {
        Ok(_) => (resp, Outcome::Admitted),
        Err(e) => (resp.deny(format!("kzscaler: {e}")), Outcome::Denied),
    }
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
        // kube-core sends the patch as a JSON array of bytes, which the API server accepts.
        let bytes: Vec<u8> = serde_json::from_value(r["patch"].clone()).unwrap();
        let patch = String::from_utf8(bytes).unwrap();
        assert!(
            patch.contains("/metadata/labels/kzscaler.io~1filter"),
            "{patch}"
        );
        assert!(patch.contains("shop/kzscaler"), "{patch}");
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
        let (resp, outcome) = validate(&body);
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
        let (resp, outcome) = validate(&body);
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
            assert_eq!(validate(&body).1, Outcome::Admitted);
        }
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
