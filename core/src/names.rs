//! User-facing label and annotation names. They are part of kzscaler's interface: keep them stable.

/// Namespace label that opts a namespace in.
pub const INJECTION_LABEL: &str = "kzscaler.io/injection";
/// The value of [`INJECTION_LABEL`] that opts a namespace in.
pub const INJECTION_ENABLED: &str = "enabled";
/// Pod (or pod-template) label that opts one workload out, with the value `"false"`.
pub const INJECT_LABEL: &str = "kzscaler.io/inject";
/// Label the webhook puts on injected pods; the namespace's WasmPlugin selects it.
pub const FILTER_LABEL: &str = "kzscaler.io/filter";
/// Annotation the webhook puts on injected pods: `<namespace>/<wasmplugin name>`.
pub const WASMPLUGIN_ANNOTATION: &str = "kzscaler.io/wasmplugin";

/// Deployment annotation: `"true"` lets the Deployment sleep and be woken.
pub const SCALE_TO_ZERO: &str = "kzscaler.io/scale-to-zero";
/// Deployment annotation: idle time before sleeping (Go-style duration).
pub const IDLE_TIMEOUT: &str = "kzscaler.io/idle-timeout";
/// Deployment annotation: longest a request is held while waking (Go-style duration).
pub const WAKE_TIMEOUT: &str = "kzscaler.io/wake-timeout";
/// Deployment annotation: replicas on wake.
pub const WAKE_REPLICAS: &str = "kzscaler.io/wake-replicas";
/// Deployment annotation: comma list of path prefixes that never count as activity.
pub const IGNORE_PATHS: &str = "kzscaler.io/ignore-paths";
/// Deployment annotation: `"true"` pins the Deployment awake.
pub const PAUSED: &str = "kzscaler.io/paused";

/// Set by `kubectl kzscaler wake|sleep`: `wake` or `sleep`; the controller acts on it and
/// removes it.
pub const ACTION: &str = "kzscaler.io/action";
/// Written by the controller when it puts the Deployment to sleep: when it last saw a request
/// (RFC 3339). Never rewritten while requests flow (no API write follows traffic).
pub const LAST_REQUEST: &str = "kzscaler.io/last-request";

/// Written by the controller: `awake`, `draining` or `asleep`, the last transition it made.
pub const STATE: &str = "kzscaler.io/state";
/// Written by the controller before sleeping: the replica count to wake back to.
pub const REPLICAS_BEFORE_SLEEP: &str = "kzscaler.io/replicas-before-sleep";
/// Written by the controller: when it put the Deployment to sleep (RFC 3339).
pub const SLEPT_AT: &str = "kzscaler.io/slept-at";
/// Written by the controller: the last wake's phases, JSON
/// `{"replicas","scale_ms","pod_ready_ms","endpoint_ready_ms"}`.
pub const LAST_WAKE: &str = "kzscaler.io/last-wake";

/// The prefix of every kzscaler label and annotation.
pub const PREFIX: &str = "kzscaler.io/";

/// Every `kzscaler.io/*` annotation a Deployment may carry: the user's settings, then what
/// `kubectl kzscaler` and the controller write. Any other key in the prefix is a typo.
pub const DEPLOYMENT_ANNOTATIONS: &[&str] = &[
    SCALE_TO_ZERO,
    IDLE_TIMEOUT,
    WAKE_TIMEOUT,
    WAKE_REPLICAS,
    IGNORE_PATHS,
    PAUSED,
    ACTION,
    LAST_REQUEST,
    STATE,
    REPLICAS_BEFORE_SLEEP,
    SLEPT_AT,
    LAST_WAKE,
];

/// Default for [`IDLE_TIMEOUT`], in seconds.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 600;
/// Default for [`WAKE_TIMEOUT`], in seconds.
pub const DEFAULT_WAKE_TIMEOUT_SECS: u64 = 60;

/// The namespace kzscaler itself runs in; never selected by the webhook.
pub const SYSTEM_NAMESPACE: &str = "kzscaler-system";
/// The controller's Lease (in [`SYSTEM_NAMESPACE`]) for leader election.
pub const LEASE_NAME: &str = "kzscaler-controller";
/// Label the leading controller puts on its own pod; the controller's Service selects it, so
/// filters only ever talk to the leader.
pub const LEADER_LABEL: &str = "kzscaler.io/leader";
/// Label the endpointslice controller puts on a Service's EndpointSlices.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
