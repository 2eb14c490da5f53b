//! `kubectl kzscaler`: see and steer what kzscaler does, through the API objects only.
//!
//! `view.rs` turns Deployments, Services, HPAs, pods and namespaces into rows (pure);
//! `table.rs` aligns them like `kubectl get`; `explain.rs` writes the explanation (pure);
//! `age.rs` formats ages; `commands.rs` reads and patches through the API server.
#![forbid(unsafe_code)]

pub mod age;
pub mod commands;
pub mod explain;
pub mod table;
pub mod view;
