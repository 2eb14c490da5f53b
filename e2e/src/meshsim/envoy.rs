//! Envoy's configuration files, shaped like an Istio sidecar's outbound side, and their writing.
//!
//! Envoy watches each file and reloads it when a new file is renamed over it (in-place writes
//! are ignored), so every write goes to a temporary file first.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::model::{Cluster, Mesh};

/// The route configuration's name, as the HTTP listener's RDS refers to it.
pub const ROUTE_NAME: &str = "http";

/// Where the simulator's Envoy files live.
#[derive(Debug, Clone)]
pub struct Files {
    /// The folder holding them.
    pub dir: PathBuf,
}

/// A Wasm filter for the HTTP listener: the module and its plugin configuration (JSON).
#[derive(Debug, Clone)]
pub struct WasmFilter {
    /// The `.wasm` module.
    pub module: PathBuf,
    /// Plugin configuration, passed as a `google.protobuf.StringValue` like Istio does.
    pub config: String,
}

/// Ports and extras of the bootstrap.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// The HTTP listener (HTTP/1.1 and h2c).
    pub listen: std::net::SocketAddr,
    /// Envoy's admin interface.
    pub admin: std::net::SocketAddr,
    /// The Wasm filter, when one is loaded.
    pub wasm: Option<WasmFilter>,
    /// Static clusters added as is (e.g. the controller's).
    pub static_clusters: Vec<Value>,
    /// The pod this Envoy is the sidecar of, with its inbound side, if it plays one.
    pub pod: Option<Pod>,
}

/// The pod a sidecar belongs to: Istio's node metadata, and an inbound listener forwarding to
/// the application (cluster `inbound|<port>||`, as Istio names it).
#[derive(Debug, Clone)]
pub struct Pod {
    /// `NAMESPACE` node metadata.
    pub namespace: String,
    /// `WORKLOAD_NAME` node metadata (the Deployment).
    pub workload: String,
    /// The inbound listener.
    pub inbound: std::net::SocketAddr,
    /// The application behind it.
    pub app: std::net::SocketAddr,
}

impl Files {
    /// The CDS file.
    pub fn cds(&self) -> PathBuf {
        self.dir.join("cds.json")
    }
    /// The RDS file.
    pub fn rds(&self) -> PathBuf {
        self.dir.join("rds.json")
    }
    /// The EDS file of a cluster.
    pub fn eds(&self, cluster: &str) -> PathBuf {
        let safe: String = cluster
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join("eds").join(format!("{safe}.json"))
    }
    /// The bootstrap file.
    pub fn bootstrap(&self) -> PathBuf {
        self.dir.join("bootstrap.json")
    }
}

fn path_source(path: &Path) -> Value {
    json!({"path_config_source": {"path": path}, "resource_api_version": "V3"})
}

/// The bootstrap: admin, a static HTTP listener whose routes come from the RDS file, and
/// clusters from the CDS file.
pub fn bootstrap(files: &Files, b: &Bootstrap) -> Value {
    let mut http_filters = Vec::new();
    if let Some(w) = &b.wasm {
        http_filters.push(json!({
            "name": "kzscaler",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "kzscaler",
                    "root_id": "kzscaler",
                    "vm_config": {
                        "vm_id": "kzscaler",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": w.module}}
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": w.config
                    },
                    "failure_policy": "FAIL_OPEN"
                }
            }
        }));
    }
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    let mut clusters = b.static_clusters.clone();
    let mut listeners = Vec::new();
    let mut node = json!({"id": "sidecar~127.0.0.1~meshsim.default~default.svc.cluster.local", "cluster": "meshsim"});
    if let Some(pod) = &b.pod {
        node["metadata"] = json!({"NAMESPACE": pod.namespace, "WORKLOAD_NAME": pod.workload});
        let name = format!("inbound|{}||", pod.app.port());
        clusters.push(static_cluster(&name, &[pod.app]));
        let routes = json!({"name": "inbound", "virtual_hosts": [{"name": "inbound", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": name, "timeout": "0s"}}]}]});
        listeners.push(http_listener(
            "virtualInbound-http",
            pod.inbound,
            "inbound_http",
            ("route_config", routes),
            &http_filters,
        ));
    }
    listeners.push(http_listener(
        "virtualOutbound-http",
        b.listen,
        "outbound_http",
        (
            "rds",
            json!({"route_config_name": ROUTE_NAME, "config_source": path_source(&files.rds())}),
        ),
        &http_filters,
    ));
    json!({
        "node": node,
        "admin": {"address": socket(b.admin)},
        "dynamic_resources": {"cds_config": path_source(&files.cds())},
        "static_resources": {"clusters": clusters, "listeners": listeners}
    })
}

/// An HTTP listener (HTTP/1.1 and h2c) with these filters, its routes given as
/// (`"rds"` or `"route_config"`, the value).
fn http_listener(
    name: &str,
    address: std::net::SocketAddr,
    stat_prefix: &str,
    routes: (&str, Value),
    http_filters: &[Value],
) -> Value {
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "http_filters": http_filters
    });
    hcm[routes.0] = routes.1;
    json!({
        "name": name,
        "address": socket(address),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": hcm
        }]}]
    })
}

