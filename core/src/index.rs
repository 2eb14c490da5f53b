//! The index: every managed destination (Service port → managed Deployment), kept current one
//! object at a time. A watch event is `apply`d or `delete`d; only what that object can change
//! is computed again (its Service's match, its Deployment's destinations), so the cost of an
//! event follows what changed, not what exists.
//!
//! ```text
//!  watch events ──▶ apply_* / delete_*  ──▶ per-namespace maps (stripped objects)
//!   (one object)         │                        │ matching for that object only
//!                        ▼                        ▼
//!                 changed clusters  ◀── managed, destinations, problems (derived, global)
//!                        │
//!                        ▼ Cache::publish: one new snapshot version per batch
//! ```
//!
//! Objects are stripped to the fields used before they are kept: a Service is its selector and
//! TCP ports, an EndpointSlice its Service and the identities of its ready endpoints.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_core::Resource;

use crate::cluster::outbound_cluster;
use crate::managed::{Key, Managed, Problem, endpoint_identity, state_of};
use crate::names::{self, SERVICE_NAME_LABEL};
use crate::spec::{ManagedSpec, replicas_before_sleep};
use crate::virtualservice::{Routes, VirtualService};
use crate::wire::{Destination, RouteTimeouts};

/// Labels or a selector, sorted by key: a few pairs, where a map would allocate a whole node.
type Labels = Box<[(String, String)]>;

fn labels(map: Option<&BTreeMap<String, String>>) -> Labels {
    // A BTreeMap iterates in key order: sorted already.
    map.into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A kept annotated Deployment: its pod template's labels (for matching) and what it means.
#[derive(Debug, Clone, PartialEq)]
struct Dep {
    labels: Labels,
    /// `Err`: a bad annotation; the Deployment is not managed until it is fixed.
    managed: Result<Managed, (Problem, ObjectReference)>,
    /// A second, non-fatal problem (a bad count before sleep).
    warning: Option<(Problem, ObjectReference)>,
}

impl Dep {
    fn matchable(&self) -> Option<&Labels> {
        self.managed.is_ok().then_some(&self.labels)
    }
}

/// A kept Service: what matching and destinations need.
#[derive(Debug, Clone, PartialEq)]
struct Svc {
    /// Empty: selects nothing.
    selector: Labels,
    /// TCP ports.
    ports: Vec<u16>,
    /// For Events about it.
    uid: Option<String>,
}

/// What one namespace holds.
#[derive(Debug, Default)]
struct Ns {
    /// Annotated `kzscaler.io/scale-to-zero` only; others are not kept.
    deployments: HashMap<String, Dep>,
    services: HashMap<String, Svc>,
    /// EndpointSlice name → (its Service, the identities of its ready endpoints).
    slices: HashMap<String, (String, BTreeSet<String>)>,
    /// Service → its slices' names.
    slices_of: HashMap<String, BTreeSet<String>>,
    /// Service → the identities of its ready endpoints, over all its slices.
    ready: HashMap<String, BTreeSet<String>>,
    /// HPA name → (target Deployment, minReplicas).
    hpas: HashMap<String, (String, u32)>,
    /// Deployment → the minReplicas of the HPAs targeting it.
    hpa_mins: HashMap<String, Vec<(String, u32)>>,
    /// Service → the one managed Deployment it selects.
    matched: HashMap<String, String>,
    /// Deployment → the Services matched to it.
    services_of: HashMap<String, Vec<String>>,
    /// Service → its destinations' cluster names.
    clusters_of: HashMap<String, Vec<String>>,
    /// Label pair → the matchable Deployments whose pod template has it: a Service is matched
    /// against the Deployments having its selector's first pair, not against all of them.
    deployments_by_label: HashMap<(String, String), Vec<String>>,
    /// The first pair of each Service's selector → the Services: a Deployment's labels find
    /// the Services that may select it.
    services_by_label: HashMap<(String, String), Vec<String>>,
}

/// Adds `name` under `pair` (kept sorted, once).
fn link(map: &mut HashMap<(String, String), Vec<String>>, pair: &(String, String), name: &str) {
    let list = map.entry(pair.clone()).or_default();
    if let Err(i) = list.binary_search_by(|n| n.as_str().cmp(name)) {
        list.insert(i, name.to_owned());
    }
}

/// Removes `name` from under `pair`.
fn unlink(map: &mut HashMap<(String, String), Vec<String>>, pair: &(String, String), name: &str) {
    if let Some(list) = map.get_mut(pair) {
        list.retain(|n| n != name);
        if list.is_empty() {
            map.remove(pair);
        }
    }
}

impl Ns {
    /// The Services whose selector selects `labels` (a name may come more than once): a
    /// Service is listed under its selector's first pair, which such labels have.
    fn services_selecting<'a>(&'a self, labels: &'a Labels) -> impl Iterator<Item = &'a String> {
        labels
            .iter()
            .filter_map(|pair| self.services_by_label.get(pair))
            .flatten()
            .filter(|name| {
                self.services
                    .get(*name)
                    .is_some_and(|svc| selects(&svc.selector, labels))
            })
    }

    fn is_empty(&self) -> bool {
        self.deployments.is_empty()
            && self.services.is_empty()
            && self.slices.is_empty()
            && self.hpas.is_empty()
    }
}

/// A kind of object the index keeps (see [`Index::keys`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Annotated Deployments.
    Deployments,
    /// Services.
    Services,
    /// EndpointSlices.
    EndpointSlices,
    /// HPAs targeting a Deployment.
    Hpas,
    /// VirtualServices.
    VirtualServices,
    /// Namespaces in scope (namespace `""`).
    Namespaces,
}

