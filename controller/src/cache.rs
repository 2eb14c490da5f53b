//! The replica cache: the [`Index`] of managed destinations, the snapshot filters hold, and a
//! log of what changed per version, so a filter that is one change behind downloads one
//! destination, not all of them.
//!
//! ```text
//!  watch events ──▶ Index (apply/delete one object) ──changed clusters──▶ Cache::publish
//!                                                                          │ version++ only if a
//!                                                                          │ published value changed
//!  GET /v1/snapshot?since=V ◀── delta from the log (or the full snapshot), encoded once per version
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kzscaler_core::wire::{Delta, Destination, RouteTimeouts, Snapshot, State};
use serde::Serialize;
use tokio::sync::watch;

pub use kzscaler_core::index::Index;
pub use kzscaler_core::managed::{Key, Managed, Problem, endpoint_identity, state_of};
pub use kzscaler_core::names::REPLICAS_BEFORE_SLEEP;

/// The first version of a term (or of a process) begun at `wall_ms`: room for a thousand
/// changes per millisecond of the term below the next term's first version.
pub fn version_base(wall_ms: u64) -> u64 {
    wall_ms.saturating_mul(1_000)
}

/// What one version changed.
#[derive(Debug)]
struct Change {
    version: u64,
    clusters: Vec<String>,
    routes: bool,
}

/// The most cluster changes the log keeps: a filter further behind gets the full snapshot.
const LOG_MAX_CLUSTERS: usize = 16_384;
/// The most versions the log keeps.
const LOG_MAX_VERSIONS: usize = 4_096;
/// The most distinct deltas kept encoded for the current version.
const ENCODED_DELTAS_MAX: usize = 64;

/// Answers encoded for the current version, so a thousand filters asking the same costs one
/// encoding.
#[derive(Debug, Default)]
struct Encoded {
    version: u64,
    full: Option<(bytes::Bytes, String)>,
    deltas: HashMap<u64, bytes::Bytes>,
}

/// What to answer a filter that holds `since`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It is current: 304.
    Current,
    /// A [`Delta`] from its version, encoded.
    Delta(bytes::Bytes),
    /// The full snapshot and its ETag: its version is unknown here or too old.
    Full(bytes::Bytes, String),
}

/// Destinations as served: the full snapshot, serialized from borrowed values.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    version: u64,
    term: u64,
    destinations: Vec<&'a Destination>,
    #[serde(skip_serializing_if = "<[RouteTimeouts]>::is_empty")]
    virtual_services: &'a [RouteTimeouts],
}

/// The cache: the index, what filters were last given (the published destinations, with
/// draining marks) and a version that changes only when that does.
#[derive(Debug)]
pub struct Cache {
    index: Index,
    published: BTreeMap<String, Destination>,
    virtual_services: Vec<RouteTimeouts>,
    version: u64,
    term: u64,
    log: VecDeque<Change>,
    log_clusters: usize,
    /// The oldest version a delta can start from.
    log_floor: u64,
    encoded: Mutex<Encoded>,
    versions: watch::Sender<u64>,
    /// Published destinations per state: awake, draining, asleep, waking, unknown.
    counts: [i64; 5],
    draining: BTreeSet<Key>,
    /// Deployments whose scale to 0 is committed, until the cache shows 0 replicas (or
    /// [`CLOSING_MAX`] passed: someone scaled it back up before the watch saw the 0).
    closing: BTreeMap<Key, std::time::Instant>,
}

impl Default for Cache {
    fn default() -> Self {
        Self::new(Index::default(), 0)
    }
}

/// The longest a committed sleep is waited for.
const CLOSING_MAX: Duration = Duration::from_secs(10);

fn state_slot(s: State) -> usize {
    match s {
        State::Awake => 0,
        State::Draining => 1,
        State::Asleep => 2,
        State::Waking => 3,
        State::Unknown => 4,
    }
}

impl Cache {
    /// A cache over `index` whose first snapshot version is `version + 1`. Start it from the
    /// clock, so a restarted controller never reuses a version a filter still holds.
    pub fn new(index: Index, version: u64) -> Self {
        let mut cache = Self {
            index,
            published: BTreeMap::new(),
            virtual_services: Vec::new(),
            version,
            term: version,
            log: VecDeque::new(),
            log_clusters: 0,
            log_floor: version,
            encoded: Mutex::new(Encoded::default()),
            versions: watch::Sender::new(version),
            counts: [0; 5],
            draining: BTreeSet::new(),
            closing: BTreeMap::new(),
        };
        cache.index.mark_all_changed();
        cache.publish();
        cache
    }