/// A STATIC cluster over these addresses.
fn static_cluster(name: &str, addrs: &[std::net::SocketAddr]) -> Value {
    let endpoints: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"endpoint": {"address": socket(*a)}}))
        .collect();
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]}
    })
}

/// A static cluster named like the one an Istio sidecar has for the controller's Service,
/// pointing at controller replicas on this machine. In a cluster the Service selects the
/// leader's pod (label `kzscaler.io/leader`); here Envoy's active health check on `/leaderz`
/// plays that part. With no healthy replica (during a failover) Envoy's panic mode sends to
/// all of them, and followers answer 503.
pub fn controller_cluster(name: &str, addrs: &[std::net::SocketAddr]) -> Value {
    let mut cluster = static_cluster(name, addrs);
    cluster["health_checks"] = json!([{
        "timeout": "1s",
        "interval": "0.25s",
        "no_traffic_interval": "0.25s",
        "unhealthy_threshold": 1,
        "healthy_threshold": 1,
        "http_health_check": {"path": "/leaderz"}
    }]);
    cluster
}

fn socket(a: std::net::SocketAddr) -> Value {
    json!({"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}})
}

/// The CDS file: one EDS cluster per Service port, named like Istio's.
pub fn cds(files: &Files, mesh: &Mesh) -> Value {
    let resources: Vec<Value> = mesh
        .clusters
        .values()
        .map(|c| {
            let protocol = if c.http2 {
                json!({"explicit_http_config": {"http2_protocol_options": {}}})
            } else {
                json!({"use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}}})
            };
            let mut options = protocol;
            options["@type"] =
                json!("type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions");
            json!({
                "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                "name": c.name,
                "type": "EDS",
                "connect_timeout": "1s",
                "eds_cluster_config": {"service_name": c.name, "eds_config": path_source(&files.eds(&c.name))},
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options
                }
            })
        })
        .collect();
    json!({"version_info": "0", "resources": resources})
}

/// The RDS file: a virtual host per Service port.
pub fn rds(mesh: &Mesh) -> Value {
    let vhosts: Vec<Value> = mesh
        .virtual_hosts
        .iter()
        .map(|v| {
            json!({
                "name": v.name,
                "domains": v.domains,
                "routes": [{
                    "match": {"prefix": "/"},
                    // Istio's default: no route timeout; the caller's deadline applies.
                    "route": {"cluster": v.cluster, "timeout": "0s"}
                }]
            })
        })
        .collect();
    json!({"version_info": "0", "resources": [{
        "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        "name": ROUTE_NAME,
        "validate_clusters": false,
        "virtual_hosts": vhosts
    }]})
}

/// The EDS file of a cluster: its endpoints at the local ports of their backends.
pub fn eds(
    cluster: &Cluster,
    port_of: impl Fn(&super::model::EndpointKey) -> Option<u16>,
) -> Value {
    let lb: Vec<Value> = cluster
        .endpoints
        .iter()
        .filter_map(port_of)
        .map(|port| {
            json!({"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}})
        })
        .collect();
    let endpoints = if lb.is_empty() {
        json!([])
    } else {
        json!([{"lb_endpoints": lb}])
    };
    json!({"version_info": "0", "resources": [{
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": cluster.name,
        "endpoints": endpoints
    }]})
}

/// Writes `value` to `path` through a temporary file and a rename, so Envoy sees it; skips the
/// write when the content is unchanged. Returns whether it wrote.
pub fn write_if_changed(path: &Path, value: &Value) -> std::io::Result<bool> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meshsim::model::EndpointKey;
    use std::collections::BTreeSet;

    fn files() -> Files {
        Files {
            dir: "/state/meshsim".into(),
        }
    }

    #[test]
    fn eds_file_name_is_safe() {
        assert_eq!(
            files().eds("outbound|80||web.shop.svc.cluster.local"),
            PathBuf::from("/state/meshsim/eds/outbound_80__web.shop.svc.cluster.local.json")
        );
    }

    #[test]
    fn eds_lists_local_ports_of_running_backends_only() {
        let key = |pod: &str| EndpointKey {
            cluster: "c".into(),
            namespace: "ns".into(),
            service: "web".into(),
            pod: pod.into(),
            address: "10.0.0.1".into(),
            target_port: 8080,
            grpc: false,
        };
        let cluster = Cluster {
            name: "c".into(),
            http2: false,
            endpoints: BTreeSet::from([key("a"), key("b")]),
        };
        let v = eds(&cluster, |e| (e.pod == "a").then_some(4242));
        let lb = &v["resources"][0]["endpoints"][0]["lb_endpoints"];
        assert_eq!(lb.as_array().map(Vec::len), Some(1));
        assert_eq!(
            lb[0]["endpoint"]["address"]["socket_address"]["port_value"],
            4242
        );
        let none = eds(&cluster, |_| None);
        assert_eq!(none["resources"][0]["endpoints"], json!([]));
    }

    #[test]
    fn wasm_filter_goes_before_the_router() {
        let b = Bootstrap {
            listen: "127.0.0.1:15001".parse().unwrap(),
            admin: "127.0.0.1:15000".parse().unwrap(),
            wasm: Some(WasmFilter {
                module: "/f.wasm".into(),
                config: "{}".into(),
            }),
            static_clusters: vec![],
            pod: None,
        };
        let v = bootstrap(&files(), &b);
        let filters = &v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"];
        assert_eq!(filters[0]["name"], "kzscaler");
        assert_eq!(filters[1]["name"], "envoy.filters.http.router");
        assert_eq!(
            filters[0]["typed_config"]["config"]["configuration"]["@type"],
            "type.googleapis.com/google.protobuf.StringValue"
        );
    }

    #[test]
    fn a_pods_sidecar_has_node_metadata_and_an_inbound_listener_with_the_filter() {
        let b = Bootstrap {
            listen: "127.0.0.1:15001".parse().unwrap(),
            admin: "127.0.0.1:15000".parse().unwrap(),
            wasm: Some(WasmFilter {
                module: "/f.wasm".into(),
                config: "{}".into(),
            }),
            static_clusters: vec![],
            pod: Some(Pod {
                namespace: "shop".into(),
                workload: "web".into(),
                inbound: "127.0.0.1:15006".parse().unwrap(),
                app: "127.0.0.1:8080".parse().unwrap(),
            }),
        };
        let v = bootstrap(&files(), &b);
        assert_eq!(v["node"]["metadata"]["WORKLOAD_NAME"], "web");
        assert_eq!(v["node"]["metadata"]["NAMESPACE"], "shop");
        let inbound = &v["static_resources"]["listeners"][0];
        assert_eq!(inbound["name"], "virtualInbound-http");
        let hcm = &inbound["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(hcm["http_filters"][0]["name"], "kzscaler");
        assert_eq!(
            hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"],
            "inbound|8080||"
        );
        assert_eq!(
            v["static_resources"]["clusters"][0]["name"],
            "inbound|8080||"
        );
        assert_eq!(
            v["static_resources"]["listeners"][1]["name"],
            "virtualOutbound-http"
        );
    }
}
