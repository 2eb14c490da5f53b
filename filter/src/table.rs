//! The local copy of the controller's snapshot, indexed by outbound cluster name. Parsed once
//! per snapshot change (on tick), never per request.

use std::collections::HashMap;
use std::rc::Rc;

use kzscaler_core::cluster::ClusterName;
use kzscaler_core::wire::{INBOUND_PREFIX, Snapshot, State};

/// What the filter needs of one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The cluster name, shared with the activity counters (no allocation per request).
    pub cluster: Rc<str>,
    /// Its state in the snapshot.
    pub state: State,
    /// Longest hold, in milliseconds.
    pub wake_timeout_ms: u64,
    /// Path prefixes that never count as activity.
    pub ignore_paths: Vec<String>,
}

impl Entry {
    /// Whether a request counts as activity: not a kubelet probe, not an ignored path. The
    /// path is asked for only when there are ignored paths (it costs a call into Envoy).
    pub fn counts(&self, user_agent: Option<&str>, path: impl FnOnce() -> Option<String>) -> bool {
        if user_agent.is_some_and(|ua| ua.starts_with("kube-probe/")) {
            return false;
        }
        if self.ignore_paths.is_empty() {
            return true;
        }
        let path = path().unwrap_or_else(|| "/".to_owned());
        !self
            .ignore_paths
            .iter()
            .any(|p| path.starts_with(p.as_str()))
    }
}

/// Managed destinations by cluster name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// The snapshot's version (sent back as `If-None-Match`).
    pub version: u64,
    by_cluster: HashMap<String, Entry>,
    /// The same entries by namespace, Service and port (their key in `by_cluster`): Istio
    /// names one Service port in several ways (a DestinationRule subset in the third field,
    /// a cluster domain other than the controller's), and each must find its destination.
    by_service: HashMap<String, HashMap<String, HashMap<u16, String>>>,
    /// Managed Deployments as `<namespace>/<deployment>`, for inbound counting; the entry's
    /// `cluster` is the counter key `inbound|<namespace>/<deployment>`.
    by_workload: HashMap<String, Entry>,
}

