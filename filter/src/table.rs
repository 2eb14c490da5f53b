//! The local copy of the controller's snapshot, indexed by outbound cluster name. Parsed once
//! per snapshot change (on tick), never per request.

use std::hash::Hasher;
use std::rc::Rc;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry as Slot;

use crate::hash::{FastMap, FxHasher};

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

/// Managed destinations by cluster name.
///
/// At 10,000 destinations this is most of a VM's memory, which never shrinks, so it keeps
/// each name once and no index it can do without (the filter logs its VM's memory when it
/// grows; `kzscaler-bench-fleet` reads it):
/// - the entries themselves are the hash table, found by their `cluster` (no key beside);
/// - the Service index holds only the name, and finds it by the namespace, Service and port
///   parsed from it;
/// - of the workloads, only this pod's own is kept (its inbound requests count for it).
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// The snapshot's version (sent back as `If-None-Match`, or as `since` for a delta).
    pub version: u64,
    /// The controller's term of that version (0: a controller that gives no deltas).
    pub term: u64,
    /// The entries, hashed by their `cluster` ([`hash_name`]).
    by_cluster: HashTable<Entry>,
    /// The same entries' names, hashed by namespace, Service and port ([`hash_service`]):
    /// Istio names one Service port in several ways (a DestinationRule subset in the third
    /// field, a cluster domain other than the controller's), and each must find its
    /// destination.
    by_service: HashTable<Rc<str>>,
    /// This pod's own Deployment, `<namespace>/<deployment>` (from its sidecar's node
    /// metadata), when the table was made for one.
    own: Option<Rc<str>>,
    /// Its entry for inbound counting (`cluster` is the counter key
    /// `inbound|<namespace>/<deployment>`), and its destinations: it goes with the last one.
    own_entry: Option<Entry>,
    own_clusters: Vec<Rc<str>>,
    /// VirtualServices' route timeouts by `<namespace>/<name>`.
    route_timeouts: FastMap<String, RouteTimeouts>,
    /// Destinations of the last parse that did not parse, and the first reason.
    skipped: usize,
    first_skip: Option<String>,
    /// Destinations in a state this build does not know.
    unknown_states: usize,
}

/// The hash of a cluster name in [`Table`]'s entries.
fn hash_name(name: &str) -> u64 {
    let mut h = FxHasher::default();
    h.write(name.as_bytes());
    h.finish()
}

/// The hash an entry is kept under.
fn entry_hash(e: &Entry) -> u64 {
    hash_name(&e.cluster)
}

/// The hash a name in the Service index is kept under (every name there parses).
fn service_hash_of(name: &Rc<str>) -> u64 {
    ClusterName::try_parse(name).map_or(0, |c| hash_service(&c))
}

/// The hash of a Service port in [`Table`]'s Service index.
fn hash_service(c: &ClusterName<'_>) -> u64 {
    let mut h = FxHasher::default();
    h.write(c.namespace.as_bytes());
    h.write_u8(b'/');
    h.write(c.service.as_bytes());
    h.write_u16(c.port);
    h.finish()
}

/// Whether a name in the Service index is of the Service port `c`.
fn same_service(name: &str, c: &ClusterName<'_>) -> bool {
    ClusterName::try_parse(name)
        .is_some_and(|o| o.port == c.port && o.service == c.service && o.namespace == c.namespace)
}

impl PartialEq for Table {
    /// Same snapshot, same lookups (the hash tables' order aside).
    fn eq(&self, other: &Self) -> bool {
        let entries_in = |a: &Self, b: &Self| {
            a.by_cluster.len() == b.by_cluster.len()
                && a.by_cluster
                    .iter()
                    .all(|e| b.by_cluster.find(entry_hash(e), |o| o == e).is_some())
        };
        let names_in = |a: &Self, b: &Self| {
            a.by_service.len() == b.by_service.len()
                && a.by_service.iter().all(|n| {
                    ClusterName::try_parse(n)
                        .is_some_and(|c| b.by_service.find(hash_service(&c), |o| o == n).is_some())
                })
        };
        self.version == other.version
            && self.term == other.term
            && entries_in(self, other)
            && names_in(self, other)
            && self.own == other.own
            && self.own_entry == other.own_entry
            && self.own_clusters.len() == other.own_clusters.len()
            && self
                .own_clusters
                .iter()
                .all(|k| other.own_clusters.contains(k))
            && self.route_timeouts == other.route_timeouts
            && self.skipped == other.skipped
            && self.first_skip == other.first_skip
            && self.unknown_states == other.unknown_states
    }
}

