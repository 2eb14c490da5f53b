//! What Envoy should look like for a set of Services and EndpointSlices: pure, no I/O.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kzscaler_core::cluster::outbound_cluster;
use kzscaler_core::names::SERVICE_NAME_LABEL;

/// One ready endpoint of one Service port: the simulator runs a backend for each.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointKey {
    /// The outbound cluster it belongs to.
    pub cluster: String,
    /// Namespace of the Service.
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// The pod behind it (from `targetRef`), or its address when none.
    pub pod: String,
    /// The endpoint's (fake) address from the EndpointSlice.
    pub address: String,
    /// The target port number.
    pub target_port: i32,
    /// Whether the port speaks gRPC (its name starts with `grpc`).
    pub grpc: bool,
}

/// One outbound cluster: a Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// `outbound|<port>||<svc>.<ns>.svc.<domain>`.
    pub name: String,
    /// Upstream speaks HTTP/2 only (gRPC ports).
    pub http2: bool,
    /// Its ready endpoints.
    pub endpoints: BTreeSet<EndpointKey>,
}

/// One virtual host: a Service port and the `:authority` values that reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualHost {
    /// `<svc>.<ns>.svc.<domain>:<port>`, as Istio names it.
    pub name: String,
    /// The domains, as Istio would list them.
    pub domains: Vec<String>,
    /// The cluster it routes to.
    pub cluster: String,
}

/// Everything the simulator derives from the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mesh {
    /// By name.
    pub clusters: BTreeMap<String, Cluster>,
    /// Sorted by name.
    pub virtual_hosts: Vec<VirtualHost>,
}

impl Mesh {
    /// Builds the mesh for these objects. Services without a name, namespace or TCP port, and
    /// headless or ExternalName Services, are left out.
    pub fn build(services: &[Service], slices: &[EndpointSlice], domain: &str) -> Self {
        // Istio gives the bare name only to callers in the Service's own namespace. The
        // simulated caller belongs to no namespace, so the bare name goes to the oldest
        // Service of that name: one domain may not appear twice in a route configuration.
        let mut bare_owner: BTreeMap<&str, (String, &str)> = BTreeMap::new();
        for svc in services {
            let (Some(name), Some(ns)) = (&svc.metadata.name, &svc.metadata.namespace) else {
                continue;
            };
            let created = svc
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default();
            let candidate = (created, ns.as_str());
            match bare_owner.get(name.as_str()) {
                Some(current) if *current <= candidate => {}
                _ => {
                    bare_owner.insert(name, candidate);
                }
            }
        }

        let mut mesh = Mesh::default();
        for svc in services {
            let (Some(name), Some(ns), Some(spec)) =
                (&svc.metadata.name, &svc.metadata.namespace, &svc.spec)
            else {
                continue;
            };
            if spec.type_.as_deref() == Some("ExternalName") {
                continue;
            }
            let ports: Vec<_> = spec
                .ports
                .iter()
                .flatten()
                .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                .filter_map(|p| u16::try_from(p.port).ok().map(|n| (n, p)))
                .collect();
            // Port-less domains go to one port: 80 if the Service has it, else the lowest.
            let primary = ports.iter().map(|(n, _)| *n).min_by_key(|n| (*n != 80, *n));
            let owns_bare = bare_owner.get(name.as_str()).map(|(_, o)| *o) == Some(ns.as_str());
            let cluster_ip = spec
                .cluster_ip
                .as_deref()
                .filter(|ip| !ip.is_empty() && *ip != "None");
            let my_slices: Vec<&EndpointSlice> = slices
                .iter()
                .filter(|s| {
                    s.metadata.namespace.as_deref() == Some(ns)
                        && s.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(SERVICE_NAME_LABEL))
                            == Some(name)
                })
                .collect();
            for (port, sp) in &ports {
                let cluster = outbound_cluster(name, ns, domain, *port);
                let grpc = sp.name.as_deref().is_some_and(|n| n.starts_with("grpc"))
                    || sp.app_protocol.as_deref() == Some("grpc");
                let mut hosts = vec![
                    format!("{name}.{ns}"),
                    format!("{name}.{ns}.svc"),
                    format!("{name}.{ns}.svc.{domain}"),
                ];
                if owns_bare {
                    hosts.insert(0, name.clone());
                }
                if let Some(ip) = cluster_ip {
                    hosts.push(ip.to_owned());
                }
                let mut domains = Vec::new();
                for h in &hosts {
                    if Some(*port) == primary {
                        domains.push(h.clone());
                    }
                    domains.push(format!("{h}:{port}"));
                }
                mesh.virtual_hosts.push(VirtualHost {
                    name: format!("{name}.{ns}.svc.{domain}:{port}"),
                    domains,
                    cluster: cluster.clone(),
                });
                let endpoints =
                    ready_endpoints(&my_slices, sp.name.as_deref(), &cluster, ns, name, grpc);
                mesh.clusters.insert(
                    cluster.clone(),
                    Cluster {
                        name: cluster,
                        http2: grpc,
                        endpoints,
                    },
                );
            }
        }
        mesh.virtual_hosts.sort_by(|a, b| a.name.cmp(&b.name));
        mesh
    }

    /// Every endpoint of every cluster.
    pub fn endpoints(&self) -> impl Iterator<Item = &EndpointKey> {
        self.clusters.values().flat_map(|c| c.endpoints.iter())
    }
}