impl Table {
    /// Parses the snapshot JSON the controller serves.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let snap: Snapshot =
            serde_json::from_slice(json).map_err(|e| format!("snapshot is not valid: {e}"))?;
        let by_workload = snap
            .destinations
            .iter()
            .map(|d| {
                let workload = format!("{}/{}", d.namespace, d.deployment);
                let entry = Entry {
                    cluster: Rc::from(format!("{INBOUND_PREFIX}{workload}").as_str()),
                    state: d.state,
                    wake_timeout_ms: d.wake_timeout_ms,
                    ignore_paths: d.ignore_paths.clone(),
                };
                (workload, entry)
            })
            .collect();
        let mut by_service: HashMap<String, HashMap<String, HashMap<u16, String>>> = HashMap::new();
        for d in &snap.destinations {
            if let Some(c) = ClusterName::try_parse(&d.cluster) {
                by_service
                    .entry(c.namespace.to_owned())
                    .or_default()
                    .entry(c.service.to_owned())
                    .or_default()
                    .insert(c.port, d.cluster.clone());
            }
        }
        Ok(Self {
            version: snap.version,
            by_workload,
            by_service,
            by_cluster: snap
                .destinations
                .into_iter()
                .map(|d| {
                    (
                        d.cluster.clone(),
                        Entry {
                            cluster: Rc::from(d.cluster.as_str()),
                            state: d.state,
                            wake_timeout_ms: d.wake_timeout_ms,
                            ignore_paths: d.ignore_paths,
                        },
                    )
                })
                .collect(),
        })
    }

    /// The destination behind a cluster, if managed: by its exact name (one lookup on the
    /// usual path), else by the Service port it names, whatever its subset and domain.
    /// Allocates nothing.
    pub fn get(&self, cluster: &str) -> Option<&Entry> {
        if let Some(e) = self.by_cluster.get(cluster) {
            return Some(e);
        }
        let c = ClusterName::try_parse(cluster)?;
        let key = self
            .by_service
            .get(c.namespace)?
            .get(c.service)?
            .get(&c.port)?;
        self.by_cluster.get(key)
    }

    /// This pod's own Deployment (`<namespace>/<deployment>`), if managed: inbound requests
    /// count as its activity.
    pub fn workload(&self, workload: &str) -> Option<&Entry> {
        self.by_workload.get(workload)
    }

    /// No managed destination at all: nothing to count or hold, not even a lookup.
    pub fn is_empty(&self) -> bool {
        self.by_cluster.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_controllers_snapshot() {
        let t = Table::parse(
            br#"{"version":3,"destinations":[{"cluster":"outbound|80||web.shop.svc.cluster.local",
            "namespace":"shop","service":"web","deployment":"web","state":"asleep","wake_timeout_ms":5000}]}"#,
        )
        .unwrap();
        assert_eq!(t.version, 3);
        assert_eq!(
            t.get("outbound|80||web.shop.svc.cluster.local"),
            Some(&Entry {
                cluster: Rc::from("outbound|80||web.shop.svc.cluster.local"),
                state: State::Asleep,
                wake_timeout_ms: 5000,
                ignore_paths: vec![],
            })
        );
        assert_eq!(t.get("outbound|80||db.shop.svc.cluster.local"), None);
        assert_eq!(
            t.workload("shop/web").map(|e| &*e.cluster),
            Some("inbound|shop/web"),
            "its pods' inbound requests count for it"
        );
        assert_eq!(t.workload("shop/db"), None);
        assert!(!t.is_empty());
        assert!(Table::default().is_empty());
    }

    #[test]
    fn probes_and_ignored_paths_are_not_activity() {
        let e = Entry {
            cluster: Rc::from("c"),
            state: State::Awake,
            wake_timeout_ms: 1,
            ignore_paths: vec!["/healthz".into()],
        };
        let path = |p: &str| {
            let p = p.to_owned();
            move || Some(p)
        };
        assert!(e.counts(Some("curl/8"), path("/api")));
        assert!(e.counts(None, || None));
        assert!(!e.counts(Some("kube-probe/1.36"), path("/api")));
        assert!(!e.counts(Some("curl/8"), path("/healthz/ready")));
        let no_ignores = Entry {
            ignore_paths: vec![],
            ..e
        };
        assert!(no_ignores.counts(Some("curl/8"), || None));
    }

    #[test]
    fn every_cluster_name_istio_gives_a_service_port_finds_its_destination() {
        let t = Table::parse(
            br#"{"version":1,"destinations":[
            {"cluster":"outbound|80||web.shop.svc.cluster.local","namespace":"shop","service":"web","deployment":"web","state":"asleep","wake_timeout_ms":5000},
            {"cluster":"outbound|9090||web.shop.svc.cluster.local","namespace":"shop","service":"web","deployment":"web","state":"awake","wake_timeout_ms":5000}]}"#,
        )
        .unwrap();
        let found = |name: &str| t.get(name).map(|e| e.cluster.to_string());
        let port80 = Some("outbound|80||web.shop.svc.cluster.local".to_owned());
        let port9090 = Some("outbound|9090||web.shop.svc.cluster.local".to_owned());
        // DestinationRule subsets.
        assert_eq!(found("outbound|80|v1|web.shop.svc.cluster.local"), port80);
        assert_eq!(found("outbound|80|v2|web.shop.svc.cluster.local"), port80);
        // istiod with --domain other than the controller's.
        assert_eq!(found("outbound|80||web.shop.svc.corp.example"), port80);
        assert_eq!(
            found("outbound|9090|canary|web.shop.svc.corp.example"),
            port9090
        );
        // Each port of a Service with several is its own destination.
        assert_eq!(found("outbound|9090||web.shop.svc.cluster.local"), port9090);
        assert_eq!(found("outbound|8080||web.shop.svc.cluster.local"), None);
        // Clusters that are not ours pass untouched.
        for other in [
            "outbound|80||web.other.svc.cluster.local",
            "outbound|80||db.shop.svc.cluster.local",
            "outbound|443||example.com",
            "outbound|80|v1|web.shop",
            "PassthroughCluster",
            "BlackHoleCluster",
            "InboundPassthroughCluster",
            "inbound|80||",
        ] {
            assert_eq!(found(other), None, "{other}");
        }
    }

    #[test]
    fn bad_snapshot_is_an_error_not_a_panic() {
        assert!(Table::parse(b"{").is_err());
        assert!(Table::parse(br#"{"version":1,"destinations":[{"cluster":1}]}"#).is_err());
    }
}
