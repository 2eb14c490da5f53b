//! kzscaler's admission webhook.
//!
//! ```text
//!  kube-apiserver ──HTTPS (tls.rs: rustls, certificate reloaded when its files change)──▶ server.rs
//!      POST /mutate   Pod CREATE in opted-in namespaces ──▶ admission.rs::mutate (mutate.rs: the patch)
//!      POST /validate Deployment CREATE/UPDATE          ──▶ admission.rs::validate (kzscaler_core::spec)
//! ```
//! Decisions are pure functions from request to response; the server only converts.
#![forbid(unsafe_code)]

pub mod admission;
pub mod metrics;
pub mod mutate;
pub mod server;
pub mod tls;
