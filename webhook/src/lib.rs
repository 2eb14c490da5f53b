//! kzscaler's admission webhook. For now: the pure pod mutation. The axum + rustls server,
//! the validating checks and certificate reloading come with the injection issue.
#![forbid(unsafe_code)]

pub mod mutate;