/// Ready endpoints of a Service port, matched to slice ports by name as kube-proxy does.
fn ready_endpoints(
    slices: &[&EndpointSlice],
    port_name: Option<&str>,
    cluster: &str,
    namespace: &str,
    service: &str,
    grpc: bool,
) -> BTreeSet<EndpointKey> {
    let mut out = BTreeSet::new();
    for slice in slices {
        let wanted = port_name.unwrap_or("");
        let Some(target_port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == wanted)
            .and_then(|p| p.port)
        else {
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            // istiod sends only ready endpoints; `ready` unset means ready.
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for address in &ep.addresses {
                let pod = ep
                    .target_ref
                    .as_ref()
                    .and_then(|r| r.name.clone())
                    .unwrap_or_else(|| address.clone());
                out.insert(EndpointKey {
                    cluster: cluster.to_owned(),
                    namespace: namespace.to_owned(),
                    service: service.to_owned(),
                    pod,
                    address: address.clone(),
                    target_port,
                    grpc,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(ns: &str, name: &str, created: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
            "spec": {"clusterIP": "10.96.0.10", "ports": ports}
        }))
        .unwrap()
    }

    fn slice(
        ns: &str,
        svc: &str,
        port_name: &str,
        port: i32,
        eps: serde_json::Value,
    ) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-abc"), "namespace": ns,
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
            "endpoints": eps
        }))
        .unwrap()
    }

    #[test]
    fn service_port_becomes_cluster_and_istio_domains() {
        let svcs = [service(
            "shop",
            "web",
            "2026-01-01T00:00:00Z",
            json!([{"port": 80}]),
        )];
        let mesh = Mesh::build(&svcs, &[], "cluster.local");
        let c = &mesh.clusters["outbound|80||web.shop.svc.cluster.local"];
        assert!(!c.http2);
        assert!(c.endpoints.is_empty());
        let vh = &mesh.virtual_hosts[0];
        assert_eq!(vh.name, "web.shop.svc.cluster.local:80");
        for d in [
            "web",
            "web:80",
            "web.shop",
            "web.shop:80",
            "web.shop.svc",
            "web.shop.svc.cluster.local:80",
            "10.96.0.10",
        ] {
            assert!(
                vh.domains.contains(&d.to_owned()),
                "missing {d}: {:?}",
                vh.domains
            );
        }
    }

    #[test]
    fn only_ready_endpoints_matched_by_port_name() {
        let svcs = [service(
            "shop",
            "api",
            "2026-01-01T00:00:00Z",
            json!([{"name": "grpc-api", "port": 9090, "targetPort": 50051}]),
        )];
        let slices = [
            slice(
                "shop",
                "api",
                "grpc-api",
                50051,
                json!([
                    {"addresses": ["10.0.0.5"], "conditions": {"ready": true},
                     "targetRef": {"kind": "Pod", "name": "api-1"}},
                    {"addresses": ["10.0.0.6"], "conditions": {"ready": false}},
                    {"addresses": ["10.0.0.7"]}
                ]),
            ),
            slice(
                "shop",
                "api",
                "other",
                1,
                json!([{"addresses": ["10.0.0.9"]}]),
            ),
            slice(
                "elsewhere",
                "api",
                "grpc-api",
                1,
                json!([{"addresses": ["10.0.0.8"]}]),
            ),
        ];
        let mesh = Mesh::build(&svcs, &slices, "cluster.local");
        let c = &mesh.clusters["outbound|9090||api.shop.svc.cluster.local"];
        assert!(c.http2, "a port named grpc-* is HTTP/2 upstream");
        let got: Vec<_> = c
            .endpoints
            .iter()
            .map(|e| (e.pod.as_str(), e.address.as_str(), e.target_port, e.grpc))
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.0.0.7", "10.0.0.7", 50051, true),
                ("api-1", "10.0.0.5", 50051, true)
            ]
        );
    }

    #[test]
    fn bare_name_goes_to_the_oldest_service_only() {
        let svcs = [
            service("b", "web", "2026-01-02T00:00:00Z", json!([{"port": 80}])),
            service("a", "web", "2026-01-01T00:00:00Z", json!([{"port": 80}])),
        ];
        let mesh = Mesh::build(&svcs, &[], "cluster.local");
        let bare: Vec<_> = mesh
            .virtual_hosts
            .iter()
            .filter(|v| v.domains.contains(&"web".to_owned()))
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(bare, vec!["web.a.svc.cluster.local:80"]);
        // Apart from the fixture's shared ClusterIP, no domain appears twice.
        let names: Vec<&String> = mesh
            .virtual_hosts
            .iter()
            .flat_map(|v| &v.domains)
            .filter(|d| !d.starts_with("10.96."))
            .collect();
        let unique: BTreeSet<&String> = names.iter().copied().collect();
        assert_eq!(names.len(), unique.len());
    }

    #[test]
    fn portless_domains_go_to_one_port() {
        let svcs = [service(
            "shop",
            "multi",
            "2026-01-01T00:00:00Z",
            json!([{"name": "admin", "port": 9000}, {"name": "http", "port": 8080}]),
        )];
        let mesh = Mesh::build(&svcs, &[], "cluster.local");
        let with_bare: Vec<_> = mesh
            .virtual_hosts
            .iter()
            .filter(|v| v.domains.contains(&"multi.shop".to_owned()))
            .map(|v| v.cluster.as_str())
            .collect();
        assert_eq!(
            with_bare,
            vec!["outbound|8080||multi.shop.svc.cluster.local"]
        );
        assert_eq!(mesh.clusters.len(), 2);
    }
}