impl Eq for Table {}

impl Table {
    /// Parses the snapshot JSON the controller serves. Each destination stands alone: one
    /// that does not parse is skipped and counted in [`Table::skipped`], one in a state this
    /// build does not know is kept as [`State::Unknown`] (never held), and the rest of the
    /// table applies. Only a body that is not a snapshot at all is an error.
    ///
    /// `own` is this pod's Deployment (`<namespace>/<deployment>`), whose inbound requests
    /// count as its activity when it is managed ([`Table::own_entry`]).
    pub fn parse(json: &[u8], own: Option<&str>) -> Result<Self, String> {
        let mut table = Self::new(own);
        table.replace(json, |_| true)?;
        Ok(table)
    }

    /// An empty table for this pod's own Deployment (`<namespace>/<deployment>`), if known.
    pub fn new(own: Option<&str>) -> Self {
        Self {
            own: own.map(Rc::from),
            ..Self::default()
        }
    }

    /// The Deployment it was made for.
    pub fn own(&self) -> Option<&str> {
        self.own.as_deref()
    }

    /// Makes this table the full snapshot `json`, in place, if `accept` takes its version:
    /// entries are rewritten one at a time (each freed one's memory serves the next), and no
    /// second table is built beside this one (a VM's memory never shrinks). The result is the
    /// table [`Table::parse`] gives, for the same own workload. Returns the snapshot's version and whether it was applied; a body that
    /// is not a snapshot is an error and changes nothing.
    pub fn replace(
        &mut self,
        json: &[u8],
        accept: impl FnOnce(u64) -> bool,
    ) -> Result<(u64, bool), String> {
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
        if !accept(raw.version) {
            return Ok((raw.version, false));
        }
        self.version = raw.version;
        self.term = raw.term;
        self.skipped = 0;
        self.first_skip = None;
        self.route_timeouts.clear();
        self.set_route_timeouts(raw.virtual_services);
        // Sized once: a table that grows leaves its smaller arrays behind in the VM's memory.
        let n = raw.destinations.len();
        let additional = n.saturating_sub(self.by_cluster.len());
        self.by_cluster.reserve(additional, entry_hash);
        self.by_service.reserve(additional, service_hash_of);
        // What was there and is not in the snapshot goes after: the names it has.
        let mut seen: Option<HashTable<Rc<str>>> =
            (!self.by_cluster.is_empty()).then(|| HashTable::with_capacity(n));
        for value in raw.destinations {
            if let Some(cluster) = self.upsert(value)
                && let Some(seen) = seen.as_mut()
            {
                seen.insert_unique(hash_name(&cluster), cluster, |k| hash_name(k));
            }
        }
        if let Some(seen) = seen {
            let gone: Vec<Rc<str>> = self
                .by_cluster
                .iter()
                .filter(|e| seen.find(entry_hash(e), |k| *k == e.cluster).is_none())
                .map(|e| e.cluster.clone())
                .collect();
            for cluster in gone {
                self.remove(&cluster);
            }
        }
        Ok((raw.version, true))
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

    /// Adds or replaces one destination, and gives its name; one that does not parse is
    /// skipped and counted.
    fn upsert(&mut self, value: &serde_json::value::RawValue) -> Option<Rc<str>> {
        match serde_json::from_str::<Destination>(value.get()) {
            Ok(d) => {
                self.remove(&d.cluster);
                Some(self.insert(d))
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
                None
            }
        }
    }

    /// Removes one destination, and this pod's own entry with its last destination.
    fn remove(&mut self, cluster: &str) {
        let Ok(found) = self
            .by_cluster
            .find_entry(hash_name(cluster), |e| &*e.cluster == cluster)
        else {
            return;
        };
        let (old, _) = found.remove();
        if old.state == State::Unknown {
            self.unknown_states = self.unknown_states.saturating_sub(1);
        }
        if let Some(c) = ClusterName::try_parse(cluster)
            && let Ok(name) = self
                .by_service
                .find_entry(hash_service(&c), |k| &**k == cluster)
        {
            name.remove();
        }
        if let Some(at) = self.own_clusters.iter().position(|k| &**k == cluster) {
            self.own_clusters.swap_remove(at);
            if self.own_clusters.is_empty() {
                self.own_entry = None;
            }
        }
    }

    fn insert(&mut self, d: Destination) -> Rc<str> {
        if d.state == State::Unknown {
            self.unknown_states += 1;
        }
        let cluster: Rc<str> = Rc::from(d.cluster.as_str());
        let is_own = self.own.as_deref().and_then(|o| o.split_once('/'))
            == Some((d.namespace.as_str(), d.deployment.as_str()));
        if is_own && let Some(own) = self.own.clone() {
            // The counter key: kept from the entry it had already.
            let counter = match &self.own_entry {
                Some(e) => e.cluster.clone(),
                None => Rc::from(format!("{INBOUND_PREFIX}{own}").as_str()),
            };
            self.own_entry = Some(Entry {
                cluster: counter,
                state: d.state,
                wake_timeout_ms: d.wake_timeout_ms,
                ignore_paths: d.ignore_paths.clone(),
            });
            self.own_clusters.push(cluster.clone());
        }
        if let Some(c) = ClusterName::try_parse(&d.cluster) {
            match self
                .by_service
                .entry(hash_service(&c), |k| same_service(k, &c), service_hash_of)
            {
                Slot::Occupied(mut o) => *o.get_mut() = cluster.clone(),
                Slot::Vacant(v) => {
                    v.insert(cluster.clone());
                }
            }
        }
        let entry = Entry {
            cluster: cluster.clone(),
            state: d.state,
            wake_timeout_ms: d.wake_timeout_ms,
            ignore_paths: d.ignore_paths,
        };
        match self.by_cluster.entry(
            hash_name(&entry.cluster),
            |e| e.cluster == entry.cluster,
            entry_hash,
        ) {
            Slot::Occupied(mut o) => *o.get_mut() = entry,
            Slot::Vacant(v) => {
                v.insert(entry);
            }
        }
        cluster
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
        if let Some(e) = self.entry(cluster) {
            return Some(e);
        }
        let c = ClusterName::try_parse(cluster)?;
        let key = self
            .by_service
            .find(hash_service(&c), |k| same_service(k, &c))?;
        self.entry(key)
    }

    /// The entry of exactly this cluster name.
    fn entry(&self, cluster: &str) -> Option<&Entry> {
        self.by_cluster
            .find(hash_name(cluster), |e| &*e.cluster == cluster)
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

    /// This pod's own Deployment's entry (the one given to [`Table::parse`]), if it is
    /// managed: inbound requests count as its activity.
    pub fn own_entry(&self) -> Option<&Entry> {
        self.own_entry.as_ref()
    }

    /// No managed destination at all: nothing to count or hold, not even a lookup.
    pub fn is_empty(&self) -> bool {
        self.by_cluster.is_empty()
    }

    /// Destinations in the table.
    pub fn len(&self) -> usize {
        self.by_cluster.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_controllers_snapshot() {
        let json = br#"{"version":3,"destinations":[{"cluster":"outbound|80||web.shop.svc.cluster.local",
            "namespace":"shop","service":"web","deployment":"web","state":"asleep","wake_timeout_ms":5000}]}"#;
        let t = Table::parse(json, Some("shop/web")).unwrap();
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
            t.own_entry().map(|e| &*e.cluster),
            Some("inbound|shop/web"),
            "its pods' inbound requests count for it"
        );
        assert_eq!(
            Table::parse(json, Some("shop/db")).unwrap().own_entry(),
            None,
            "a pod of an unmanaged Deployment counts nothing"
        );
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
            None,
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
            None,
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
        assert!(Table::parse(b"{", None).is_err());
        assert!(Table::parse(br#"{"version":1}"#, None).is_err());
        assert!(Table::parse(b"\xff\xfe", None).is_err());
    }

    #[test]
    fn one_unknown_state_or_broken_entry_degrades_only_itself() {
        let t = Table::parse(
            br#"{"version":9,"destinations":[
            {"cluster":"outbound|80||web.shop.svc.cluster.local","namespace":"shop","service":"web","deployment":"web","state":"hibernating","wake_timeout_ms":5000},
            {"cluster":1},
            {"cluster":"outbound|80||db.shop.svc.cluster.local","namespace":"shop","service":"db","deployment":"db","state":"asleep","wake_timeout_ms":5000,"new_field":true}]}"#,
            None,
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
            Table::parse(br#"{"version":1,"destinations":[]}"#, None)
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
            .iter()
            .map(|e| format!("{} {:?}", e.cluster, e.state))
            .collect();
        v.extend(t.by_service.iter().map(|k| format!("service port {k}")));
        v.extend(t.own_entry.iter().map(|e| format!("own {}", e.cluster)));
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
        for own in [None, Some("shop/web"), Some("shop/old"), Some("shop/db")] {
            let mut t = Table::parse(old.as_bytes(), own).unwrap();
            t.apply_delta(delta.as_bytes()).unwrap();
            let fresh = Table::parse(new.as_bytes(), own).unwrap();
            assert_eq!(view(&t), view(&fresh), "own {own:?}");
            assert_eq!(t, fresh, "own {own:?}");
        }
        let mut t = Table::parse(old.as_bytes(), Some("shop/old")).unwrap();
        assert!(t.own_entry().is_some());
        t.apply_delta(delta.as_bytes()).unwrap();
        assert_eq!(t.own_entry(), None, "its last destination went");
        let mut t = Table::parse(old.as_bytes(), Some("shop/web")).unwrap();
        t.apply_delta(delta.as_bytes()).unwrap();
        assert_eq!(
            t.own_entry().map(|e| &*e.cluster),
            Some("inbound|shop/web"),
            "one of two remains, and only this pod's own is kept"
        );
    }

    #[test]
    fn a_full_snapshot_replaces_a_table_in_place_as_a_fresh_parse_would() {
        let old = format!(
            r#"{{"version":10,"term":7,"destinations":[{},{},{},{},{{"cluster":1}}],"virtual_services":[{{"namespace":"shop","name":"web","routes":[{{"timeout_ms":1000}}]}}]}}"#,
            dest("web", 80, "web", "asleep"),
            dest("web", 81, "web", "asleep"),
            dest("db", 80, "db", "hibernating"),
            dest("old", 80, "old", "asleep"),
        );
        let new = format!(
            r#"{{"version":20,"term":8,"destinations":[{},{},{},{}]}}"#,
            dest("web", 80, "web", "waking"),
            dest("db", 80, "db", "awake"),
            dest("db", 81, "db", "awake"),
            dest("api", 80, "web", "waking"),
        );
        for own in [None, Some("shop/web"), Some("shop/old"), Some("shop/db")] {
            let mut t = Table::parse(old.as_bytes(), own).unwrap();
            let before = t.clone();
            assert_eq!(t.replace(new.as_bytes(), |v| v == 19), Ok((20, false)));
            assert_eq!(t, before, "a version not accepted changes nothing");
            assert!(t.replace(b"{not json", |_| true).is_err());
            assert_eq!(t, before, "nor does a body that is not a snapshot");
            assert_eq!(t.replace(new.as_bytes(), |v| v == 20), Ok((20, true)));
            let fresh = Table::parse(new.as_bytes(), own).unwrap();
            assert_eq!(view(&t), view(&fresh), "own {own:?}");
            assert_eq!(t, fresh, "own {own:?}");
            assert_eq!(t.degraded(), None, "the old snapshot's skips are forgotten");
        }
    }

    #[test]
    fn a_destination_a_delta_cannot_read_is_gone_as_in_a_full_snapshot() {
        let old = format!(
            r#"{{"version":10,"term":7,"destinations":[{}]}}"#,
            dest("web", 80, "web", "asleep")
        );
        let mut t = Table::parse(old.as_bytes(), None).unwrap();
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
        let t = Table::parse(old.as_bytes(), None).unwrap();
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
            let mut t = Table::parse(br#"{"version":1,"term":1,"destinations":[]}"#, None).unwrap();
            let _ = t.apply_delta(&body);
        }

        // Fuzzing: any bytes as a snapshot body are a table or an error, never a panic, and
        // any cluster name is looked up without one.
        #[test]
        fn any_snapshot_body_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = Table::parse(&body, None);
        }

        #[test]
        fn any_route_metadata_is_looked_up_without_panic(config in "\\PC{0,80}|/apis/[a-z./0-9]{0,20}/namespaces/[a-z/]{0,10}/virtual-service/[a-z/]{0,8}", route in "\\PC{0,20}") {
            let t = Table::parse(br#"{"version":1,"destinations":[],"virtual_services":[{"namespace":"a","name":"b","routes":[{"timeout_ms":5}]}]}"#, None).unwrap();
            let _ = t.route_timeout_ms(&config, &route);
        }

        #[test]
        fn any_cluster_name_is_looked_up_without_panic(name in "\\PC{0,64}|outbound\\|[0-9]{0,6}\\|[a-z]{0,3}\\|[a-z.]{0,30}") {
            let t = Table::parse(br#"{"version":1,"destinations":[{"cluster":"outbound|80||web.shop.svc.cluster.local","namespace":"shop","service":"web","deployment":"web","state":"asleep","wake_timeout_ms":5}]}"#, None).unwrap();
            let _ = t.get(&name);
        }
    }
}
