//! kzscaler's proxy-wasm filter.
//!
//! ```text
//!  Envoy ──on_configure──▶ RootContext (config.rs: parse + validate once)
//!        ──per request──▶ HttpContext (host.rs: the thin proxy_wasm layer)
//! ```
//!
//! For now the filter validates its configuration and lets every request through; holding
//! requests comes with the wake issue. Logic lives in plain modules tested natively; only
//! `host.rs` touches `proxy_wasm`.
#![forbid(unsafe_code)]
#![deny(clippy::panic)]

pub mod config;
mod host;
