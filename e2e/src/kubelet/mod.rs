//! The test bed's kubelet: the one part of the data path that is ours. kwok gives the fake
//! nodes' pods their phase and address; this runs what the pods hold, where they are.
//!
//! ```text
//!  kube-apiserver ──watch pods──▶ pods.rs: per running pod
//!        ▲                           ├─ netns.rs: its own network namespace on the node bridge
//!        │ Ready condition           ├─ a test backend on each container port (HTTP or gRPC)
//!        └───────────────────────────├─ sidecar.rs: pilot-agent + Envoy for `istio-proxy`
//!                                    └─ hostPort bridges from 127.0.0.1 on this machine
//! ```
pub mod backend;
pub mod netns;
pub mod pods;
pub mod sidecar;
