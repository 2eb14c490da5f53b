//! The replica cache: every managed destination (Service port → managed Deployment), its state
//! and its counts, derived from the API objects by a pure function.
//!
//! ```text
//!  reflector stores ──(any change)──▶ Built::from_objects ──▶ Cache::update
//!   Deployments, Services,              (pure)                  version++ when the
//!   EndpointSlices, HPAs                                         snapshot changed
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use kzscaler_core::cluster::outbound_cluster;
use kzscaler_core::names::{self, SERVICE_NAME_LABEL};
use kzscaler_core::spec::replicas_before_sleep;
use kzscaler_core::wire::{Destination, Snapshot, State};

use kzscaler_core::spec::ManagedSpec;

pub use kzscaler_core::names::REPLICAS_BEFORE_SLEEP;

/// A namespaced name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A managed Deployment as the cache sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Managed {
    /// Its settings.
    pub spec: ManagedSpec,
    /// `spec.replicas`.
    pub desired: i32,
    /// `status.readyReplicas`.
    pub ready_replicas: i32,
    /// From [`REPLICAS_BEFORE_SLEEP`].
    pub replicas_before_sleep: Option<u32>,
    /// [`kzscaler_core::names::STATE`] as last written (by the leader).
    pub recorded_state: Option<String>,
    /// [`kzscaler_core::names::LAST_REQUEST`] as last written, in ms since the epoch.
    pub recorded_last_request: Option<u64>,
    /// [`kzscaler_core::names::ACTION`]: what `kubectl kzscaler` asked for.
    pub action: Option<String>,
    /// The minReplicas of an HPA targeting it.
    pub hpa_min: Option<u32>,
    /// The pods of the ready endpoints over all its Services (see [`endpoint_identity`]).
    pub ready_pods: BTreeSet<String>,
    /// `metadata.resourceVersion` as last seen: a sleep is written only if it is unchanged.
    pub resource_version: String,
    /// `metadata.uid`: a Deployment deleted and created again under its name is another one.
    pub uid: String,
    /// For Events.
    pub reference: ObjectReference,
}

impl Managed {
    /// The replica count a wake scales to.
    pub fn wake_replicas(&self) -> u32 {
        kzscaler_core::spec::wake_replicas(
            self.hpa_min,
            self.replicas_before_sleep,
            self.spec.wake_replicas,
        )
    }

    /// The Deployment's state, over the ready endpoints of all its Services (the sleeper's
    /// view; each destination's own state counts its own Service's, see [`state_of`]).
    pub fn state(&self) -> State {
        state_of(self.desired, self.ready_pods.len())
    }
}

/// State from the counts alone: 0 replicas is asleep however it got there; replicas but no
/// ready endpoint is waking.
pub fn state_of(desired: i32, ready_endpoints: usize) -> State {
    if desired == 0 {
        State::Asleep
    } else if ready_endpoints == 0 {
        State::Waking
    } else {
        State::Awake
    }
}

/// Something wrong with an object: skipped, reported as a warning Event.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// `Deployment` or `Service`.
    pub kind: &'static str,
    /// The object.
    pub key: Key,
    /// Short PascalCase reason.
    pub reason: &'static str,
    /// What is wrong, with the values.
    pub message: String,
}

/// Everything derived from one set of objects.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Built {
    /// Managed Deployments.
    pub managed: BTreeMap<Key, Managed>,
    /// Destinations by outbound cluster name, sorted.
    pub destinations: BTreeMap<String, (Key, Destination)>,
    /// Problems found, with the object reference to report them on.
    pub problems: Vec<(Problem, ObjectReference)>,
    /// Per Service of a destination: the pods of its ready endpoints. A destination is ready
    /// when its own Service is, not when some other Service of its Deployment is.
    pub service_ready: BTreeMap<Key, BTreeSet<String>>,
    /// Route timeouts of the VirtualServices routing to destinations (see
    /// [`Built::with_virtual_services`]).
    pub route_timeouts: Vec<kzscaler_core::wire::RouteTimeouts>,
}

