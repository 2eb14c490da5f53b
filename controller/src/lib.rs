//! kzscaler's controller: the replica cache, coalesced activation, and the HTTP API filters
//! call. Idle scale-down comes with the sleep issue.
//!
//! Where things are: `cache.rs` derives managed destinations from API objects (pure);
//! `activate.rs` wakes a Deployment once however many callers ask; `api.rs` is the HTTP API;
//! `run.rs` wires watches, the API server and the HTTP server; `spec.rs` reads annotations.
#![forbid(unsafe_code)]

pub mod activate;
pub mod api;
pub mod cache;
pub mod metrics;
pub mod run;
pub mod spec;
pub mod wake;
pub mod watch;

pub use spec::{ManagedSpec, SpecError};
