//! kzscaler's controller. For now: how a Deployment's kzscaler annotations are read, and how
//! many replicas a wake asks for. The replica cache, activate and the filter API come next.
#![forbid(unsafe_code)]

pub mod spec;
pub mod wake;

pub use spec::{ManagedSpec, SpecError};
