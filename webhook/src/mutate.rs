//! The pod mutation: a pure function from a pod's metadata to a JSON patch.

use std::collections::BTreeMap;

use json_patch::{AddOperation, PatchOperation};
use kzscaler_core::names;
use serde_json::Value;

/// Istio's annotation listing the extra Envoy stats a sidecar keeps.
pub const STATS_SUFFIXES_ANNOTATION: &str = "sidecar.istio.io/statsInclusionSuffixes";
/// The stat the filter reads as `upstream.num_endpoints`. Istio's sidecars drop every cluster
/// stat not asked for, and a dropped gauge reads 0: a held request would never see its
/// endpoint and would wait out its whole wake timeout.
pub const ENDPOINTS_STAT: &str = "membership_total";

/// What the webhook adds to a pod in an opted-in namespace: the label the namespace's
/// WasmPlugin selects, an annotation naming that WasmPlugin, and [`ENDPOINTS_STAT`] in Istio's
/// stats inclusion annotation (kept with whatever the pod lists there already). Returns no
/// operations when the pod already carries all three (idempotent) or is opted out with
/// `kzscaler.io/inject: "false"`.
pub fn pod_patch(
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
    namespace: &str,
    wasmplugin: &str,
) -> Vec<PatchOperation> {
    if labels
        .and_then(|l| l.get(names::INJECT_LABEL))
        .is_some_and(|v| v == "false")
    {
        return Vec::new();
    }
    let plugin_ref = format!("{namespace}/{wasmplugin}");
    let mut ops = Vec::new();
    add_entries(&mut ops, "labels", labels, &[(names::FILTER_LABEL, "true")]);
    let stats = annotations.and_then(|a| a.get(STATS_SUFFIXES_ANNOTATION));
    let stats = match stats {
        Some(v) if v.split(',').any(|s| s.trim() == ENDPOINTS_STAT) => v.clone(),
        Some(v) if !v.trim().is_empty() => format!("{v},{ENDPOINTS_STAT}"),
        _ => ENDPOINTS_STAT.to_owned(),
    };
    add_entries(
        &mut ops,
        "annotations",
        annotations,
        &[
            (names::WASMPLUGIN_ANNOTATION, &plugin_ref),
            (STATS_SUFFIXES_ANNOTATION, &stats),
        ],
    );
    ops
}

fn add_entries(
    ops: &mut Vec<PatchOperation>,
    field: &str,
    map: Option<&BTreeMap<String, String>>,
    entries: &[(&str, &str)],
) {
    let mut created = false;
    for (key, value) in entries {
        if map.and_then(|m| m.get(*key)).is_some_and(|v| v == value) {
            continue;
        }
        if map.is_none() && !created {
            // A pointer into a missing map fails: create the map first (once).
            ops.push(add(
                format!("/metadata/{field}"),
                Value::Object(Default::default()),
            ));
            created = true;
        }
        ops.push(add(
            format!("/metadata/{field}/{}", escape_pointer(key)),
            Value::String((*value).to_owned()),
        ));
    }
}

fn add(path: String, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: path.parse().unwrap_or_default(),
        value,
    })
}

/// RFC 6901 escaping: `~` → `~0`, `/` → `~1`.
fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn apply(mut pod: Value, ops: Vec<PatchOperation>) -> Value {
        json_patch::patch(&mut pod, &json_patch::Patch(ops)).unwrap();
        pod
    }

    #[test]
    fn labels_and_annotates_a_bare_pod() {
        let ops = pod_patch(None, None, "shop", "kzscaler");
        let pod = apply(json!({"metadata": {"generateName": "web-"}}), ops);
        assert_eq!(pod["metadata"]["labels"]["kzscaler.io/filter"], "true");
        assert_eq!(
            pod["metadata"]["annotations"]["kzscaler.io/wasmplugin"],
            "shop/kzscaler"
        );
        assert_eq!(pod["metadata"]["generateName"], "web-");
    }

    #[test]
    fn keeps_existing_labels() {
        let labels = map(&[("app", "web")]);
        let ops = pod_patch(Some(&labels), None, "shop", "kzscaler");
        let pod = apply(json!({"metadata": {"labels": {"app": "web"}}}), ops);
        assert_eq!(pod["metadata"]["labels"]["app"], "web");
        assert_eq!(pod["metadata"]["labels"]["kzscaler.io/filter"], "true");
    }

    #[test]
    fn second_pass_changes_nothing() {
        let labels = map(&[("kzscaler.io/filter", "true")]);
        let annotations = map(&[
            ("kzscaler.io/wasmplugin", "shop/kzscaler"),
            (
                "sidecar.istio.io/statsInclusionSuffixes",
                "membership_total",
            ),
        ]);
        assert!(pod_patch(Some(&labels), Some(&annotations), "shop", "kzscaler").is_empty());
    }

    #[test]
    fn keeps_the_endpoint_count_stat_that_istio_would_drop() {
        let pod = apply(
            json!({"metadata": {}}),
            pod_patch(None, None, "shop", "kzscaler"),
        );
        assert_eq!(
            pod["metadata"]["annotations"]["sidecar.istio.io/statsInclusionSuffixes"],
            "membership_total"
        );
        assert_eq!(
            pod["metadata"]["annotations"]["kzscaler.io/wasmplugin"], "shop/kzscaler",
            "both annotations survive a pod without any"
        );
        let theirs = map(&[(
            "sidecar.istio.io/statsInclusionSuffixes",
            "upstream_rq_timeout",
        )]);
        let pod = apply(
            json!({"metadata": {"annotations": {"sidecar.istio.io/statsInclusionSuffixes": "upstream_rq_timeout"}}}),
            pod_patch(None, Some(&theirs), "shop", "kzscaler"),
        );
        assert_eq!(
            pod["metadata"]["annotations"]["sidecar.istio.io/statsInclusionSuffixes"],
            "upstream_rq_timeout,membership_total",
            "the pod's own suffixes are kept"
        );
        let already = map(&[(
            "sidecar.istio.io/statsInclusionSuffixes",
            "a, membership_total",
        )]);
        let ops = pod_patch(None, Some(&already), "shop", "kzscaler");
        assert!(
            !format!("{ops:?}").contains("statsInclusionSuffixes"),
            "a list that has it already is left as it is: {ops:?}"
        );
    }

    #[test]
    fn opted_out_pod_is_left_alone() {
        let labels = map(&[("kzscaler.io/inject", "false")]);
        assert!(pod_patch(Some(&labels), None, "shop", "kzscaler").is_empty());
    }

    #[test]
    fn escapes_slashes_in_keys() {
        assert_eq!(escape_pointer("kzscaler.io/filter"), "kzscaler.io~1filter");
        assert_eq!(escape_pointer("a~b/c"), "a~0b~1c");
    }
}