/// Everything known about managed destinations, derived incrementally.
#[derive(Debug)]
pub struct Index {
    domain: String,
    /// Namespaces in scope; `None`: all.
    scope: Option<HashSet<String>>,
    namespaces: HashMap<String, Ns>,
    managed: BTreeMap<Key, Managed>,
    destinations: BTreeMap<String, (Key, Destination)>,
    problems: BTreeMap<(&'static str, Key), (Problem, ObjectReference)>,
    problems_changed: bool,
    virtual_services: BTreeMap<Key, Routes>,
    /// Services with destinations, as `(namespace, name)`: the VirtualServices routing to
    /// them are published.
    managed_services: BTreeSet<(String, String)>,
    route_timeouts: Vec<RouteTimeouts>,
    routes_stale: bool,
    /// Clusters whose destination may have changed since [`Index::take_changed`].
    changed: BTreeSet<String>,
    /// Managed Deployments added, changed or removed since [`Index::take_touched`].
    touched: HashSet<Key>,
}

impl Default for Index {
    fn default() -> Self {
        Self::new("cluster.local", None)
    }
}

fn key_of<K: Resource>(obj: &K) -> Option<Key> {
    Some(Key {
        namespace: obj.meta().namespace.clone()?,
        name: obj.meta().name.clone()?,
    })
}

fn selects(selector: &Labels, labels: &Labels) -> bool {
    !selector.is_empty()
        && selector.iter().all(|(k, v)| {
            labels
                .binary_search_by(|(lk, _)| lk.as_str().cmp(k))
                .is_ok_and(|i| labels[i].1 == *v)
        })
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// === impl Index ===

impl Index {
    /// An empty index. `scope`: the namespaces to manage (`None`: all); see
    /// [`Index::set_in_scope`].
    pub fn new(domain: &str, scope: Option<HashSet<String>>) -> Self {
        Self {
            domain: domain.to_owned(),
            scope,
            namespaces: HashMap::new(),
            managed: BTreeMap::new(),
            destinations: BTreeMap::new(),
            problems: BTreeMap::new(),
            problems_changed: false,
            virtual_services: BTreeMap::new(),
            managed_services: BTreeSet::new(),
            route_timeouts: Vec::new(),
            routes_stale: false,
            changed: BTreeSet::new(),
            touched: HashSet::new(),
        }
    }

    /// An index of these objects, all namespaces in scope (tests).
    pub fn from_objects(
        deployments: &[std::sync::Arc<Deployment>],
        services: &[std::sync::Arc<Service>],
        slices: &[std::sync::Arc<EndpointSlice>],
        hpas: &[std::sync::Arc<HorizontalPodAutoscaler>],
        domain: &str,
    ) -> Self {
        Self::from_refs(
            deployments.iter().map(|d| &**d),
            services.iter().map(|s| &**s),
            slices.iter().map(|s| &**s),
            hpas.iter().map(|h| &**h),
            domain,
        )
    }

    /// An index of these objects, all namespaces in scope (`kubectl kzscaler`).
    pub fn from_refs<'a>(
        deployments: impl IntoIterator<Item = &'a Deployment>,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        hpas: impl IntoIterator<Item = &'a HorizontalPodAutoscaler>,
        domain: &str,
    ) -> Self {
        let mut index = Self::new(domain, None);
        for d in deployments {
            index.apply_deployment(d);
        }
        for h in hpas {
            index.apply_hpa(h);
        }
        for s in slices {
            index.apply_slice(s);
        }
        for s in services {
            index.apply_service(s);
        }
        index
    }

    /// The `(namespace, name)` of every object of a kind it keeps: what a re-list that no
    /// longer shows them deletes (no other copy of the keys is needed).
    pub fn keys(&self, kind: Kept) -> Vec<(String, String)> {
        let per_ns = |names: &dyn Fn(&Ns) -> Vec<String>| -> Vec<(String, String)> {
            self.namespaces
                .iter()
                .flat_map(|(ns, n)| names(n).into_iter().map(move |name| (ns.clone(), name)))
                .collect()
        };
        match kind {
            Kept::Deployments => per_ns(&|n| n.deployments.keys().cloned().collect()),
            Kept::Services => per_ns(&|n| n.services.keys().cloned().collect()),
            Kept::EndpointSlices => per_ns(&|n| n.slices.keys().cloned().collect()),
            Kept::Hpas => per_ns(&|n| n.hpas.keys().cloned().collect()),
            Kept::VirtualServices => self
                .virtual_services
                .keys()
                .map(|k| (k.namespace.clone(), k.name.clone()))
                .collect(),
            Kept::Namespaces => self
                .scope
                .iter()
                .flatten()
                .map(|n| (String::new(), n.clone()))
                .collect(),
        }
    }

    /// Managed Deployments (valid annotations, in scope).
    pub fn managed(&self) -> &BTreeMap<Key, Managed> {
        &self.managed
    }

    /// Destinations by cluster name, with their Deployment.
    pub fn destinations(&self) -> &BTreeMap<String, (Key, Destination)> {
        &self.destinations
    }

    /// The identities of the ready endpoints of a Service.
    pub fn service_ready(&self, namespace: &str, service: &str) -> Option<&BTreeSet<String>> {
        self.namespaces.get(namespace)?.ready.get(service)
    }

    /// The Services matched to a managed Deployment (its destinations come from them), sorted.
    pub fn services_of(&self, key: &Key) -> &[String] {
        self.namespaces
            .get(&key.namespace)
            .and_then(|ns| ns.services_of.get(&key.name))
            .map_or(&[], Vec::as_slice)
    }

    /// The problem of an object, if it has one: `kind` is `Deployment` or `Service`.
    pub fn problem(&self, kind: &'static str, key: &Key) -> Option<&Problem> {
        self.problems.get(&(kind, key.clone())).map(|(p, _)| p)
    }

    /// The problems of the Services that select a managed Deployment's pods but are ignored
    /// (they select other managed Deployments too), sorted by Service.
    pub fn ignored_services_of(&self, key: &Key) -> Vec<&Problem> {
        let Some(ns) = self.namespaces.get(&key.namespace) else {
            return Vec::new();
        };
        let Some(labels) = ns.deployments.get(&key.name).and_then(Dep::matchable) else {
            return Vec::new();
        };
        let mut names: Vec<&String> = ns.services_selecting(labels).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| {
                self.problem(
                    "Service",
                    &Key {
                        namespace: key.namespace.clone(),
                        name: name.clone(),
                    },
                )
            })
            .collect()
    }

