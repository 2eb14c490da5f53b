//! The local copy of the controller's snapshot, indexed by outbound cluster name. Parsed once
//! per snapshot change (on tick), never per request.

use std::rc::Rc;

use crate::hash::FastMap;

use kzscaler_core::cluster::ClusterName;
use kzscaler_core::wire::{Destination, INBOUND_PREFIX, RouteTimeouts, State, virtual_service_of};

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
    /// Header values are bytes: any byte may be in them.
    pub fn counts(
        &self,
        user_agent: Option<&[u8]>,
        path: impl FnOnce() -> Option<Vec<u8>>,
    ) -> bool {
        if user_agent.is_some_and(|ua| ua.starts_with(b"kube-probe/")) {
            return false;
        }
        if self.ignore_paths.is_empty() {
            return true;
        }
        let path = path().unwrap_or_else(|| b"/".to_vec());
        !self
            .ignore_paths
            .iter()
            .any(|p| path.starts_with(p.as_bytes()))
    }
}

/// A Service's ports and the cluster name of each.
type Ports = Vec<(u16, Rc<str>)>;

/// Managed destinations by cluster name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// The snapshot's version (sent back as `If-None-Match`, or as `since` for a delta).
    pub version: u64,
    /// The controller's term of that version (0: a controller that gives no deltas).
    pub term: u64,
    // Every name is kept once, as an `Rc<str>` shared by the maps that need it: at 10,000
    // destinations a copy per map was most of the VM's memory (`examples/table_memory.rs`).
    /// Keyed by the entry's own `cluster`.
    by_cluster: FastMap<Rc<str>, Entry>,
    /// Each destination's workload (`<namespace>/<deployment>`), and how many destinations
    /// each workload has: a workload goes when its last destination does.
    workload_of: FastMap<Rc<str>, Rc<str>>,
    workload_count: FastMap<Rc<str>, usize>,
    /// The same entries by namespace, Service and port (their key in `by_cluster`): Istio
    /// names one Service port in several ways (a DestinationRule subset in the third field,
    /// a cluster domain other than the controller's), and each must find its destination.
    /// A Service has a port or two: a list, not a map.
    by_service: FastMap<String, FastMap<String, Ports>>,
    /// Managed Deployments as `<namespace>/<deployment>`, for inbound counting; the entry's
    /// `cluster` is the counter key `inbound|<namespace>/<deployment>`.
    by_workload: FastMap<Rc<str>, Entry>,
    /// VirtualServices' route timeouts by `<namespace>/<name>`.
    route_timeouts: FastMap<String, RouteTimeouts>,
    /// Destinations of the last parse that did not parse, and the first reason.
    skipped: usize,
    first_skip: Option<String>,
    /// Destinations in a state this build does not know.
    unknown_states: usize,
}

