//! The vocabulary shared by every kzscaler component.
//!
//! ```text
//!   filter (wasm) ──snapshot/activate/activity (wire)──▶ controller
//!        │                                                  │
//!        └── reads cluster names (cluster)      reads annotations (names, spec, duration)
//!   webhook ── writes labels and annotations (names), checks annotations (spec)
//! ```
//!
//! It depends on nothing heavier than `serde`, so the Wasm filter can use it. The feature
//! `index` adds the index of managed destinations (`index`, `managed`, `virtualservice`, over
//! `k8s-openapi` types), where Service↔Deployment matching and a Deployment's state are
//! decided once for the controller and `kubectl kzscaler` alike.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod duration;
#[cfg(feature = "index")]
pub mod index;
#[cfg(feature = "index")]
pub mod managed;
pub mod names;
pub mod spec;
#[cfg(feature = "index")]
pub mod virtualservice;
pub mod wire;

/// What `--version` prints for every kzscaler binary: the workspace version and the git commit
/// it was built from (`KZSCALER_GIT_COMMIT` when built outside a checkout).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("KZSCALER_GIT_COMMIT"),
    ")"
);

pub use cluster::{ClusterName, ClusterNameError};
pub use duration::{DurationError, format_duration, parse_duration};
pub use spec::{ManagedSpec, SpecError};
