//! VirtualServices, read for their HTTP route timeouts: Istio's route `timeout` is the only
//! deadline a plain-HTTP caller's sidecar knows of (the caller's own `x-envoy-*` timeout
//! headers are stripped at its sidecar, and the router starts the route's timer only once the
//! filter lets the request go), so the filter bounds a hold by it.
//!
//! Only the fields used are read, leniently: a VirtualService this controller cannot read
//! contributes nothing, and never stops the watch.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_core::Resource;

use crate::wire::{RouteTimeout, RouteTimeouts};
use serde::{Deserialize, Serialize};

/// `networking.istio.io/v1` VirtualService: its metadata and its spec as found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VirtualService {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// The spec, read leniently by [`route_timeouts`].
    #[serde(default)]
    pub spec: serde_json::Value,
}

impl Resource for VirtualService {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "VirtualService".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "networking.istio.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "virtualservices".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The Service a VirtualService destination host names, as `(namespace, service)`: `web`
/// is in the VirtualService's own namespace, `web.shop` and `web.shop.svc.<domain>` in `shop`.
fn service_of<'a>(host: &'a str, own_namespace: &'a str) -> (&'a str, &'a str) {
    let mut parts = host.split('.');
    let service = parts.next().unwrap_or(host);
    (parts.next().unwrap_or(own_namespace), service)
}

/// A VirtualService stripped to what is published: its HTTP routes' timeouts and the
/// Services they route to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    timeouts: RouteTimeouts,
    /// `(namespace, service)` of every destination host of its HTTP routes.
    targets: BTreeSet<(String, String)>,
}

impl Routes {
    /// Reads a VirtualService leniently: an unreadable spec routes nowhere.
    pub fn of(vs: &VirtualService) -> Self {
        let (Some(namespace), Some(name)) = (&vs.metadata.namespace, &vs.metadata.name) else {
            return Self::default();
        };
        let Some(http) = vs.spec.get("http").and_then(serde_json::Value::as_array) else {
            return Self::default();
        };
        let targets = http
            .iter()
            .filter_map(|route| route.get("route").and_then(serde_json::Value::as_array))
            .flatten()
            .filter_map(|d| d.pointer("/destination/host")?.as_str())
            .map(|host| {
                let (ns, svc) = service_of(host, namespace);
                (ns.to_owned(), svc.to_owned())
            })
            .collect();
        let routes = http
            .iter()
            .map(|route| RouteTimeout {
                name: route
                    .get("name")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                timeout_ms: route
                    .get("timeout")
                    .and_then(serde_json::Value::as_str)
                    .and_then(|t| crate::parse_duration(t).ok())
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            })
            .collect();
        Self {
            timeouts: RouteTimeouts {
                namespace: namespace.clone(),
                name: name.clone(),
                routes,
            },
            targets,
        }
    }

    /// Whether one of its HTTP routes goes to one of `services` (`(namespace, name)` of
    /// managed destinations).
    pub fn routes_to(&self, services: &BTreeSet<(String, String)>) -> bool {
        self.targets.iter().any(|t| services.contains(t))
    }

    /// Its route timeouts, as published.
    pub fn timeouts(&self) -> RouteTimeouts {
        self.timeouts.clone()
    }
}

/// The route timeouts of the VirtualServices with an HTTP route to one of `services`
/// (`(namespace, name)` of managed destinations), sorted by namespace and name.
pub fn route_timeouts(
    virtual_services: &[Arc<VirtualService>],
    services: &BTreeSet<(String, String)>,
) -> Vec<RouteTimeouts> {
    let mut out: BTreeMap<(String, String), RouteTimeouts> = BTreeMap::new();
    for r in virtual_services.iter().map(|vs| Routes::of(vs)) {
        if r.routes_to(services) {
            let t = r.timeouts();
            out.insert((t.namespace.clone(), t.name.clone()), t);
        }
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vs(ns: &str, name: &str, http: serde_json::Value) -> Arc<VirtualService> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": ns, "name": name},
                "spec": {"http": http}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn timeouts_of_routes_to_managed_services_are_read() {
        let managed: BTreeSet<(String, String)> = [("shop".to_owned(), "web".to_owned())].into();
        let all = [
            vs(
                "shop",
                "web",
                json!([
                    {"name": "slow", "timeout": "7s", "route": [{"destination": {"host": "web"}}]},
                    {"timeout": "1.5s", "route": [{"destination": {"host": "web.shop.svc.cluster.local"}}]},
                    {"route": [{"destination": {"host": "web.shop"}}]}
                ]),
            ),
            // Another namespace's VirtualService naming the managed Service by its FQDN.
            vs(
                "front",
                "to-web",
                json!([{"timeout": "2s", "route": [{"destination": {"host": "web.shop.svc.cluster.local"}}]}]),
            ),
            // Not routing to a managed Service: left out.
            vs(
                "shop",
                "db",
                json!([{"timeout": "1s", "route": [{"destination": {"host": "db"}}]}]),
            ),
            // Unreadable spec: contributes nothing.
            vs("shop", "odd", json!("not a list")),
        ];
        let got = route_timeouts(&all, &managed);
        let names: Vec<(&str, &str)> = got
            .iter()
            .map(|v| (v.namespace.as_str(), v.name.as_str()))
            .collect();
        assert_eq!(names, [("front", "to-web"), ("shop", "web")]);
        let web = &got[1];
        assert_eq!(
            web.routes
                .iter()
                .map(|r| (r.name.as_str(), r.timeout_ms))
                .collect::<Vec<_>>(),
            [("slow", 7_000), ("", 1_500), ("", 0)]
        );
    }
}