    /// The cluster names of a Deployment's destinations.
    pub fn clusters_of_deployment(&self, key: &Key) -> BTreeSet<String> {
        let Some(ns) = self.namespaces.get(&key.namespace) else {
            return BTreeSet::new();
        };
        ns.services_of
            .get(&key.name)
            .into_iter()
            .flatten()
            .filter_map(|s| ns.clusters_of.get(s))
            .flatten()
            .cloned()
            .collect()
    }

    /// Current problems, sorted.
    pub fn problems(&self) -> impl Iterator<Item = &(Problem, ObjectReference)> {
        self.problems.values()
    }

    /// Whether problems changed since the last call.
    pub fn take_problems_changed(&mut self) -> bool {
        std::mem::take(&mut self.problems_changed)
    }

    /// The route timeouts of the VirtualServices routing to managed destinations, sorted.
    pub fn route_timeouts(&mut self) -> &[RouteTimeouts] {
        if std::mem::take(&mut self.routes_stale) {
            let services = &self.managed_services;
            self.route_timeouts = self
                .virtual_services
                .values()
                .filter(|r| r.routes_to(services))
                .map(Routes::timeouts)
                .collect();
        }
        &self.route_timeouts
    }

    /// Clusters whose destination may have changed since the last call (added, removed or
    /// changed).
    pub fn take_changed(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.changed)
    }

    /// Managed Deployments added, changed (any field of their [`Managed`]) or no longer
    /// managed since the last call: what the sleeper looks at again.
    pub fn take_touched(&mut self) -> HashSet<Key> {
        std::mem::take(&mut self.touched)
    }

    /// Counts these Deployments as touched (a cache replacing its index: the old one's).
    pub fn touch(&mut self, keys: impl IntoIterator<Item = Key>) {
        self.touched.extend(keys);
    }

    /// Whether the route timeouts may have changed since [`Index::route_timeouts`] was last
    /// read.
    pub fn routes_stale(&self) -> bool {
        self.routes_stale
    }

    /// Every cluster, as changed (a cache replacing its index).
    pub fn mark_all_changed(&mut self) {
        self.changed.extend(self.destinations.keys().cloned());
        self.routes_stale = true;
    }

    fn in_scope(&self, ns: &str) -> bool {
        self.scope.as_ref().is_none_or(|s| s.contains(ns))
    }

    /// Puts a namespace in scope (its namespace-selector labels match) or out of it.
    pub fn set_in_scope(&mut self, namespace: &str, in_scope: bool) {
        let Some(scope) = self.scope.as_mut() else {
            return;
        };
        let changed = if in_scope {
            scope.insert(namespace.to_owned())
        } else {
            scope.remove(namespace)
        };
        if changed {
            self.refresh_namespace(namespace);
        }
    }

    /// The namespaces in scope (`None`: all).
    pub fn scope(&self) -> Option<&HashSet<String>> {
        self.scope.as_ref()
    }

    fn refresh_namespace(&mut self, namespace: &str) {
        let Some(ns) = self.namespaces.get(namespace) else {
            return;
        };
        let deps: Vec<String> = ns.deployments.keys().cloned().collect();
        let svcs: Vec<String> = ns.services.keys().cloned().collect();
        for s in &svcs {
            self.rematch_service(namespace, s);
        }
        for d in &deps {
            self.refresh_deployment(namespace, d);
        }
    }

    fn ns_mut(&mut self, namespace: &str) -> &mut Ns {
        self.namespaces.entry(namespace.to_owned()).or_default()
    }

    fn drop_ns_if_empty(&mut self, namespace: &str) {
        if self.namespaces.get(namespace).is_some_and(Ns::is_empty) {
            self.namespaces.remove(namespace);
        }
    }

    fn set_problem(
        &mut self,
        kind: &'static str,
        key: &Key,
        p: Option<(Problem, ObjectReference)>,
    ) {
        let k = (kind, key.clone());
        let changed = match p.filter(|_| self.in_scope(&key.namespace)) {
            Some(p) => self.problems.insert(k, p.clone()).as_ref() != Some(&p),
            None => self.problems.remove(&k).is_some(),
        };
        self.problems_changed |= changed;
    }

    // --- Deployments ---

    /// A Deployment was created or changed.
    pub fn apply_deployment(&mut self, d: &Deployment) {
        let Some(key) = key_of(d) else {
            return;
        };
        let Some(dep) = strip_deployment(d, &key) else {
            self.delete_deployment(&key.namespace, &key.name);
            return;
        };
        let ns = self.ns_mut(&key.namespace);
        let old = ns.deployments.insert(key.name.clone(), dep);
        let new = ns.deployments.get(&key.name);
        let old_labels = old.as_ref().and_then(Dep::matchable).cloned();
        let new_labels = new.and_then(Dep::matchable).cloned();
        if old_labels != new_labels {
            for pair in old_labels.iter().flat_map(|l| l.iter()) {
                unlink(&mut ns.deployments_by_label, pair, &key.name);
            }
            for pair in new_labels.iter().flat_map(|l| l.iter()) {
                link(&mut ns.deployments_by_label, pair, &key.name);
            }
            self.rematch_selecting(&key, old_labels.as_ref(), new_labels.as_ref());
        }
        self.refresh_deployment(&key.namespace, &key.name);
    }

    /// A Deployment was deleted (or is no longer annotated).
    pub fn delete_deployment(&mut self, namespace: &str, name: &str) {
        let Some(ns) = self.namespaces.get_mut(namespace) else {
            return;
        };
        let Some(old) = ns.deployments.remove(name) else {
            return;
        };
        let key = Key {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        if let Some(labels) = old.matchable() {
            let labels = labels.clone();
            for pair in labels.iter() {
                unlink(&mut ns.deployments_by_label, pair, name);
            }
            self.rematch_selecting(&key, Some(&labels), None);
        }
        self.refresh_deployment(namespace, name);
        self.drop_ns_if_empty(namespace);
    }

    /// Matches again the Services of `key`'s namespace that select either label set, or are
    /// matched to it now.
    fn rematch_selecting(&mut self, key: &Key, old: Option<&Labels>, new: Option<&Labels>) {
        let Some(ns) = self.namespaces.get(&key.namespace) else {
            return;
        };
        let mut affected: BTreeSet<String> = ns
            .services_of
            .get(&key.name)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for labels in old.into_iter().chain(new) {
            affected.extend(ns.services_selecting(labels).cloned());
        }
        for s in &affected {
            self.rematch_service(&key.namespace, s);
        }
    }

    /// Recomputes a Deployment's [`Managed`] (ready pods, HPA minimum), its problems and the
    /// destinations of its Services.
    fn refresh_deployment(&mut self, namespace: &str, name: &str) {
        let key = Key {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let in_scope = self.in_scope(namespace);
        let (managed, problem, warning, services) = match self.namespaces.get(namespace) {
            None => (None, None, None, Vec::new()),
            Some(ns) => {
                let services = ns.services_of.get(name).cloned().unwrap_or_default();
                match ns.deployments.get(name) {
                    None => (None, None, None, services),
                    Some(dep) => match &dep.managed {
                        Err(p) => (None, Some(p.clone()), None, services),
                        Ok(m) => {
                            let mut m = m.clone();
                            m.hpa_min = ns
                                .hpa_mins
                                .get(name)
                                .and_then(|v| v.iter().map(|(_, min)| *min).max());
                            m.ready_pods = services
                                .iter()
                                .filter_map(|s| ns.ready.get(s))
                                .flatten()
                                .cloned()
                                .collect();
                            (Some(m), None, dep.warning.clone(), services)
                        }
                    },
                }
            }
        };
        match managed.filter(|_| in_scope) {
            Some(m) if self.managed.get(&key) != Some(&m) => {
                self.managed.insert(key.clone(), m);
                self.touched.insert(key.clone());
            }
            Some(_) => {}
            None => {
                if self.managed.remove(&key).is_some() {
                    self.touched.insert(key.clone());
                }
            }
        }
        self.set_problem("Deployment", &key, problem.or(warning));
        for s in &services {
            self.refresh_destinations(namespace, s);
        }
    }

    // --- Services ---

    /// A Service was created or changed.
    pub fn apply_service(&mut self, s: &Service) {
        let Some(key) = key_of(s) else {
            return;
        };
        let spec = s.spec.as_ref();
        let svc = Svc {
            selector: labels(spec.and_then(|s| s.selector.as_ref())),
            ports: spec
                .and_then(|s| s.ports.as_ref())
                .into_iter()
                .flatten()
                .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                .filter_map(|p| u16::try_from(p.port).ok())
                .collect(),
            uid: s.metadata.uid.clone(),
        };
        let ns = self.ns_mut(&key.namespace);
        if ns.services.get(&key.name) == Some(&svc) {
            return;
        }
        if let Some(pair) = svc.selector.first() {
            link(&mut ns.services_by_label, pair, &key.name);
        }
        if let Some(old) = ns.services.insert(key.name.clone(), svc)
            && let Some(pair) = old.selector.first()
            && ns.services.get(&key.name).and_then(|s| s.selector.first()) != Some(pair)
        {
            unlink(&mut ns.services_by_label, pair, &key.name);
        }
        self.rematch_service(&key.namespace, &key.name);
    }

    /// A Service was deleted.
    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        let Some(ns) = self.namespaces.get_mut(namespace) else {
            return;
        };
        let Some(old) = ns.services.remove(name) else {
            return;
        };
        if let Some(pair) = old.selector.first() {
            unlink(&mut ns.services_by_label, pair, name);
        }
        self.rematch_service(namespace, name);
        self.drop_ns_if_empty(namespace);
    }

    /// Matches one Service against the managed Deployments of its namespace.
    fn rematch_service(&mut self, namespace: &str, name: &str) {
        let skey = Key {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let Some(ns) = self.namespaces.get_mut(namespace) else {
            return;
        };
        let mut problem = None;
        let new: Option<String> = match ns.services.get(name) {
            None => None,
            Some(svc) => {
                // Only the Deployments with every pair of the selector can match: the fewest
                // having one of them are the candidates.
                let mut matched: Vec<&String> = svc
                    .selector
                    .iter()
                    .map(|pair| ns.deployments_by_label.get(pair))
                    // A pair no Deployment has: none matches.
                    .min_by_key(|list| list.map_or(0, Vec::len))
                    .flatten()
                    .into_iter()
                    .flatten()
                    .filter(|n| {
                        ns.deployments
                            .get(*n)
                            .and_then(Dep::matchable)
                            .is_some_and(|l| selects(&svc.selector, l))
                    })
                    .collect();
                matched.sort();
                match matched.as_slice() {
                    [] => None,
                    [one] => Some((*one).clone()),
                    many => {
                        let names: Vec<&str> = many.iter().map(|n| n.as_str()).collect();
                        problem = Some((
                            Problem {
                                kind: "Service",
                                key: skey.clone(),
                                reason: "AmbiguousService",
                                message: format!(
                                    "Service {name} selects {} managed Deployments ({}); kzscaler ignores this Service",
                                    many.len(),
                                    names.join(", ")
                                ),
                            },
                            ObjectReference {
                                api_version: Some("v1".into()),
                                kind: Some("Service".into()),
                                namespace: Some(namespace.to_owned()),
                                name: Some(name.to_owned()),
                                uid: svc.uid.clone(),
                                ..ObjectReference::default()
                            },
                        ));
                        None
                    }
                }
            }
        };
        let old = match &new {
            Some(d) => ns.matched.insert(name.to_owned(), d.clone()),
            None => ns.matched.remove(name),
        };
        if old != new {
            if let Some(o) = &old
                && let Some(list) = ns.services_of.get_mut(o)
            {
                list.retain(|s| s != name);
                if list.is_empty() {
                    ns.services_of.remove(o);
                }
            }
            if let Some(n) = &new {
                let list = ns.services_of.entry(n.clone()).or_default();
                if let Err(i) = list.binary_search_by(|s| s.as_str().cmp(name)) {
                    list.insert(i, name.to_owned());
                }
            }
        }
        self.set_problem("Service", &skey, problem);
        self.refresh_destinations(namespace, name);
        if old != new {
            // Their ready pods are summed over their Services.
            for d in old.iter().chain(new.iter()) {
                self.refresh_managed_ready(namespace, d);
            }
        }
    }

    /// Recomputes only a managed Deployment's ready pods (its Services changed).
    fn refresh_managed_ready(&mut self, namespace: &str, name: &str) {
        let key = Key {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let Some(ns) = self.namespaces.get(namespace) else {
            return;
        };
        let Some(m) = self.managed.get_mut(&key) else {
            return;
        };
        let ready: BTreeSet<String> = ns
            .services_of
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|s| ns.ready.get(s))
            .flatten()
            .cloned()
            .collect();
        if m.ready_pods != ready {
            m.ready_pods = ready;
            self.touched.insert(key);
        }
    }

    /// Recomputes the destinations of one Service from its match, its ports and its ready
    /// endpoints.
    fn refresh_destinations(&mut self, namespace: &str, service: &str) {
        let in_scope = self.in_scope(namespace);
        let Some(ns) = self.namespaces.get_mut(namespace) else {
            return;
        };
        let old = ns.clusters_of.remove(service).unwrap_or_default();
        let mut new: Vec<(String, (Key, Destination))> = Vec::new();
        if let (Some(svc), Some(dep)) = (ns.services.get(service), ns.matched.get(service)) {
            let dkey = Key {
                namespace: namespace.to_owned(),
                name: dep.clone(),
            };
            if let Some(m) = self.managed.get(&dkey).filter(|_| in_scope) {
                let ready = ns.ready.get(service).map_or(0, BTreeSet::len);
                for port in &svc.ports {
                    let cluster = outbound_cluster(service, namespace, &self.domain, *port);
                    new.push((
                        cluster.clone(),
                        (
                            dkey.clone(),
                            Destination {
                                cluster,
                                namespace: namespace.to_owned(),
                                service: service.to_owned(),
                                deployment: dep.clone(),
                                state: state_of(m.desired, ready),
                                wake_timeout_ms: duration_ms(m.spec.wake_timeout),
                                ignore_paths: m.spec.ignore_paths.clone(),
                            },
                        ),
                    ));
                }
            }
        }
        if !new.is_empty() {
            ns.clusters_of.insert(
                service.to_owned(),
                new.iter().map(|(c, _)| c.clone()).collect(),
            );
        }
        let had = !old.is_empty();
        let has = !new.is_empty();
        for c in old {
            self.destinations.remove(&c);
            self.changed.insert(c);
        }
        for (c, v) in new {
            self.changed.insert(c.clone());
            self.destinations.insert(c, v);
        }
        if had != has {
            let k = (namespace.to_owned(), service.to_owned());
            if has {
                self.managed_services.insert(k);
            } else {
                self.managed_services.remove(&k);
            }
            self.routes_stale = true;
        }
    }

    // --- EndpointSlices ---

    /// An EndpointSlice was created or changed.
    pub fn apply_slice(&mut self, s: &EndpointSlice) {
        let Some(key) = key_of(s) else {
            return;
        };
        let Some(service) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            self.delete_slice(&key.namespace, &key.name);
            return;
        };
        let ready: BTreeSet<String> = s
            .endpoints
            .iter()
            .flatten()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .filter_map(endpoint_identity)
            .collect();
        let ns = self.ns_mut(&key.namespace);
        let entry = (service.clone(), ready);
        if ns.slices.get(&key.name) == Some(&entry) {
            return;
        }
        let old = ns.slices.insert(key.name.clone(), entry);
        ns.slices_of
            .entry(service.clone())
            .or_default()
            .insert(key.name.clone());
        let mut touched = vec![service.clone()];
        if let Some((old_svc, _)) = old
            && old_svc != *service
        {
            unlink_slice(ns, &old_svc, &key.name);
            touched.push(old_svc);
        }
        for svc in touched {
            self.refresh_ready(&key.namespace, &svc);
        }
    }

    /// An EndpointSlice was deleted.
    pub fn delete_slice(&mut self, namespace: &str, name: &str) {
        let Some(ns) = self.namespaces.get_mut(namespace) else {
            return;
        };
        let Some((svc, _)) = ns.slices.remove(name) else {
            return;
        };
        unlink_slice(ns, &svc, name);
        self.refresh_ready(namespace, &svc);
        self.drop_ns_if_empty(namespace);
    }

    /// Sums a Service's ready endpoints over its slices; on a change, refreshes what depends
    /// on them.
    fn refresh_ready(&mut self, namespace: &str, service: &str) {
        let Some(ns) = self.namespaces.get_mut(namespace) else {
            return;
        };
        let ready: BTreeSet<String> = ns
            .slices_of
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|n| ns.slices.get(n))
            .flat_map(|(_, r)| r.iter().cloned())
            .collect();
        let old = if ns.slices_of.contains_key(service) {
            ns.ready.insert(service.to_owned(), ready.clone())
        } else {
            ns.ready.remove(service)
        };
        if old.unwrap_or_default() == ready {
            return;
        }
        if let Some(dep) = ns.matched.get(service).cloned() {
            self.refresh_managed_ready(namespace, &dep);
            self.refresh_destinations(namespace, service);
        }
    }

    // --- HorizontalPodAutoscalers ---

    /// An HPA was created or changed.
    pub fn apply_hpa(&mut self, h: &HorizontalPodAutoscaler) {
        let Some(key) = key_of(h) else {
            return;
        };
        let target = &h.spec.scale_target_ref;
        if target.kind != "Deployment" {
            self.delete_hpa(&key.namespace, &key.name);
            return;
        }
        let min = h
            .spec
            .min_replicas
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1);
        let entry = (target.name.clone(), min);
        let ns = self.ns_mut(&key.namespace);
        let old = ns.hpas.insert(key.name.clone(), entry.clone());
        if old.as_ref() == Some(&entry) {
            return;
        }
        if let Some((target, _)) = &old {
            unlink_hpa(ns, target, &key.name);
        }
        let mins = ns.hpa_mins.entry(entry.0.clone()).or_default();
        mins.retain(|(h, _)| *h != key.name);
        mins.push((key.name.clone(), entry.1));
        for (d, _) in old.iter().chain(std::iter::once(&entry)) {
            self.refresh_deployment(&key.namespace, d);
        }
    }

    /// An HPA was deleted.
    pub fn delete_hpa(&mut self, namespace: &str, name: &str) {
        let Some(ns) = self.namespaces.get_mut(namespace) else {
            return;
        };
        let Some((target, _)) = ns.hpas.remove(name) else {
            return;
        };
        unlink_hpa(ns, &target, name);
        self.refresh_deployment(namespace, &target);
        self.drop_ns_if_empty(namespace);
    }

    // --- VirtualServices ---

    /// A VirtualService was created or changed.
    pub fn apply_virtual_service(&mut self, vs: &VirtualService) {
        let Some(key) = key_of(vs) else {
            return;
        };
        let routes = Routes::of(vs);
        if self.virtual_services.get(&key) == Some(&routes) {
            return;
        }
        self.virtual_services.insert(key, routes);
        self.routes_stale = true;
    }

    /// A VirtualService was deleted.
    pub fn delete_virtual_service(&mut self, namespace: &str, name: &str) {
        let key = Key {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        if self.virtual_services.remove(&key).is_some() {
            self.routes_stale = true;
        }
    }
}

