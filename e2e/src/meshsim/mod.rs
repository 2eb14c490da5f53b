//! The mesh simulator: keeps a real Envoy configured like the outbound side of an Istio sidecar,
//! and runs a real backend for every ready endpoint.
//!
//! ```text
//!  kube-apiserver ──watch Services, EndpointSlices──▶ model::Mesh (pure)
//!                                                       │ reconcile (run.rs)
//!        ┌──────────────────────────────────────────────┼─────────────────────┐
//!        ▼                                              ▼                     ▼
//!  backend.rs: one HTTP/gRPC server        envoy.rs: cds.json, rds.json,  Envoy (child process)
//!  per ready endpoint, 127.0.0.1:<port>    eds/<cluster>.json (rename)    reloads on rename
//! ```
pub mod backend;
pub mod envoy;
pub mod model;
pub mod run;
