//! The local copy of the controller's snapshot, indexed by outbound cluster name. Parsed once
//! per snapshot change (on tick), never per request.

use std::collections::HashMap;

use kzscaler_core::wire::{Snapshot, State};

/// What the filter needs of one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Its state in the snapshot.
    pub state: State,
    /// Longest hold, in milliseconds.
    pub wake_timeout_ms: u64,
}

/// Managed destinations by cluster name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// The snapshot's version (sent back as `If-None-Match`).
    pub version: u64,
    by_cluster: HashMap<String, Entry>,
    holds_any: bool,
}

impl Table {
    /// Parses the snapshot JSON the controller serves.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let snap: Snapshot =
            serde_json::from_slice(json).map_err(|e| format!("snapshot is not valid: {e}"))?;
        let holds_any = snap.destinations.iter().any(|d| d.state.must_hold());
        Ok(Self {
            version: snap.version,
            holds_any,
            by_cluster: snap
                .destinations
                .into_iter()
                .map(|d| {
                    (
                        d.cluster,
                        Entry {
                            state: d.state,
                            wake_timeout_ms: d.wake_timeout_ms,
                        },
                    )
                })
                .collect(),
        })
    }

    /// The destination behind a cluster, if managed.
    pub fn get(&self, cluster: &str) -> Option<Entry> {
        self.by_cluster.get(cluster).copied()
    }

    /// Whether any destination is asleep or waking. When none is, no request can be held and
    /// the request path skips even reading the cluster name: that is the warm path.
    pub fn holds_any(&self) -> bool {
        self.holds_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_controllers_snapshot() {
        let t = Table::parse(
            br#"{"version":3,"destinations":[{"cluster":"outbound|80||web.shop.svc.cluster.local",
            "namespace":"shop","service":"web","deployment":"web","state":"asleep","wake_timeout_ms":5000}]}"#,
        )
        .unwrap();
        assert_eq!(t.version, 3);
        assert_eq!(
            t.get("outbound|80||web.shop.svc.cluster.local"),
            Some(Entry {
                state: State::Asleep,
                wake_timeout_ms: 5000
            })
        );
        assert_eq!(t.get("outbound|80||db.shop.svc.cluster.local"), None);
        assert!(t.holds_any());
        let awake = Table::parse(
            br#"{"version":4,"destinations":[{"cluster":"c","namespace":"shop","service":"web",
            "deployment":"web","state":"awake","wake_timeout_ms":5000}]}"#,
        )
        .unwrap();
        assert!(
            !awake.holds_any(),
            "all awake: nothing to look up per request"
        );
        assert!(!Table::default().holds_any());
    }

    #[test]
    fn bad_snapshot_is_an_error_not_a_panic() {
        assert!(Table::parse(b"{").is_err());
        assert!(Table::parse(br#"{"version":1,"destinations":[{"cluster":1}]}"#).is_err());
    }
}