impl Table {
    /// Parses the snapshot JSON the controller serves. Each destination stands alone: one
    /// that does not parse is skipped and counted in [`Table::skipped`], one in a state this
    /// build does not know is kept as [`State::Unknown`] (never held), and the rest of the
    /// table applies. Only a body that is not a snapshot at all is an error.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Lenient<'a> {
            version: u64,
            #[serde(default)]
            term: u64,
            #[serde(borrow)]
            destinations: Vec<&'a serde_json::value::RawValue>,
            #[serde(default, borrow)]
            virtual_services: Vec<&'a serde_json::value::RawValue>,
        }
        let raw: Lenient =
            serde_json::from_slice(json).map_err(|e| format!("snapshot is not valid: {e}"))?;
        let mut table = Self {
            version: raw.version,
            term: raw.term,
            ..Self::default()
        };
        table.set_route_timeouts(raw.virtual_services);
        for value in raw.destinations {
            table.upsert(value);
        }
        Ok(table)
    }

    /// Applies a delta the controller answered for this table's version, in place. A delta
    /// for another version or term is an error and changes nothing; within one, each
    /// destination stands alone, as in [`Table::parse`].
    pub fn apply_delta(&mut self, json: &[u8]) -> Result<(), String> {
        #[derive(serde::Deserialize)]
        struct Lenient<'a> {
            version: u64,
            term: u64,
            since: u64,
            #[serde(default, borrow)]
            upsert: Vec<&'a serde_json::value::RawValue>,
            #[serde(default)]
            remove: Vec<String>,
            #[serde(default, borrow)]
            virtual_services: Option<Vec<&'a serde_json::value::RawValue>>,
        }
        let raw: Lenient =
            serde_json::from_slice(json).map_err(|e| format!("delta is not valid: {e}"))?;
        if raw.since != self.version || raw.term != self.term || raw.version <= raw.since {
            return Err(format!(
                "a delta from version {} to {} (term {}) does not apply to the table at version {} (term {})",
                raw.since, raw.version, raw.term, self.version, self.term
            ));
        }
        self.skipped = 0;
        self.first_skip = None;
        for cluster in &raw.remove {
            self.remove(cluster);
        }
        for value in raw.upsert {
            self.upsert(value);
        }
        if let Some(vs) = raw.virtual_services {
            self.route_timeouts.clear();
            self.set_route_timeouts(vs);
        }
        self.version = raw.version;
        Ok(())
    }

    fn set_route_timeouts(&mut self, values: Vec<&serde_json::value::RawValue>) {
        for value in values {
            match serde_json::from_str::<RouteTimeouts>(value.get()) {
                Ok(vs) => {
                    self.route_timeouts
                        .insert(format!("{}/{}", vs.namespace, vs.name), vs);
                }
                Err(e) => {
                    self.skipped += 1;
                    self.first_skip.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }

    /// Adds or replaces one destination; one that does not parse is skipped and counted.
    fn upsert(&mut self, value: &serde_json::value::RawValue) {
        match serde_json::from_str::<Destination>(value.get()) {
            Ok(d) => {
                self.remove(&d.cluster);
                self.insert(d);
            }
            Err(e) => {
                // What a full snapshot would give: the destination is gone, not left as it was.
                #[derive(serde::Deserialize)]
                struct Named {
                    cluster: String,
                }
                if let Ok(n) = serde_json::from_str::<Named>(value.get()) {
                    self.remove(&n.cluster);
                }
                self.skipped += 1;
                self.first_skip.get_or_insert_with(|| e.to_string());
            }
        }
    }

    /// Removes one destination, and its workload with its last destination.
    fn remove(&mut self, cluster: &str) {
        let Some(old) = self.by_cluster.remove(cluster) else {
            return;
        };
        if old.state == State::Unknown {
            self.unknown_states = self.unknown_states.saturating_sub(1);
        }
        if let Some(c) = ClusterName::try_parse(cluster)
            && let Some(services) = self.by_service.get_mut(c.namespace)
        {
            if let Some(ports) = services.get_mut(c.service) {
                ports.retain(|(port, k)| !(*port == c.port && &**k == cluster));
                if ports.is_empty() {
                    services.remove(c.service);
                }
            }
            if services.is_empty() {
                self.by_service.remove(c.namespace);
            }
        }
        if let Some(workload) = self.workload_of.remove(cluster)
            && let Some(n) = self.workload_count.get_mut(&*workload)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.workload_count.remove(&*workload);
                self.by_workload.remove(&*workload);
            }
        }
    }

    fn insert(&mut self, d: Destination) {
        if d.state == State::Unknown {
            self.unknown_states += 1;
        }
        let cluster: Rc<str> = Rc::from(d.cluster.as_str());
        let name = format!("{}/{}", d.namespace, d.deployment);
        // The workload's one copy, if another destination of it has it already.
        let workload: Rc<str> = match self.workload_count.get_key_value(name.as_str()) {
            Some((w, _)) => w.clone(),
            None => Rc::from(name.as_str()),
        };
        self.workload_of.insert(cluster.clone(), workload.clone());
        *self.workload_count.entry(workload.clone()).or_default() += 1;
        // The counter key: kept from an entry the workload had already.
        let inbound = match self.by_workload.get(&*workload) {
            Some(e) => e.cluster.clone(),
            None => Rc::from(format!("{INBOUND_PREFIX}{workload}").as_str()),
        };
        self.by_workload.insert(
            workload,
            Entry {
                cluster: inbound,
                state: d.state,
                wake_timeout_ms: d.wake_timeout_ms,
                ignore_paths: d.ignore_paths.clone(),
            },
        );
        if let Some(c) = ClusterName::try_parse(&d.cluster) {
            let ports = self
                .by_service
                .entry(c.namespace.to_owned())
                .or_default()
                .entry(c.service.to_owned())
                .or_default();
            ports.retain(|(port, _)| *port != c.port);
            ports.push((c.port, cluster.clone()));
        }
        self.by_cluster.insert(
            cluster.clone(),
            Entry {
                cluster,
                state: d.state,
                wake_timeout_ms: d.wake_timeout_ms,
                ignore_paths: d.ignore_paths,
            },
        );
    }

    /// What in the last parse did not apply, for a (rate-limited) log line; None when all did.
    pub fn degraded(&self) -> Option<String> {
        if self.skipped == 0 && self.unknown_states == 0 {
            return None;
        }
        Some(format!(
            "snapshot version {}: {} destination(s) skipped (first: {}), {} in a state this filter does not know (their requests pass untouched); the rest applies",
            self.version,
            self.skipped,
            self.first_skip.as_deref().unwrap_or("none"),
            self.unknown_states
        ))
    }

    /// The destination behind a cluster, if managed: by its exact name (one lookup on the
    /// usual path), else by the Service port it names, whatever its subset and domain.
    /// Allocates nothing.
    pub fn get(&self, cluster: &str) -> Option<&Entry> {
        if let Some(e) = self.by_cluster.get(cluster) {
            return Some(e);
        }
        let c = ClusterName::try_parse(cluster)?;
        let (_, key) = self
            .by_service
            .get(c.namespace)?
            .get(c.service)?
            .iter()
            .find(|(port, _)| *port == c.port)?;
        self.by_cluster.get(&**key)
    }

    /// The timeout of the route a request took, from the route's `istio.config` metadata
    /// (its VirtualService) and its name: the deadline Istio gives a plain-HTTP caller. None
    /// when the route is not a VirtualService's or has no timeout. Asked only for a request
    /// about to be held, never on the warm path.
    pub fn route_timeout_ms(&self, config: &str, route: &str) -> Option<u64> {
        let (namespace, name) = virtual_service_of(config)?;
        let mut key = String::with_capacity(namespace.len() + 1 + name.len());
        key.push_str(namespace);
        key.push('/');
        key.push_str(name);
        self.route_timeouts.get(&key)?.timeout_ms(route)
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
            let p = p.as_bytes().to_vec();
            move || Some(p)
        };
        assert!(e.counts(Some(b"curl/8"), path("/api")));
        assert!(e.counts(None, || None));
        assert!(!e.counts(Some(b"kube-probe/1.36"), path("/api")));
        assert!(!e.counts(Some(b"curl/8"), path("/healthz/ready")));
        assert!(e.counts(Some(b"Mozilla \xe9t\xe9"), || Some(b"/caf\xe9".to_vec())));
        assert!(!e.counts(Some(b"x"), || Some(b"/healthz\xff".to_vec())));
        let no_ignores = Entry {
            ignore_paths: vec![],
            ..e
        };
        assert!(no_ignores.counts(Some(b"curl/8"), || None));
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
    fn a_route_of_a_virtual_service_finds_its_timeout() {
        let t = Table::parse(
            br#"{"version":2,"destinations":[],"virtual_services":[
            {"namespace":"shop","name":"web","routes":[{"name":"slow","timeout_ms":7000},{"timeout_ms":2000}]},
            {"broken":true}]}"#,
        )
        .unwrap();
        let config = "/apis/networking.istio.io/v1/namespaces/shop/virtual-service/web";
        assert_eq!(t.route_timeout_ms(config, "slow"), Some(7_000));
        assert_eq!(t.route_timeout_ms(config, ""), Some(2_000));
        assert_eq!(
            t.route_timeout_ms(
                "/apis/networking.istio.io/v1/namespaces/shop/virtual-service/db",
                ""
            ),
            None
        );
        assert_eq!(t.route_timeout_ms("", ""), None);
        assert!(
            t.degraded()
                .is_some_and(|m| m.contains("1 destination(s) skipped"))
        );
    }

    #[test]
    fn bad_snapshot_is_an_error_not_a_panic() {
        assert!(Table::parse(b"{").is_err());
        assert!(Table::parse(br#"{"version":1}"#).is_err());
        assert!(Table::parse(b"\xff\xfe").is_err());
    }

    #[test]
    fn one_unknown_state_or_broken_entry_degrades_only_itself() {
        let t = Table::parse(
            br#"{"version":9,"destinations":[
            {"cluster":"outbound|80||web.shop.svc.cluster.local","namespace":"shop","service":"web","deployment":"web","state":"hibernating","wake_timeout_ms":5000},
            {"cluster":1},
            {"cluster":"outbound|80||db.shop.svc.cluster.local","namespace":"shop","service":"db","deployment":"db","state":"asleep","wake_timeout_ms":5000,"new_field":true}]}"#,
        )
        .unwrap();
        assert_eq!(t.version, 9);
        let web = t.get("outbound|80||web.shop.svc.cluster.local").unwrap();
        assert_eq!(web.state, State::Unknown);
        assert!(
            !web.state.must_hold(),
            "a state it does not know is never held"
        );
        assert_eq!(
            t.get("outbound|80||db.shop.svc.cluster.local")
                .map(|e| e.state),
            Some(State::Asleep),
            "the rest of the table updates"
        );
        let log = t.degraded().unwrap();
        assert!(
            log.contains("1 destination(s) skipped") && log.contains("1 in a state"),
            "{log}"
        );
        assert_eq!(
            Table::parse(br#"{"version":1,"destinations":[]}"#)
                .unwrap()
                .degraded(),
            None
        );
    }

    fn dest(svc: &str, port: u16, deployment: &str, state: &str) -> String {
        format!(
            r#"{{"cluster":"outbound|{port}||{svc}.shop.svc.cluster.local","namespace":"shop","service":"{svc}","deployment":"{deployment}","state":"{state}","wake_timeout_ms":5000}}"#
        )
    }

    /// What requests see of a table.
    fn view(t: &Table) -> Vec<String> {
        let mut v: Vec<String> = t
            .by_cluster
            .values()
            .map(|e| format!("{} {:?}", e.cluster, e.state))
            .collect();
        v.extend(t.by_service.iter().flat_map(|(ns, s)| {
            s.iter().map(move |(svc, p)| {
                let sorted: std::collections::BTreeMap<_, _> =
                    p.iter().map(|(port, k)| (port, k)).collect();
                format!("{ns}/{svc} {sorted:?}")
            })
        }));
        v.extend(t.by_workload.keys().map(|w| format!("workload {w}")));
        v.extend(
            t.route_timeouts
                .iter()
                .map(|(k, r)| format!("vs {k} {:?}", r.routes)),
        );
        v.push(format!("{} {}", t.version, t.term));
        v.sort();
        v
    }

    #[test]
    fn a_delta_applied_in_place_gives_the_table_of_the_new_snapshot() {
        let old = format!(
            r#"{{"version":10,"term":7,"destinations":[{},{},{},{}],"virtual_services":[{{"namespace":"shop","name":"web","routes":[{{"timeout_ms":1000}}]}}]}}"#,
            dest("web", 80, "web", "asleep"),
            dest("web", 81, "web", "asleep"),
            dest("db", 80, "db", "awake"),
            dest("old", 80, "old", "asleep"),
        );
        let new = format!(
            r#"{{"version":12,"term":7,"destinations":[{},{},{},{}],"virtual_services":[{{"namespace":"shop","name":"web","routes":[{{"timeout_ms":2000}}]}}]}}"#,
            dest("web", 80, "web", "waking"),
            dest("db", 80, "db", "awake"),
            dest("db", 81, "db", "awake"),
            dest("api", 80, "web", "waking"),
        );
        let delta = format!(
            r#"{{"version":12,"term":7,"since":10,"upsert":[{},{},{}],"remove":["outbound|81||web.shop.svc.cluster.local","outbound|80||old.shop.svc.cluster.local"],"virtual_services":[{{"namespace":"shop","name":"web","routes":[{{"timeout_ms":2000}}]}}]}}"#,
            dest("web", 80, "web", "waking"),
            dest("db", 81, "db", "awake"),
            dest("api", 80, "web", "waking"),
        );
        let mut t = Table::parse(old.as_bytes()).unwrap();
        t.apply_delta(delta.as_bytes()).unwrap();
        assert_eq!(view(&t), view(&Table::parse(new.as_bytes()).unwrap()));
        assert_eq!(t.workload("shop/old"), None, "its last destination went");
        assert!(t.workload("shop/web").is_some(), "one of two remains");
    }

    #[test]
    fn a_destination_a_delta_cannot_read_is_gone_as_in_a_full_snapshot() {
        let old = format!(
            r#"{{"version":10,"term":7,"destinations":[{}]}}"#,
            dest("web", 80, "web", "asleep")
        );
        let mut t = Table::parse(old.as_bytes()).unwrap();
        let delta = br#"{"version":11,"term":7,"since":10,"upsert":[{"cluster":"outbound|80||web.shop.svc.cluster.local","state":7}]}"#;
        t.apply_delta(delta).unwrap();
        assert_eq!(t.get("outbound|80||web.shop.svc.cluster.local"), None);
        assert!(
            t.degraded()
                .is_some_and(|m| m.contains("1 destination(s) skipped"))
        );
    }

    #[test]
    fn a_delta_for_another_version_or_term_changes_nothing() {
        let old = format!(
            r#"{{"version":10,"term":7,"destinations":[{}]}}"#,
            dest("web", 80, "web", "asleep")
        );
        let t = Table::parse(old.as_bytes()).unwrap();
        for (since, term, version) in [(9, 7, 11), (10, 8, 11), (10, 7, 10)] {
            let mut u = t.clone();
            let delta = format!(
                r#"{{"version":{version},"term":{term},"since":{since},"remove":["outbound|80||web.shop.svc.cluster.local"]}}"#
            );
            let e = u.apply_delta(delta.as_bytes()).unwrap_err();
            assert!(
                e.contains("does not apply to the table at version 10 (term 7)"),
                "{e}"
            );
            assert_eq!(u, t);
        }
        let mut u = t.clone();
        assert!(u.apply_delta(b"{not json").is_err());
        assert_eq!(u, t);
    }

    proptest::proptest! {
        // Fuzzing: any bytes as a delta body are applied or refused, never a panic.
        #[test]
        fn any_delta_body_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let mut t = Table::parse(br#"{"version":1,"term":1,"destinations":[]}"#).unwrap();
            let _ = t.apply_delta(&body);
        }

        // Fuzzing: any bytes as a snapshot body are a table or an error, never a panic, and
        // any cluster name is looked up without one.
        #[test]
        fn any_snapshot_body_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = Table::parse(&body);
        }

        #[test]
        fn any_route_metadata_is_looked_up_without_panic(config in "\\PC{0,80}|/apis/[a-z./0-9]{0,20}/namespaces/[a-z/]{0,10}/virtual-service/[a-z/]{0,8}", route in "\\PC{0,20}") {
            let t = Table::parse(br#"{"version":1,"destinations":[],"virtual_services":[{"namespace":"a","name":"b","routes":[{"timeout_ms":5}]}]}"#).unwrap();
            let _ = t.route_timeout_ms(&config, &route);
        }

        #[test]
        fn any_cluster_name_is_looked_up_without_panic(name in "\\PC{0,64}|outbound\\|[0-9]{0,6}\\|[a-z]{0,3}\\|[a-z.]{0,30}") {
            let t = Table::parse(br#"{"version":1,"destinations":[{"cluster":"outbound|80||web.shop.svc.cluster.local","namespace":"shop","service":"web","deployment":"web","state":"asleep","wake_timeout_ms":5}]}"#).unwrap();
            let _ = t.get(&name);
            let _ = t.workload(&name);
        }
    }
}
