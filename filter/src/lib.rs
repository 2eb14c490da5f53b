//! kzscaler's proxy-wasm filter: holds requests to sleeping destinations in the caller's own
//! sidecar while the controller wakes them.
//!
//! ```text
//!  Envoy ──on_configure──▶ Root (config.rs: parse + validate once)
//!        ──on_tick──────▶ Root: poll the snapshot (table.rs) into shared data; drive held
//!                          requests (hold.rs: activate, resume, or 503 at the deadline)
//!        ──per request──▶ Request (request.rs): table lookup by xds.cluster_name; hold if asleep
//! ```
//!
//! Logic lives in plain modules tested natively (`cargo test -p kzscaler-filter`): the
//! per-request decision in `request.rs`, holding and releasing in `hold.rs`, what the workers
//! share (poll lease, snapshot versions, clock, tick) in `sync.rs`. Only `host.rs` touches
//! `proxy_wasm`, and only to read and write what those modules decide.
#![forbid(unsafe_code)]
#![deny(clippy::panic)]

pub mod config;
pub mod deadline;
pub mod hash;
pub mod hold;
pub mod request;
pub mod sync;
pub mod table;

mod host;