    /// An empty cache (all namespaces in scope) whose first version is `version + 1`.
    pub fn starting_at(version: u64) -> Self {
        Self::new(Index::default(), version)
    }

    /// The index, to apply watch events to; [`Cache::publish`] after a batch.
    pub fn index_mut(&mut self) -> &mut Index {
        &mut self.index
    }

    /// The index.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Replaces the whole index (tests; a bulk load); returns whether the snapshot changed.
    pub fn replace_index(&mut self, mut index: Index) -> bool {
        index.mark_all_changed();
        let mut old = std::mem::replace(&mut self.index, index);
        let touched = old
            .take_touched()
            .into_iter()
            .chain(old.managed().keys().cloned());
        self.index.touch(touched);
        let mut extra: BTreeSet<String> = old.destinations().keys().cloned().collect();
        extra.extend(self.published.keys().cloned());
        self.publish_with(extra)
    }

    /// This replica became leader at `base` (its wall clock in ms × 1000, see
    /// [`version_base`]): its versions continue above every version an earlier leader can
    /// have given, and a new term begins: deltas are answered only from versions of it.
    pub fn new_term(&mut self, base: u64) {
        // A new term is a new version too, even when this clock is behind: what was encoded
        // for the old term (carrying its term) is never served again.
        self.version = base.max(self.version.saturating_add(1));
        self.term = self.version;
        self.log.clear();
        self.log_clusters = 0;
        self.log_floor = self.version;
        self.versions.send_replace(self.version);
    }

    /// Publishes what the index changed since the last call; returns whether the snapshot
    /// changed (and so its version).
    pub fn publish(&mut self) -> bool {
        self.publish_with(BTreeSet::new())
    }

    fn publish_with(&mut self, mut clusters: BTreeSet<String>) -> bool {
        let managed = self.index.managed();
        self.closing.retain(|k, at| {
            managed.get(k).is_some_and(|m| m.desired > 0) && at.elapsed() < CLOSING_MAX
        });
        // A Deployment no longer managed (deleted, annotation removed) keeps no mark.
        self.draining.retain(|k| managed.contains_key(k));
        clusters.extend(self.index.take_changed());
        self.apply(clusters)
    }

    fn apply(&mut self, clusters: BTreeSet<String>) -> bool {
        let mut changed = Vec::new();
        for c in clusters {
            let now = self.index.destinations().get(&c).map(|(k, d)| {
                let mut d = d.clone();
                if d.state == State::Awake && self.draining.contains(k) {
                    d.state = State::Draining;
                }
                d
            });
            let before = self.published.get(&c);
            if before == now.as_ref() {
                continue;
            }
            if let Some(b) = before {
                self.counts[state_slot(b.state)] -= 1;
            }
            match now {
                Some(d) => {
                    self.counts[state_slot(d.state)] += 1;
                    self.published.insert(c.clone(), d);
                }
                None => {
                    self.published.remove(&c);
                }
            }
            changed.push(c);
        }
        let routes = self.index.routes_stale()
            && self.index.route_timeouts() != self.virtual_services.as_slice();
        if routes {
            self.virtual_services = self.index.route_timeouts().to_vec();
        }
        if changed.is_empty() && !routes {
            return false;
        }
        self.version += 1;
        self.log_clusters += changed.len();
        self.log.push_back(Change {
            version: self.version,
            clusters: changed,
            routes,
        });
        while self.log.len() > LOG_MAX_VERSIONS || self.log_clusters > LOG_MAX_CLUSTERS {
            let Some(old) = self.log.pop_front() else {
                break;
            };
            self.log_clusters -= old.clusters.len();
            self.log_floor = old.version;
        }
        self.versions.send_replace(self.version);
        true
    }

    /// Marks a Deployment whose scale to 0 is committed (or no longer): an activate waits for
    /// the sleep to land and then wakes it, instead of answering "ready" for an endpoint about
    /// to go. The mark goes by itself once the cache shows 0 replicas.
    pub fn set_closing(&mut self, key: &Key, closing: bool) {
        if closing {
            self.closing.insert(key.clone(), std::time::Instant::now());
        } else {
            self.closing.remove(key);
        }
    }

