//! Objects the tests create, written so a test reads like a sentence.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use serde_json::json;

/// The label kwok's fake nodes carry; test pods select it.
pub const KWOK_NODE_LABEL: (&str, &str) = ("type", "kwok");

/// A Deployment of `replicas` pods labelled `app: <name>`, scheduled onto kwok's fake nodes
/// (no container ever runs; kwok marks the pods Running and Ready).
pub fn deployment(name: &str, replicas: i32) -> Deployment {
    let parsed = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "automountServiceAccountToken": false,
                    "nodeSelector": {KWOK_NODE_LABEL.0: KWOK_NODE_LABEL.1},
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [{"name": "app", "image": "registry.invalid/kzscaler/fake:1",
                                    "ports": [{"containerPort": 8080, "name": "http"}]}]
                }
            }
        }
    }));
    parsed.unwrap_or_default()
}

/// A bare pod on kwok's fake nodes with this `metadata` and these `containers` (JSON), run by
/// the test bed's kubelet.
pub fn kwok_pod(
    metadata: serde_json::Value,
    containers: serde_json::Value,
) -> anyhow::Result<k8s_openapi::api::core::v1::Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": metadata,
        "spec": {
            "nodeSelector": {KWOK_NODE_LABEL.0: KWOK_NODE_LABEL.1},
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
            "automountServiceAccountToken": false,
            "containers": containers,
        }
    }))?)
}

/// A pod `name` with one container that never runs, for tests of admission (kwok's node).
pub fn bare_pod(name: &str) -> anyhow::Result<k8s_openapi::api::core::v1::Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"nodeSelector": {KWOK_NODE_LABEL.0: KWOK_NODE_LABEL.1}, "containers": [{"name": "a", "image": "registry.invalid/x:1"}]}
    }))?)
}

/// A ClusterIP Service `name` selecting `app: <app>`, port `port` named `port_name`, to
/// target port 8080.
pub fn service(name: &str, app: &str, port: i32, port_name: &str) -> Service {
    let parsed = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": app},
            "ports": [{"name": port_name, "port": port, "targetPort": 8080, "protocol": "TCP"}]
        }
    }));
    parsed.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_are_well_formed() {
        let d = deployment("web", 2);
        assert_eq!(d.metadata.name.as_deref(), Some("web"));
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(2));
        let tpl = spec.template.spec.unwrap();
        assert_eq!(tpl.node_selector.unwrap()["type"], "kwok");
        let s = service("web", "web", 80, "http");
        let port = &s.spec.unwrap().ports.unwrap()[0];
        assert_eq!((port.port, port.name.as_deref()), (80, Some("http")));
    }
}
