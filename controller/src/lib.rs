//! kzscaler's controller: the replica cache, coalesced activation, and the HTTP API filters
//! call. Idle scale-down comes with the sleep issue.
//!
//! Where things are: `cache.rs` derives managed destinations from API objects (pure);
//! `activate.rs` wakes a Deployment once however many callers ask; `api.rs` is the HTTP API;
//! `run.rs` wires watches, the API server and the HTTP server. Annotations are read by
//! `kzscaler_core::spec`, shared with the webhook's validation.
#![forbid(unsafe_code)]

pub mod activate;
pub mod api;
pub mod cache;
pub mod idle;
pub mod metrics;
pub mod run;
pub mod sleep;
pub mod wake;
pub mod wasmplugin;
pub mod watch;

pub use kzscaler_core::spec::{ManagedSpec, SpecError};