    /// Whether a Deployment's scale to 0 is committed and not yet seen.
    pub fn is_closing(&self, key: &Key) -> bool {
        self.closing
            .get(key)
            .is_some_and(|at| at.elapsed() < CLOSING_MAX)
    }

    /// Marks a Deployment draining (about to sleep) or not; returns whether the snapshot
    /// changed. Draining shows only while the Deployment is awake.
    pub fn set_draining(&mut self, key: &Key, draining: bool) -> bool {
        let changed = if draining {
            self.index.managed().contains_key(key) && self.draining.insert(key.clone())
        } else {
            self.draining.remove(key)
        };
        changed && {
            let clusters = self.index.clusters_of_deployment(key);
            self.publish_with(clusters)
        }
    }

    /// Managed Deployments added, changed or gone since the last call (see
    /// [`Index::take_touched`]).
    pub fn take_touched(&mut self) -> std::collections::HashSet<Key> {
        self.index.take_touched()
    }

    /// Whether a Deployment is marked draining.
    pub fn is_draining(&self, key: &Key) -> bool {
        self.draining.contains(key)
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The current term (see [`Cache::new_term`]).
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Follows the version: long polls wait on it.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.versions.subscribe()
    }

    /// Published destinations per state, as `(state, count)`.
    pub fn counts(&self) -> [(&'static str, i64); 4] {
        let c = &self.counts;
        [
            ("awake", c[0]),
            ("draining", c[1]),
            ("asleep", c[2]),
            ("waking", c[3]),
        ]
    }

    /// The snapshot filters hold (built; the served bytes come from [`Cache::encoded`]).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            version: self.version,
            term: self.term,
            destinations: self.published.values().cloned().collect(),
            virtual_services: self.virtual_services.clone(),
        }
    }

    fn encoded_for_version(&self) -> std::sync::MutexGuard<'_, Encoded> {
        let mut e = self
            .encoded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if e.version != self.version {
            *e = Encoded {
                version: self.version,
                ..Encoded::default()
            };
        }
        e
    }

    /// The full snapshot as served, encoded once per version, and its ETag (see
    /// [`kzscaler_core::wire::snapshot_etag`]).
    pub fn encoded(&self) -> (bytes::Bytes, String) {
        let mut e = self.encoded_for_version();
        if let Some(full) = &e.full {
            return full.clone();
        }
        let snapshot = SnapshotRef {
            version: self.version,
            term: self.term,
            destinations: self.published.values().collect(),
            virtual_services: &self.virtual_services,
        };
        // Encoding plain data into a Vec cannot fail; an empty body would be refused by
        // filters as not a snapshot, never misread.
        let bytes = serde_json::to_vec(&snapshot).unwrap_or_default();
        let etag = kzscaler_core::wire::snapshot_etag(self.version, &bytes);
        let full = (bytes::Bytes::from(bytes), etag);
        e.full = Some(full.clone());
        full
    }

    /// What to answer a filter holding version `since` of term `term`.
    pub fn answer(&self, since: u64, term: u64) -> Answer {
        if term != self.term || since < self.log_floor || since > self.version {
            let (bytes, etag) = self.encoded();
            return Answer::Full(bytes, etag);
        }
        if since == self.version {
            return Answer::Current;
        }
        let mut e = self.encoded_for_version();
        if let Some(d) = e.deltas.get(&since) {
            return Answer::Delta(d.clone());
        }
        let mut clusters: BTreeSet<&str> = BTreeSet::new();
        let mut routes = false;
        for c in self.log.iter().rev().take_while(|c| c.version > since) {
            clusters.extend(c.clusters.iter().map(String::as_str));
            routes |= c.routes;
        }
        let mut delta = Delta {
            version: self.version,
            term: self.term,
            since,
            upsert: Vec::new(),
            remove: Vec::new(),
            virtual_services: routes.then(|| self.virtual_services.clone()),
        };
        for c in clusters {
            match self.published.get(c) {
                Some(d) => delta.upsert.push(d.clone()),
                None => delta.remove.push(c.to_owned()),
            }
        }
        let bytes = bytes::Bytes::from(serde_json::to_vec(&delta).unwrap_or_default());
        if e.deltas.len() < ENCODED_DELTAS_MAX {
            e.deltas.insert(since, bytes.clone());
        }
        Answer::Delta(bytes)
    }

    /// The destination behind an outbound cluster name, with its Deployment.
    pub fn destination(&self, cluster: &str) -> Option<(&Key, &Destination, &Managed)> {
        let (key, dest) = self.index.destinations().get(cluster)?;
        let managed = self.index.managed().get(key)?;
        Some((key, dest, managed))
    }

    /// The pods of the ready endpoints of the Service behind `cluster` (none when it is not
    /// a destination).
    pub fn ready_pods(&self, cluster: &str) -> Option<&BTreeSet<String>> {
        let (_, dest) = self.index.destinations().get(cluster)?;
        static NONE: BTreeSet<String> = BTreeSet::new();
        Some(
            self.index
                .service_ready(&dest.namespace, &dest.service)
                .unwrap_or(&NONE),
        )
    }

    /// A managed Deployment.
    pub fn managed(&self, key: &Key) -> Option<&Managed> {
        self.index.managed().get(key)
    }

    /// All managed Deployments.
    pub fn all_managed(&self) -> &BTreeMap<Key, Managed> {
        self.index.managed()
    }

    /// Problems not in `reported`; adds them to it and forgets fixed ones.
    pub fn new_problems(
        &mut self,
        reported: &mut BTreeSet<Problem>,
    ) -> Vec<(Problem, ObjectReference)> {
        // Unchanged since the last call: nothing new, unless nothing was reported yet (a new
        // leader reports every problem afresh).
        if !self.index.take_problems_changed() && !reported.is_empty() {
            return Vec::new();
        }
        let now: BTreeSet<Problem> = self.index.problems().map(|(p, _)| p.clone()).collect();
        let fresh = self
            .index
            .problems()
            .filter(|(p, _)| !reported.contains(p))
            .cloned()
            .collect();
        *reported = now;
        fresh
    }

    /// Current problems, sorted.
    pub fn problems(&self) -> Vec<(Problem, ObjectReference)> {
        self.index.problems().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;
    use std::sync::Arc;

    fn deployment(
        ns: &str,
        name: &str,
        replicas: i32,
        annotations: serde_json::Value,
    ) -> Arc<Deployment> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": ns, "name": name, "annotations": annotations},
                "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                         "template": {"metadata": {"labels": {"app": name, "tier": "web"}}}},
                "status": {"readyReplicas": replicas}
            }))
            .unwrap(),
        )
    }

    fn service(ns: &str, name: &str, selector: serde_json::Value, ports: &[i32]) -> Arc<Service> {
        let ports: Vec<_> = ports.iter().map(|p| json!({"port": p})).collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": ns, "name": name},
                "spec": {"selector": selector, "ports": ports}
            }))
            .unwrap(),
        )
    }

    fn slice(ns: &str, svc: &str, ready: &[bool]) -> Arc<EndpointSlice> {
        let eps: Vec<_> = ready
            .iter()
            .enumerate()
            .map(|(i, r)| json!({"addresses": [format!("10.0.0.{i}")], "conditions": {"ready": r}}))
            .collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": ns, "name": format!("{svc}-x"),
                             "labels": {"kubernetes.io/service-name": svc}},
                "addressType": "IPv4", "endpoints": eps
            }))
            .unwrap(),
        )
    }

    fn managed() -> serde_json::Value {
        json!({"kzscaler.io/scale-to-zero": "true", "kzscaler.io/wake-timeout": "30s"})
    }

    #[test]
    fn managed_deployment_maps_to_every_port_of_its_services() {
        let built = Index::from_objects(
            &[deployment("shop", "web", 0, managed())],
            &[
                service("shop", "web", json!({"app": "web"}), &[80, 8080]),
                service("shop", "web-admin", json!({"tier": "web"}), &[9000]),
                service("other", "web", json!({"app": "web"}), &[80]),
            ],
            &[],
            &[],
            "cluster.local",
        );
        let clusters: Vec<&String> = built.destinations().keys().collect();
        assert_eq!(
            clusters,
            vec![
                "outbound|8080||web.shop.svc.cluster.local",
                "outbound|80||web.shop.svc.cluster.local",
                "outbound|9000||web-admin.shop.svc.cluster.local",
            ]
        );
        let (_, d) = &built.destinations()["outbound|80||web.shop.svc.cluster.local"];
        assert_eq!(
            (d.state, d.wake_timeout_ms, d.deployment.as_str()),
            (State::Asleep, 30_000, "web")
        );
        assert!(built.problems().next().is_none());
    }

    #[test]
    fn unmanaged_deployments_are_not_destinations() {
        let built = Index::from_objects(
            &[deployment("shop", "web", 1, json!({}))],
            &[service("shop", "web", json!({"app": "web"}), &[80])],
            &[],
            &[],
            "cluster.local",
        );
        assert!(built.destinations().is_empty() && built.managed().is_empty());
    }

    #[test]
    fn state_follows_replicas_and_ready_endpoints() {
        let svc = [service("shop", "web", json!({"app": "web"}), &[80])];
        let state = |replicas, ready: &[bool]| {
            let b = Index::from_objects(
                &[deployment("shop", "web", replicas, managed())],
                &svc,
                &[slice("shop", "web", ready)],
                &[],
                "cluster.local",
            );
            b.destinations().values().next().map(|(_, d)| d.state)
        };
        assert_eq!(state(0, &[]), Some(State::Asleep));
        assert_eq!(state(1, &[false]), Some(State::Waking));
        assert_eq!(state(1, &[false, true]), Some(State::Awake));
    }

    #[test]
    fn a_draining_mark_goes_with_its_deployment() {
        let svc = [service("shop", "web", json!({"app": "web"}), &[80])];
        let b = || {
            Index::from_objects(
                &[deployment("shop", "web", 1, managed())],
                &svc,
                &[slice("shop", "web", &[true])],
                &[],
                "cluster.local",
            )
        };
        let key = Key {
            namespace: "shop".into(),
            name: "web".into(),
        };
        let mut cache = Cache::default();
        cache.replace_index(b());
        cache.set_draining(&key, true);
        cache.replace_index(Index::default()); // deleted
        assert!(!cache.is_draining(&key));
        cache.replace_index(b()); // created again: not draining
        assert_eq!(cache.snapshot().destinations[0].state, State::Awake);
    }

    #[test]
    fn each_service_is_ready_on_its_own_endpoints_not_its_deployments() {
        // One Deployment behind two Services: "web" has a ready endpoint, "web-admin" (its
        // port not ready yet) has none. Only web's destination is awake.
        let built = Index::from_objects(
            &[deployment("shop", "web", 1, managed())],
            &[
                service("shop", "web", json!({"app": "web"}), &[80]),
                service("shop", "web-admin", json!({"app": "web"}), &[9000]),
            ],
            &[
                slice("shop", "web", &[true]),
                slice("shop", "web-admin", &[false]),
            ],
            &[],
            "cluster.local",
        );
        let state = |c: &str| built.destinations()[c].1.state;
        assert_eq!(
            state("outbound|80||web.shop.svc.cluster.local"),
            State::Awake
        );
        assert_eq!(
            state("outbound|9000||web-admin.shop.svc.cluster.local"),
            State::Waking
        );
        let mut cache = Cache::default();
        cache.replace_index(built);
        assert_eq!(
            cache
                .ready_pods("outbound|9000||web-admin.shop.svc.cluster.local")
                .map(BTreeSet::len),
            Some(0)
        );
    }

    #[test]
    fn service_matching_two_managed_deployments_is_a_problem_and_ignored() {
        let built = Index::from_objects(
            &[
                deployment("shop", "a", 1, managed()),
                deployment("shop", "b", 1, managed()),
            ],
            &[service("shop", "both", json!({"tier": "web"}), &[80])],
            &[],
            &[],
            "cluster.local",
        );
        assert!(built.destinations().is_empty());
        let (p, _) = built.problems().next().unwrap();
        assert_eq!((p.kind, p.reason), ("Service", "AmbiguousService"));
        assert!(p.message.contains("a, b"), "{}", p.message);
    }

    #[test]
    fn bad_annotation_is_a_problem_not_a_destination() {
        let built = Index::from_objects(
            &[deployment(
                "shop",
                "web",
                1,
                json!({"kzscaler.io/scale-to-zero": "true", "kzscaler.io/idle-timeout": "soon"}),
            )],
            &[service("shop", "web", json!({"app": "web"}), &[80])],
            &[],
            &[],
            "cluster.local",
        );
        assert!(built.destinations().is_empty());
        let (p, _) = built.problems().next().unwrap();
        assert_eq!(p.reason, "InvalidAnnotation");
        assert!(p.message.contains("kzscaler.io/idle-timeout") && p.message.contains("soon"));
    }

    #[test]
    fn wake_count_uses_hpa_min_and_count_before_sleep() {
        let mut ann = managed();
        ann[REPLICAS_BEFORE_SLEEP] = json!("3");
        let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"},
                     "minReplicas": 5, "maxReplicas": 10}
        }))
        .unwrap();
        let built = Index::from_objects(
            &[deployment("shop", "web", 0, ann.clone())],
            &[],
            &[],
            &[],
            "cluster.local",
        );
        assert_eq!(built.managed().values().next().unwrap().wake_replicas(), 3);
        let built = Index::from_objects(
            &[deployment("shop", "web", 0, ann)],
            &[],
            &[],
            &[Arc::new(hpa)],
            "cluster.local",
        );
        assert_eq!(built.managed().values().next().unwrap().wake_replicas(), 5);
    }

    #[test]
    fn version_changes_only_when_destinations_do() {
        let objects = |replicas| {
            Index::from_objects(
                &[deployment("shop", "web", replicas, managed())],
                &[service("shop", "web", json!({"app": "web"}), &[80])],
                &[slice("shop", "web", &[true])],
                &[],
                "cluster.local",
            )
        };
        let mut cache = Cache::default();
        assert!(cache.replace_index(objects(1)));
        let v = cache.snapshot().version;
        assert!(!cache.replace_index(objects(1)));
        assert_eq!(cache.snapshot().version, v);
        assert!(cache.replace_index(objects(0)));
        assert_eq!(cache.snapshot().version, v + 1);
    }

    #[test]
    fn a_restarted_cache_does_not_reuse_versions() {
        let mut before = Cache::starting_at(1_000);
        before.replace_index(Index::default());
        let mut after = Cache::starting_at(2_000);
        after.replace_index(Index::default());
        assert!(after.snapshot().version > before.snapshot().version);
    }

    #[test]
    fn the_served_bytes_and_etag_follow_every_change_and_term() {
        let mut cache = Cache::starting_at(100);
        cache.replace_index(Index::default());
        let (bytes, etag) = cache.encoded();
        let served: Snapshot = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(served, cache.snapshot());
        assert_eq!(
            etag,
            kzscaler_core::wire::snapshot_etag(served.version, &bytes)
        );
        cache.new_term(1_000);
        let (bytes, etag2) = cache.encoded();
        let served: Snapshot = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(served.version, 1_000, "a new term is served at once");
        assert_ne!(etag, etag2);
    }

    #[test]
    fn a_new_leaders_versions_continue_above_the_old_leaders() {
        // Two replicas start at the same time: the follower's cache never published, the
        // leader's changed 500 times. The follower takes over 2 s later.
        let start = version_base(1_700_000_000_000);
        let mut old = Cache::starting_at(start);
        for i in 0..500 {
            old.replace_index(Index::from_objects(
                &[deployment("n", "x", i % 2, managed())],
                &[service("n", "x", json!({"app": "x"}), &[80])],
                &[],
                &[],
                "cluster.local",
            ));
        }
        assert_eq!(old.version(), start + 500);
        let mut new = Cache::starting_at(start);
        new.new_term(version_base(1_700_000_002_000));
        new.replace_index(Index::default());
        assert!(new.snapshot().version > old.snapshot().version);
        let v = new.snapshot().version;
        new.new_term(version_base(1_600_000_000_000));
        assert_eq!(
            new.snapshot().version,
            v + 1,
            "never backwards, and a new version"
        );
        assert_eq!(new.term(), v + 1, "a new term");
    }

    fn cache_of(replicas: &[i32]) -> Index {
        let deps: Vec<_> = (0..replicas.len())
            .map(|i| deployment("shop", &format!("w{i}"), replicas[i], managed()))
            .collect();
        let svcs: Vec<_> = (0..replicas.len())
            .map(|i| {
                service(
                    "shop",
                    &format!("w{i}"),
                    json!({"app": format!("w{i}")}),
                    &[80],
                )
            })
            .collect();
        Index::from_objects(&deps, &svcs, &[], &[], "cluster.local")
    }

    fn delta(answer: Answer) -> Delta {
        match answer {
            Answer::Delta(b) => serde_json::from_slice(&b).unwrap(),
            other => panic!("expected a delta, got {other:?}"),
        }
    }

    #[test]
    fn a_filter_one_change_behind_gets_only_that_change() {
        let mut cache = Cache::starting_at(1_000);
        cache.replace_index(cache_of(&[0; 100]));
        let (v, term) = (cache.version(), cache.term());
        assert_eq!(cache.answer(v, term), Answer::Current);
        let mut r = [0; 100];
        r[42] = 1;
        cache.replace_index(cache_of(&r));
        let d = delta(cache.answer(v, term));
        assert_eq!((d.since, d.version, d.term), (v, cache.version(), term));
        assert_eq!(d.upsert.len(), 1);
        assert_eq!(d.upsert[0].deployment, "w42");
        assert_eq!(d.upsert[0].state, State::Waking);
        assert!(d.remove.is_empty() && d.virtual_services.is_none());
        // Two changes behind: both, and a removed destination is named.
        r[7] = 2;
        cache.replace_index(cache_of(&r[..99]));
        let d = delta(cache.answer(v, term));
        let names: Vec<&str> = d.upsert.iter().map(|d| d.deployment.as_str()).collect();
        assert_eq!(names, ["w42", "w7"]);
        assert_eq!(d.remove, ["outbound|80||w99.shop.svc.cluster.local"]);
        // Applying the delta to the old table gives the new snapshot.
        let mut table: BTreeMap<String, Destination> = BTreeMap::new();
        for dest in Cache::new(cache_of(&[0; 100]), 0).snapshot().destinations {
            table.insert(dest.cluster.clone(), dest);
        }
        for c in &d.remove {
            table.remove(c);
        }
        for dest in d.upsert {
            table.insert(dest.cluster.clone(), dest);
        }
        assert_eq!(
            table.into_values().collect::<Vec<_>>(),
            cache.snapshot().destinations
        );
    }

    #[test]
    fn an_unknown_term_or_a_forgotten_version_gets_the_full_snapshot() {
        let mut cache = Cache::starting_at(1_000);
        cache.replace_index(cache_of(&[0; 3]));
        let (v, term) = (cache.version(), cache.term());
        let full = |a: Answer| matches!(a, Answer::Full(..));
        assert!(full(cache.answer(v, term + 1)), "another term");
        assert!(full(cache.answer(v + 5, term)), "a version from the future");
        assert!(full(cache.answer(v - 2, term)), "before the log");
        cache.new_term(version_base(2_000));
        assert!(
            full(cache.answer(v, term)),
            "a new term forgets the old one's log"
        );
        // The log is bounded: a filter far enough behind gets the full snapshot.
        let (v, term) = (cache.version(), cache.term());
        for i in 0..(LOG_MAX_VERSIONS + 1) {
            cache.replace_index(cache_of(&[i32::from(i % 2 == 0); 3]));
        }
        assert!(full(cache.answer(v, term)));
        assert!(matches!(
            cache.answer(cache.version() - 1, term),
            Answer::Delta(_)
        ));
    }

    #[test]
    fn a_draining_mark_is_one_change_of_that_deployments_destinations() {
        let mut cache = Cache::starting_at(1_000);
        let svc = [service("shop", "web", json!({"app": "web"}), &[80, 81])];
        cache.replace_index(Index::from_objects(
            &[deployment("shop", "web", 1, managed())],
            &svc,
            &[slice("shop", "web", &[true])],
            &[],
            "cluster.local",
        ));
        let (v, term) = (cache.version(), cache.term());
        let key = Key {
            namespace: "shop".into(),
            name: "web".into(),
        };
        assert!(cache.set_draining(&key, true));
        let d = delta(cache.answer(v, term));
        assert_eq!(d.upsert.len(), 2);
        assert!(d.upsert.iter().all(|d| d.state == State::Draining));
        assert_eq!(cache.counts()[1], ("draining", 2));
    }
}
