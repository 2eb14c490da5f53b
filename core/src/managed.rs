//! What the index derives for each managed Deployment, and the names it is kept under:
//! shared by the controller (which acts on it) and `kubectl kzscaler` (which shows it), so the
//! two never disagree.

use std::collections::BTreeSet;

use crate::spec::ManagedSpec;
use crate::wire::State;

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
    /// From [`crate::names::REPLICAS_BEFORE_SLEEP`].
    pub replicas_before_sleep: Option<u32>,
    /// [`crate::names::STATE`] as last written (by the leader).
    pub recorded_state: Option<String>,
    /// [`crate::names::ACTION`]: what `kubectl kzscaler` asked for.
    pub action: Option<String>,
    /// The minReplicas of an HPA targeting it.
    pub hpa_min: Option<u32>,
    /// The pods of the ready endpoints over all its Services (see [`endpoint_identity`]).
    pub ready_pods: BTreeSet<String>,
    /// `metadata.resourceVersion` as last seen: a sleep is written only if it is unchanged.
    pub resource_version: String,
    /// `metadata.uid`: a Deployment deleted and created again under its name is another one.
    pub uid: String,
}

impl Managed {
    /// The replica count a wake scales to.
    pub fn wake_replicas(&self) -> u32 {
        crate::spec::wake_replicas(
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

/// Which pod an endpoint is: its targetRef's uid (a pod recreated under the same name is
/// another), else its name, else its first address.
pub fn endpoint_identity(e: &k8s_openapi::api::discovery::v1::Endpoint) -> Option<String> {
    let t = e.target_ref.as_ref();
    t.and_then(|t| t.uid.clone())
        .or_else(|| t.and_then(|t| t.name.clone()))
        .or_else(|| e.addresses.first().cloned())
}