/// Which pod an endpoint is: its targetRef's uid (a pod recreated under the same name is
/// another), else its name, else its first address.
pub fn endpoint_identity(e: &k8s_openapi::api::discovery::v1::Endpoint) -> Option<String> {
    let t = e.target_ref.as_ref();
    t.and_then(|t| t.uid.clone())
        .or_else(|| t.and_then(|t| t.name.clone()))
        .or_else(|| e.addresses.first().cloned())
}

fn key_of<K: Resource>(obj: &K) -> Option<Key> {
    Some(Key {
        namespace: obj.meta().namespace.clone()?,
        name: obj.meta().name.clone()?,
    })
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Built {
    /// Adds the route timeouts of the VirtualServices that route to these destinations.
    pub fn with_virtual_services(
        mut self,
        virtual_services: &[Arc<crate::virtualservice::VirtualService>],
    ) -> Self {
        let services: BTreeSet<(String, String)> = self
            .destinations
            .values()
            .map(|(_, d)| (d.namespace.clone(), d.service.clone()))
            .collect();
        self.route_timeouts = crate::virtualservice::route_timeouts(virtual_services, &services);
        self
    }

    /// Derives the managed destinations. Only Deployments annotated
    /// `kzscaler.io/scale-to-zero` are looked at closely; bad annotations and Services
    /// selecting several managed Deployments become problems, never errors.
    pub fn from_objects(
        deployments: &[Arc<Deployment>],
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        hpas: &[Arc<HorizontalPodAutoscaler>],
        domain: &str,
    ) -> Self {
        let mut built = Built::default();
        let mut pod_labels: BTreeMap<Key, BTreeMap<String, String>> = BTreeMap::new();
        for d in deployments {
            let Some(key) = key_of(d.as_ref()) else {
                continue;
            };
            let annotations = d.metadata.annotations.clone().unwrap_or_default();
            if !annotations.contains_key(names::SCALE_TO_ZERO) {
                continue;
            }
            let reference = d.object_ref(&());
            let spec = match ManagedSpec::from_annotations(&annotations) {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    built.problems.push((
                        Problem {
                            kind: "Deployment",
                            key,
                            reason: "InvalidAnnotation",
                            message: format!(
                                "{e}; kzscaler ignores this Deployment until it is fixed"
                            ),
                        },
                        reference,
                    ));
                    continue;
                }
            };
            let replicas_before_sleep = match replicas_before_sleep(&annotations) {
                Ok(n) => n,
                Err(e) => {
                    built.problems.push((
                        Problem {
                            kind: "Deployment",
                            key: key.clone(),
                            reason: "InvalidAnnotation",
                            message: format!("{e}; ignored"),
                        },
                        reference.clone(),
                    ));
                    None
                }
            };
            let spec_d = d.spec.as_ref();
            pod_labels.insert(
                key.clone(),
                spec_d
                    .and_then(|s| s.template.metadata.as_ref())
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default(),
            );
            built.managed.insert(
                key,
                Managed {
                    spec,
                    desired: spec_d.and_then(|s| s.replicas).unwrap_or(1),
                    ready_replicas: d
                        .status
                        .as_ref()
                        .and_then(|s| s.ready_replicas)
                        .unwrap_or(0),
                    replicas_before_sleep,
                    recorded_state: annotations.get(kzscaler_core::names::STATE).cloned(),
                    recorded_last_request: annotations
                        .get(kzscaler_core::names::LAST_REQUEST)
                        .and_then(|v| v.parse::<k8s_openapi::jiff::Timestamp>().ok())
                        .and_then(|t| u64::try_from(t.as_millisecond()).ok()),
                    action: annotations.get(kzscaler_core::names::ACTION).cloned(),
                    hpa_min: None,
                    ready_pods: BTreeSet::new(),
                    resource_version: d.metadata.resource_version.clone().unwrap_or_default(),
                    uid: d.metadata.uid.clone().unwrap_or_default(),
                    reference,
                },
            );
        }
        for h in hpas {
            let Some(ns) = h.metadata.namespace.as_ref() else {
                continue;
            };
            let spec = &h.spec;
            if spec.scale_target_ref.kind != "Deployment" {
                continue;
            }
            let key = Key {
                namespace: ns.clone(),
                name: spec.scale_target_ref.name.clone(),
            };
            if let Some(m) = built.managed.get_mut(&key) {
                m.hpa_min = spec
                    .min_replicas
                    .and_then(|n| u32::try_from(n).ok())
                    .or(Some(1));
            }
        }
        // Ready endpoints per Service, as the pods behind them.
        let mut ready: BTreeMap<Key, BTreeSet<String>> = BTreeMap::new();
        for s in slices {
            let (Some(ns), Some(svc)) = (
                s.metadata.namespace.as_ref(),
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL)),
            ) else {
                continue;
            };
            let pods = ready
                .entry(Key {
                    namespace: ns.clone(),
                    name: svc.clone(),
                })
                .or_default();
            pods.extend(
                s.endpoints
                    .iter()
                    .flatten()
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
                    .filter_map(endpoint_identity),
            );
        }
        for svc in services {
            let Some(skey) = key_of(svc.as_ref()) else {
                continue;
            };
            let Some(spec) = svc.spec.as_ref() else {
                continue;
            };
            let Some(selector) = spec.selector.as_ref() else {
                continue;
            };
            let matched: Vec<&Key> = pod_labels
                .iter()
                .filter(|(k, labels)| k.namespace == skey.namespace && selects(selector, labels))
                .map(|(k, _)| k)
                .collect();
            let dkey = match matched.as_slice() {
                [] => continue,
                [one] => (*one).clone(),
                many => {
                    let names: Vec<&str> = many.iter().map(|k| k.name.as_str()).collect();
                    built.problems.push((
                        Problem {
                            kind: "Service",
                            key: skey.clone(),
                            reason: "AmbiguousService",
                            message: format!(
                                "Service {} selects {} managed Deployments ({}); kzscaler ignores this Service",
                                skey.name,
                                many.len(),
                                names.join(", ")
                            ),
                        },
                        svc.object_ref(&()),
                    ));
                    continue;
                }
            };
            let Some(m) = built.managed.get_mut(&dkey) else {
                continue;
            };
            let pods = ready.get(&skey).cloned().unwrap_or_default();
            m.ready_pods.extend(pods.iter().cloned());
            built.service_ready.insert(skey.clone(), pods);
            for port in spec.ports.iter().flatten() {
                if port.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                    continue;
                }
                let Ok(p) = u16::try_from(port.port) else {
                    continue;
                };
                let cluster = outbound_cluster(&skey.name, &skey.namespace, domain, p);
                built.destinations.insert(
                    cluster.clone(),
                    (
                        dkey.clone(),
                        Destination {
                            cluster,
                            namespace: skey.namespace.clone(),
                            service: skey.name.clone(),
                            deployment: dkey.name.clone(),
                            state: State::Awake, // set below, once endpoints are summed
                            wake_timeout_ms: 0,
                            ignore_paths: Vec::new(),
                        },
                    ),
                );
            }
        }
        for (dkey, dest) in built.destinations.values_mut() {
            if let Some(m) = built.managed.get(dkey) {
                let own = Key {
                    namespace: dest.namespace.clone(),
                    name: dest.service.clone(),
                };
                let ready = built.service_ready.get(&own).map_or(0, BTreeSet::len);
                dest.state = state_of(m.desired, ready);
                dest.wake_timeout_ms = duration_ms(m.spec.wake_timeout);
                dest.ignore_paths = m.spec.ignore_paths.clone();
            }
        }
        built.problems.sort_by(|a, b| a.0.cmp(&b.0));
        built
    }
}