fn unlink_hpa(ns: &mut Ns, target: &str, hpa: &str) {
    if let Some(mins) = ns.hpa_mins.get_mut(target) {
        mins.retain(|(h, _)| h != hpa);
        if mins.is_empty() {
            ns.hpa_mins.remove(target);
        }
    }
}

fn unlink_slice(ns: &mut Ns, service: &str, slice: &str) {
    if let Some(set) = ns.slices_of.get_mut(service) {
        set.remove(slice);
        if set.is_empty() {
            ns.slices_of.remove(service);
        }
    }
}

/// An annotated Deployment as kept; `None` when it is not annotated
/// `kzscaler.io/scale-to-zero` (not kept at all).
fn strip_deployment(d: &Deployment, key: &Key) -> Option<Dep> {
    let annotations = d.metadata.annotations.as_ref()?;
    if !annotations.contains_key(names::SCALE_TO_ZERO) {
        return None;
    }
    let reference = d.object_ref(&());
    let spec_d = d.spec.as_ref();
    let labels = labels(
        spec_d
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.as_ref()),
    );
    let spec = match ManagedSpec::from_annotations(annotations) {
        Ok(Some(s)) => s,
        Ok(None) => return None,
        Err(e) => {
            return Some(Dep {
                labels,
                managed: Err((
                    Problem {
                        kind: "Deployment",
                        key: key.clone(),
                        reason: "InvalidAnnotation",
                        message: format!("{e}; kzscaler ignores this Deployment until it is fixed"),
                    },
                    reference,
                )),
                warning: None,
            });
        }
    };
    let (replicas_before_sleep, warning) = match replicas_before_sleep(annotations) {
        Ok(n) => (n, None),
        Err(e) => (
            None,
            Some((
                Problem {
                    kind: "Deployment",
                    key: key.clone(),
                    reason: "InvalidAnnotation",
                    message: format!("{e}; ignored"),
                },
                reference.clone(),
            )),
        ),
    };
    Some(Dep {
        labels,
        managed: Ok(Managed {
            spec,
            desired: spec_d.and_then(|s| s.replicas).unwrap_or(1),
            ready_replicas: d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0),
            replicas_before_sleep,
            recorded_state: annotations.get(names::STATE).cloned(),
            action: annotations.get(names::ACTION).cloned(),
            hpa_min: None,
            ready_pods: BTreeSet::new(),
            resource_version: d.metadata.resource_version.clone().unwrap_or_default(),
            uid: d.metadata.uid.clone().unwrap_or_default(),
        }),
        warning,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    /// A small deterministic generator: the same sequence on every run.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    const NAMESPACES: [&str; 2] = ["a", "b"];

    fn deployment(rng: &mut Rng, ns: &str, name: &str) -> Deployment {
        let annotations = match rng.below(4) {
            0 => json!({}),
            1 => json!({"kzscaler.io/scale-to-zero": "true", "kzscaler.io/idle-timeout": "soon"}),
            2 => {
                json!({"kzscaler.io/scale-to-zero": "true", "kzscaler.io/replicas-before-sleep": "x"})
            }
            _ => {
                json!({"kzscaler.io/scale-to-zero": "true", "kzscaler.io/wake-timeout": format!("{}s", 1 + rng.below(3))})
            }
        };
        let tier = ["web", "db"][rng.below(2) as usize];
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "annotations": annotations},
            "spec": {"replicas": rng.below(3), "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name, "tier": tier}}}},
        }))
        .unwrap()
    }

    fn service(rng: &mut Rng, ns: &str, name: &str) -> Service {
        let selector = match rng.below(4) {
            0 => json!({"app": format!("d{}", rng.below(3))}),
            1 => json!({"tier": "web"}),
            2 => json!({}),
            _ => json!({"app": format!("d{}", rng.below(3)), "tier": "db"}),
        };
        let ports: Vec<_> = (0..rng.below(3))
            .map(|i| json!({"port": 80 + i, "protocol": if rng.below(5) == 0 { "UDP" } else { "TCP" }}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"selector": selector, "ports": ports}
        }))
        .unwrap()
    }

    fn slice(rng: &mut Rng, ns: &str, name: &str) -> EndpointSlice {
        let eps: Vec<_> = (0..rng.below(3))
            .map(|i| json!({"addresses": [format!("10.0.0.{}", rng.below(4))],
                            "targetRef": {"kind": "Pod", "name": format!("p{i}"), "uid": format!("u{}", rng.below(4))},
                            "conditions": {"ready": rng.below(3) != 0}}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name,
                         "labels": {"kubernetes.io/service-name": format!("s{}", rng.below(4))}},
            "addressType": "IPv4", "endpoints": eps
        }))
        .unwrap()
    }

    fn hpa(rng: &mut Rng, ns: &str, name: &str) -> HorizontalPodAutoscaler {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": format!("d{}", rng.below(3)), "apiVersion": "apps/v1"},
                     "minReplicas": 1 + rng.below(4), "maxReplicas": 10}
        }))
        .unwrap()
    }

    fn virtual_service(rng: &mut Rng, ns: &str, name: &str) -> VirtualService {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"http": [{"timeout": format!("{}s", 1 + rng.below(5)),
                               "route": [{"destination": {"host": format!("s{}", rng.below(4))}}]}]}
        }))
        .unwrap()
    }

    fn arcs<T: Clone>(m: &BTreeMap<(String, String), T>) -> Vec<Arc<T>> {
        m.values().cloned().map(Arc::new).collect()
    }

    type Derived = (
        BTreeMap<Key, Managed>,
        BTreeMap<String, (Key, Destination)>,
        Vec<(Problem, ObjectReference)>,
        Vec<RouteTimeouts>,
    );

    /// What the index derives, in a comparable form.
    fn derived(index: &mut Index) -> Derived {
        (
            index.managed().clone(),
            index.destinations().clone(),
            index.problems().cloned().collect(),
            index.route_timeouts().to_vec(),
        )
    }

    #[test]
    fn applying_objects_one_at_a_time_derives_what_indexing_them_all_at_once_does() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut index = Index::default();
        let mut deps: BTreeMap<(String, String), Deployment> = BTreeMap::new();
        let mut svcs: BTreeMap<(String, String), Service> = BTreeMap::new();
        let mut slices: BTreeMap<(String, String), EndpointSlice> = BTreeMap::new();
        let mut hpas: BTreeMap<(String, String), HorizontalPodAutoscaler> = BTreeMap::new();
        let mut vss: BTreeMap<(String, String), VirtualService> = BTreeMap::new();
        let mut destinations_seen = 0;
        for step in 0..3_000 {
            let ns = NAMESPACES[rng.below(2) as usize];
            let delete = rng.below(4) == 0;
            match rng.below(5) {
                0 => {
                    let name = format!("d{}", rng.below(3));
                    let k = (ns.to_owned(), name.clone());
                    if delete {
                        deps.remove(&k);
                        index.delete_deployment(ns, &name);
                    } else {
                        let d = deployment(&mut rng, ns, &name);
                        index.apply_deployment(&d);
                        deps.insert(k, d);
                    }
                }
                1 => {
                    let name = format!("s{}", rng.below(4));
                    let k = (ns.to_owned(), name.clone());
                    if delete {
                        svcs.remove(&k);
                        index.delete_service(ns, &name);
                    } else {
                        let s = service(&mut rng, ns, &name);
                        index.apply_service(&s);
                        svcs.insert(k, s);
                    }
                }
                2 => {
                    let name = format!("e{}", rng.below(5));
                    let k = (ns.to_owned(), name.clone());
                    if delete {
                        slices.remove(&k);
                        index.delete_slice(ns, &name);
                    } else {
                        let s = slice(&mut rng, ns, &name);
                        index.apply_slice(&s);
                        slices.insert(k, s);
                    }
                }
                3 => {
                    let name = format!("h{}", rng.below(2));
                    let k = (ns.to_owned(), name.clone());
                    if delete {
                        hpas.remove(&k);
                        index.delete_hpa(ns, &name);
                    } else {
                        let h = hpa(&mut rng, ns, &name);
                        index.apply_hpa(&h);
                        hpas.insert(k, h);
                    }
                }
                _ => {
                    let name = format!("v{}", rng.below(2));
                    let k = (ns.to_owned(), name.clone());
                    if delete {
                        vss.remove(&k);
                        index.delete_virtual_service(ns, &name);
                    } else {
                        let v = virtual_service(&mut rng, ns, &name);
                        index.apply_virtual_service(&v);
                        vss.insert(k, v);
                    }
                }
            }
            let mut fresh = Index::from_objects(
                &arcs(&deps),
                &arcs(&svcs),
                &arcs(&slices),
                &arcs(&hpas),
                "cluster.local",
            );
            for v in vss.values() {
                fresh.apply_virtual_service(v);
            }
            assert_eq!(
                derived(&mut index),
                derived(&mut fresh),
                "after step {step}"
            );
            // Matching, checked against a plain scan of every pair (the index looks up
            // candidates by label).
            for ((ns, svc_name), svc) in &svcs {
                let selector = svc
                    .spec
                    .as_ref()
                    .and_then(|s| s.selector.clone())
                    .unwrap_or_default();
                let selecting: Vec<&String> = deps
                    .iter()
                    .filter(|((dns, _), d)| {
                        let a = d.metadata.annotations.clone().unwrap_or_default();
                        let valid = matches!(ManagedSpec::from_annotations(&a), Ok(Some(_)));
                        let labels = d
                            .spec
                            .as_ref()
                            .and_then(|s| s.template.metadata.as_ref())
                            .and_then(|m| m.labels.clone())
                            .unwrap_or_default();
                        dns == ns
                            && valid
                            && !selector.is_empty()
                            && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
                    })
                    .map(|((_, n), _)| n)
                    .collect();
                let has_tcp = svc
                    .spec
                    .as_ref()
                    .and_then(|s| s.ports.as_ref())
                    .is_some_and(|p| p.iter().any(|p| p.protocol.as_deref() != Some("UDP")));
                let found: Vec<&String> = index
                    .destinations()
                    .values()
                    .filter(|(_, d)| &d.namespace == ns && &d.service == svc_name)
                    .map(|(k, _)| &k.name)
                    .collect();
                match selecting.as_slice() {
                    [one] if has_tcp => assert!(
                        !found.is_empty() && found.iter().all(|f| f == one),
                        "step {step}: {ns}/{svc_name} selects {one} only: {found:?}"
                    ),
                    _ => assert!(
                        found.is_empty(),
                        "step {step}: {ns}/{svc_name}: {selecting:?} vs {found:?}"
                    ),
                }
            }
            destinations_seen += index.destinations().len();
        }
        assert!(
            destinations_seen > 1_000,
            "the sequence must reach destinations: {destinations_seen}"
        );
    }

    #[test]
    fn a_status_change_touches_only_its_own_destinations() {
        let mut index = Index::default();
        let mk = |name: &str, replicas: i32| -> Deployment {
            serde_json::from_value(json!({
                "metadata": {"namespace": "shop", "name": name,
                             "annotations": {"kzscaler.io/scale-to-zero": "true"}},
                "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                         "template": {"metadata": {"labels": {"app": name}}}},
            }))
            .unwrap()
        };
        for i in 0..1_000 {
            let name = format!("web{i}");
            index.apply_deployment(&mk(&name, 0));
            index.apply_service(
                &serde_json::from_value(json!({
                    "metadata": {"namespace": "shop", "name": name},
                    "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}
                }))
                .unwrap(),
            );
        }
        assert_eq!(index.destinations().len(), 1_000);
        index.take_changed();
        index.apply_deployment(&mk("web7", 1));
        assert_eq!(
            index.take_changed().into_iter().collect::<Vec<_>>(),
            ["outbound|80||web7.shop.svc.cluster.local"]
        );
        // An unrelated object changes nothing.
        index.apply_deployment(
            &serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "plain"},
            "spec": {"template": {"metadata": {"labels": {"app": "web3"}}}}}))
            .unwrap(),
        );
        assert!(index.take_changed().is_empty());
    }

    #[test]
    fn the_keys_of_a_kind_are_what_a_relist_compares_with() {
        let mut rng = Rng(7);
        let mut index = Index::new("cluster.local", Some(HashSet::new()));
        let plain: Deployment = serde_json::from_value(json!({
            "metadata": {"namespace": "a", "name": "plain"}}))
        .unwrap();
        index.apply_deployment(&plain);
        let mut managed = deployment(&mut rng, "a", "d0");
        managed.metadata.annotations =
            Some([("kzscaler.io/scale-to-zero".to_owned(), "true".to_owned())].into());
        index.apply_deployment(&managed);
        index.apply_service(&service(&mut rng, "b", "s1"));
        index.set_in_scope("a", true);
        assert_eq!(
            index.keys(Kept::Deployments),
            [("a".to_owned(), "d0".to_owned())],
            "only what it keeps: an unannotated Deployment is not"
        );
        assert_eq!(
            index.keys(Kept::Services),
            [("b".to_owned(), "s1".to_owned())]
        );
        assert_eq!(
            index.keys(Kept::Namespaces),
            [(String::new(), "a".to_owned())]
        );
        index.delete_deployment("a", "d0");
        assert!(index.keys(Kept::Deployments).is_empty());
    }

    #[test]
    fn a_namespace_leaving_the_scope_takes_its_destinations_and_problems_along() {
        let mut index = Index::new("cluster.local", Some(HashSet::new()));
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "web",
                         "annotations": {"kzscaler.io/scale-to-zero": "true"}},
            "spec": {"template": {"metadata": {"labels": {"app": "web"}}}},
        }))
        .unwrap();
        let bad: Deployment = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "bad",
                         "annotations": {"kzscaler.io/scale-to-zero": "maybe"}},
        }))
        .unwrap();
        let s: Service = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
        }))
        .unwrap();
        index.apply_deployment(&d);
        index.apply_deployment(&bad);
        index.apply_service(&s);
        assert!(index.destinations().is_empty() && index.problems().next().is_none());
        index.set_in_scope("shop", true);
        assert_eq!(index.destinations().len(), 1);
        assert_eq!(index.managed().len(), 1);
        assert_eq!(index.problems().count(), 1);
        index.set_in_scope("shop", false);
        assert!(index.destinations().is_empty() && index.managed().is_empty());
        assert!(index.problems().next().is_none());
    }
}
