//! kzscaler's end-to-end test support and the mesh simulator.
//!
//! - [`meshsim`]: plays istiod and kubelet for the data path of the local test bed.
//! - [`testbed`]: what a test needs from a running test bed (client, Envoy address, logs).
//! - [`namespace`] and [`wait`]: a temporary namespace per test, waits that explain failures.
#![forbid(unsafe_code)]

pub mod fixtures;
pub mod kubelet;
pub mod kz;
pub mod meshsim;
pub mod namespace;
pub mod testbed;
pub mod wait;