/// A snapshot as served, and its ETag. Encoding plain data into a Vec cannot fail; an empty
/// body would be refused by filters as not a snapshot, never misread.
fn encode(snapshot: &Snapshot) -> (bytes::Bytes, String) {
    let bytes = serde_json::to_vec(snapshot).unwrap_or_default();
    let etag = kzscaler_core::wire::snapshot_etag(snapshot.version, &bytes);
    (bytes::Bytes::from(bytes), etag)
}

/// The first version of a term (or of a process) begun at `wall_ms`: room for a thousand
/// changes per millisecond of the term below the next term's first version.
pub fn version_base(wall_ms: u64) -> u64 {
    wall_ms.saturating_mul(1_000)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The cache: the latest [`Built`] and a snapshot version that changes only when the
/// destinations do.
#[derive(Debug, Default)]
pub struct Cache {
    built: Built,
    snapshot: Snapshot,
    /// The snapshot as served, encoded once per change, and its ETag.
    encoded: bytes::Bytes,
    etag: String,
    draining: BTreeSet<Key>,
    /// Deployments whose scale to 0 is committed, until the cache shows 0 replicas (or
    /// [`CLOSING_MAX`] passed: someone scaled it back up before the watch saw the 0).
    closing: BTreeMap<Key, std::time::Instant>,
}

/// The longest a committed sleep is waited for.
const CLOSING_MAX: Duration = Duration::from_secs(10);

impl Cache {
    /// A cache whose first snapshot version is `version + 1`. Start it from the clock, so a
    /// restarted controller never reuses a version a filter still holds (it would answer 304
    /// to `If-None-Match` with different content).
    pub fn starting_at(version: u64) -> Self {
        Self {
            built: Built::default(),
            snapshot: Snapshot {
                version,
                ..Snapshot::default()
            },
            encoded: bytes::Bytes::new(),
            etag: String::new(),
            draining: BTreeSet::new(),
            closing: BTreeMap::new(),
        }
    }

    /// This replica became leader at `base` (its wall clock in ms × 1000, see
    /// [`version_base`]): its versions continue above every version an earlier leader can
    /// have given (that leader started its term earlier, and changed less than a thousand
    /// times per ms since), so filters, which only ever move forward, take its snapshots.
    pub fn new_term(&mut self, base: u64) {
        if base > self.snapshot.version {
            self.snapshot.version = base;
            self.encode();
        }
    }

    /// Replaces the content; returns whether the snapshot changed.
    pub fn update(&mut self, built: Built) -> bool {
        self.built = built;
        let managed = &self.built.managed;
        self.closing.retain(|k, at| {
            managed.get(k).is_some_and(|m| m.desired > 0) && at.elapsed() < CLOSING_MAX
        });
        // A Deployment no longer managed (deleted, annotation removed) keeps no mark.
        self.draining.retain(|k| managed.contains_key(k));
        self.publish()
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
            self.draining.insert(key.clone())
        } else {
            self.draining.remove(key)
        };
        changed && self.publish()
    }

    /// Whether a Deployment is marked draining.
    pub fn is_draining(&self, key: &Key) -> bool {
        self.draining.contains(key)
    }

    fn publish(&mut self) -> bool {
        let draining = &self.draining;
        let destinations: Vec<Destination> = self
            .built
            .destinations
            .values()
            .map(|(k, d)| {
                let mut d = d.clone();
                if d.state == State::Awake && draining.contains(k) {
                    d.state = State::Draining;
                }
                d
            })
            .collect();
        let changed = destinations != self.snapshot.destinations
            || self.built.route_timeouts != self.snapshot.virtual_services;
        if changed {
            self.snapshot = Snapshot {
                version: self.snapshot.version + 1,
                destinations,
                virtual_services: self.built.route_timeouts.clone(),
            };
            self.encode();
        }
        changed
    }

    /// The snapshot filters poll.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The snapshot as served (encoded once per change) and its ETag (see
    /// [`kzscaler_core::wire::snapshot_etag`]).
    pub fn encoded(&self) -> (bytes::Bytes, String) {
        if self.etag.is_empty() {
            // Never published (a cache built without a first update): encode it now.
            return encode(&self.snapshot);
        }
        (self.encoded.clone(), self.etag.clone())
    }

    fn encode(&mut self) {
        (self.encoded, self.etag) = encode(&self.snapshot);
    }

    /// The destination behind an outbound cluster name, with its Deployment.
    pub fn destination(&self, cluster: &str) -> Option<(&Key, &Destination, &Managed)> {
        let (key, dest) = self.built.destinations.get(cluster)?;
        let managed = self.built.managed.get(key)?;
        Some((key, dest, managed))
    }

    /// The pods of the ready endpoints of the Service behind `cluster` (none when it is not
    /// a destination).
    pub fn ready_pods(&self, cluster: &str) -> Option<&BTreeSet<String>> {
        let (_, dest) = self.built.destinations.get(cluster)?;
        self.built.service_ready.get(&Key {
            namespace: dest.namespace.clone(),
            name: dest.service.clone(),
        })
    }

    /// A managed Deployment.
    pub fn managed(&self, key: &Key) -> Option<&Managed> {
        self.built.managed.get(key)
    }

    /// All managed Deployments.
    pub fn all_managed(&self) -> &BTreeMap<Key, Managed> {
        &self.built.managed
    }

    /// Current problems.
    pub fn problems(&self) -> &[(Problem, ObjectReference)] {
        &self.built.problems
    }

    /// Problems not in `reported`; adds them to it and forgets fixed ones.
    pub fn new_problems(
        &self,
        reported: &mut BTreeSet<Problem>,
    ) -> Vec<(Problem, ObjectReference)> {
        let now: BTreeSet<Problem> = self.built.problems.iter().map(|(p, _)| p.clone()).collect();
        let fresh = self
            .built
            .problems
            .iter()
            .filter(|(p, _)| !reported.contains(p))
            .cloned()
            .collect();
        *reported = now;
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        let built = Built::from_objects(
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
        let clusters: Vec<&String> = built.destinations.keys().collect();
        assert_eq!(
            clusters,
            vec![
                "outbound|8080||web.shop.svc.cluster.local",
                "outbound|80||web.shop.svc.cluster.local",
                "outbound|9000||web-admin.shop.svc.cluster.local",
            ]
        );
        let (_, d) = &built.destinations["outbound|80||web.shop.svc.cluster.local"];
        assert_eq!(
            (d.state, d.wake_timeout_ms, d.deployment.as_str()),
            (State::Asleep, 30_000, "web")
        );
        assert!(built.problems.is_empty());
    }

    #[test]
    fn unmanaged_deployments_are_not_destinations() {
        let built = Built::from_objects(
            &[deployment("shop", "web", 1, json!({}))],
            &[service("shop", "web", json!({"app": "web"}), &[80])],
            &[],
            &[],
            "cluster.local",
        );
        assert!(built.destinations.is_empty() && built.managed.is_empty());
    }

    #[test]
    fn state_follows_replicas_and_ready_endpoints() {
        let svc = [service("shop", "web", json!({"app": "web"}), &[80])];
        let state = |replicas, ready: &[bool]| {
            let b = Built::from_objects(
                &[deployment("shop", "web", replicas, managed())],
                &svc,
                &[slice("shop", "web", ready)],
                &[],
                "cluster.local",
            );
            b.destinations.values().next().map(|(_, d)| d.state)
        };
        assert_eq!(state(0, &[]), Some(State::Asleep));
        assert_eq!(state(1, &[false]), Some(State::Waking));
        assert_eq!(state(1, &[false, true]), Some(State::Awake));
    }

    #[test]
    fn a_draining_mark_goes_with_its_deployment() {
        let svc = [service("shop", "web", json!({"app": "web"}), &[80])];
        let b = || {
            Built::from_objects(
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
        cache.update(b());
        cache.set_draining(&key, true);
        cache.update(Built::default()); // deleted
        assert!(!cache.is_draining(&key));
        cache.update(b()); // created again: not draining
        assert_eq!(cache.snapshot().destinations[0].state, State::Awake);
    }

    #[test]
    fn each_service_is_ready_on_its_own_endpoints_not_its_deployments() {
        // One Deployment behind two Services: "web" has a ready endpoint, "web-admin" (its
        // port not ready yet) has none. Only web's destination is awake.
        let built = Built::from_objects(
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
        let state = |c: &str| built.destinations[c].1.state;
        assert_eq!(
            state("outbound|80||web.shop.svc.cluster.local"),
            State::Awake
        );
        assert_eq!(
            state("outbound|9000||web-admin.shop.svc.cluster.local"),
            State::Waking
        );
        let mut cache = Cache::default();
        cache.update(built);
        assert_eq!(
            cache
                .ready_pods("outbound|9000||web-admin.shop.svc.cluster.local")
                .map(BTreeSet::len),
            Some(0)
        );
    }

    #[test]
    fn service_matching_two_managed_deployments_is_a_problem_and_ignored() {
        let built = Built::from_objects(
            &[
                deployment("shop", "a", 1, managed()),
                deployment("shop", "b", 1, managed()),
            ],
            &[service("shop", "both", json!({"tier": "web"}), &[80])],
            &[],
            &[],
            "cluster.local",
        );
        assert!(built.destinations.is_empty());
        let (p, _) = &built.problems[0];
        assert_eq!((p.kind, p.reason), ("Service", "AmbiguousService"));
        assert!(p.message.contains("a, b"), "{}", p.message);
    }

    #[test]
    fn bad_annotation_is_a_problem_not_a_destination() {
        let built = Built::from_objects(
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
        assert!(built.destinations.is_empty());
        let (p, _) = &built.problems[0];
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
        let built = Built::from_objects(
            &[deployment("shop", "web", 0, ann.clone())],
            &[],
            &[],
            &[],
            "cluster.local",
        );
        assert_eq!(built.managed.values().next().unwrap().wake_replicas(), 3);
        let built = Built::from_objects(
            &[deployment("shop", "web", 0, ann)],
            &[],
            &[],
            &[Arc::new(hpa)],
            "cluster.local",
        );
        assert_eq!(built.managed.values().next().unwrap().wake_replicas(), 5);
    }

    #[test]
    fn version_changes_only_when_destinations_do() {
        let objects = |replicas| {
            Built::from_objects(
                &[deployment("shop", "web", replicas, managed())],
                &[service("shop", "web", json!({"app": "web"}), &[80])],
                &[slice("shop", "web", &[true])],
                &[],
                "cluster.local",
            )
        };
        let mut cache = Cache::default();
        assert!(cache.update(objects(1)));
        let v = cache.snapshot().version;
        assert!(!cache.update(objects(1)));
        assert_eq!(cache.snapshot().version, v);
        assert!(cache.update(objects(0)));
        assert_eq!(cache.snapshot().version, v + 1);
    }

    #[test]
    fn a_restarted_cache_does_not_reuse_versions() {
        let mut before = Cache::starting_at(1_000);
        before.update(Built::default());
        let mut after = Cache::starting_at(2_000);
        after.update(Built::default());
        assert!(after.snapshot().version > before.snapshot().version);
    }

    #[test]
    fn the_served_bytes_and_etag_follow_every_change_and_term() {
        let mut cache = Cache::starting_at(100);
        cache.update(Built::default());
        let (bytes, etag) = cache.encoded();
        let served: Snapshot = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(&served, cache.snapshot());
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
            let mut b = Built::default();
            b.problems.push((
                Problem {
                    kind: "Service",
                    key: Key {
                        namespace: "n".into(),
                        name: i.to_string(),
                    },
                    reason: "R",
                    message: String::new(),
                },
                ObjectReference::default(),
            ));
            old.update(b);
            old.set_draining(
                &Key {
                    namespace: "n".into(),
                    name: "x".into(),
                },
                i % 2 == 0,
            );
        }
        let mut new = Cache::starting_at(start);
        new.new_term(version_base(1_700_000_002_000));
        new.update(Built::default());
        assert!(new.snapshot().version > old.snapshot().version);
        let v = new.snapshot().version;
        new.new_term(version_base(1_600_000_000_000));
        assert_eq!(new.snapshot().version, v, "never backwards");
    }
}
