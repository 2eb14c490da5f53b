//! kzscaler's end-to-end test support and the test bed's kubelet.
//!
//! - [`kubelet`]: the test bed's kubelet: pods in network namespaces of their own, their
//!   containers (test backends, Istio sidecars by pilot-agent).
//! - [`testbed`]: what a test needs from a running test bed (client, Envoy address, logs).
//! - [`envoy`]: Envoy with only the filter, from a static bootstrap.
//! - [`oci`]: the release's images pulled from the test bed's registry and run by runc.
//! - [`namespace`] and [`wait`]: a temporary namespace per test, waits that explain failures.
#![forbid(unsafe_code)]

pub mod envoy;
pub mod fixtures;
pub mod kubelet;
pub mod kz;
pub mod namespace;
pub mod oci;
pub mod process;
pub mod testbed;
pub mod wait;
