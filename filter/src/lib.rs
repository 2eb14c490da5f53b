//! kzscaler's proxy-wasm filter: holds requests to sleeping destinations in the caller's own
//! sidecar while the controller wakes them.
//!
//! ```text
//!  Envoy ──on_configure──▶ Root (config.rs: parse + validate once)
//!        ──on_tick──────▶ Root: poll the snapshot (table.rs) into shared data; drive held
//!                          requests (hold.rs: activate, resume, or 503 at the deadline)
//!        ──per request──▶ Request: table lookup by xds.cluster_name; hold if asleep
//! ```
//!
//! Logic lives in plain modules tested natively (`cargo test -p kzscaler-filter`): holding and
//! releasing in `hold.rs`, what workers share (poll lease, snapshot versions, clock, tick) in
//! `sync.rs`; only
//! `host.rs` touches `proxy_wasm`.
#![forbid(unsafe_code)]
#![deny(clippy::panic)]

pub mod config;
pub mod deadline;
pub mod hold;
pub mod sync;
pub mod table;

mod host;
