//! kzscaler's controller: the replica cache, coalesced activation, idle scale-down, leader
//! election, and the HTTP API filters call.
//!
//! Where things are: `kzscaler_core::index` keeps managed destinations current one API object
//! at a time (pure; shared with `kubectl kzscaler`); `cache.rs` publishes them as versioned snapshots and deltas;
//! `activate.rs` wakes a Deployment once however many callers ask; `idle.rs` decides and
//! `sleep.rs` acts on idle Deployments, when they change or `due.rs` says they are due; `lease.rs` elects the one replica that acts;
//! `api.rs` is the HTTP API;
//! `run.rs` wires watches, the API server and the HTTP server. Annotations are read by
//! `kzscaler_core::spec`, shared with the webhook's validation.
#![forbid(unsafe_code)]

pub mod activate;
pub mod api;
pub mod cache;
pub mod clock;
pub mod due;
pub mod error;
pub mod idle;
pub mod lease;
pub mod metrics;
pub mod run;
pub mod sleep;
pub mod wasmplugin;
pub mod watch;

pub use error::{Error, Result};
pub use kzscaler_core::spec::{ManagedSpec, SpecError};
pub use kzscaler_core::{index, virtualservice};
