//! What the workers of one Envoy share, and the decisions about it: which worker polls the
//! controller (the poll lease), which snapshot wins when polls overlap (versions only move
//! forward), when a worker adopts another's snapshot, the clock held requests are timed by,
//! and the tick period. Plain Rust behind the small [`Shared`] trait, tested natively.
//!
//! ```text
//!  worker A: poll ─▶ 200 v7 ─▶ publish(v7): CAS "kzscaler.snapshot.stored" = 7 ‖ slot 1,
//!                              the body as it came into "kzscaler.snapshot.slot.1",
//!                              then the hint "kzscaler.snapshot.version" = 7
//!  worker B: poll ─▶ 200 v6 (sent earlier, answered later) ─▶ publish(v6): v7 stored: no
//!  every tick: hint > adopted? ─▶ read the stored body once per hint ─▶ adopt if newer
//! ```
//!
//! The full snapshot is the largest thing a VM ever holds (about 1.9 MB at 10,000
//! destinations), so it is never copied inside a VM: the body goes to shared data as it came
//! from the controller (its version is in it), and the order of versions is kept by a small
//! key beside it. Writing it in a slot of its own means no worker has to read the stored body
//! to compare versions.

use kzscaler_core::wire::{ActivityReport, ClusterCount, InboundCount};

/// Shared data keys (shared by every worker of this VM).
///
/// The stored full snapshot: `version ‖ slot` (two little-endian u64), raised by CAS only to
/// a newer version.
pub const SNAPSHOT_STORED_KEY: &str = "kzscaler.snapshot.stored";
/// Slots `kzscaler.snapshot.slot.<n>` of full snapshot bodies, as the controller sent them.
pub const SNAPSHOT_SLOT_PREFIX: &str = "kzscaler.snapshot.slot.";
/// Two slots: a publisher writes the one the stored version does not point at, and empties
/// the other once its own is the stored one.
pub const SNAPSHOT_SLOTS: u64 = 2;
/// The newest version any worker has (a full snapshot or a delta): cheap to read every tick.
pub const SNAPSHOT_VERSION_KEY: &str = "kzscaler.snapshot.version";
/// Until when (ms, [`Clock`] time of the worker that took it) one worker polls.
pub const POLL_LEASE_KEY: &str = "kzscaler.poll.lease";
/// Activity counted by every worker since the last report (JSON of an [`ActivityReport`];
/// empty: none): workers add theirs, the one holding [`REPORT_LEASE_KEY`] sends it.
pub const ACTIVITY_KEY: &str = "kzscaler.activity";
/// Until when one worker reports this Envoy's activity (like [`POLL_LEASE_KEY`]).
pub const REPORT_LEASE_KEY: &str = "kzscaler.report.lease";

/// Recent deltas, in [`DELTA_SLOTS`] slots `kzscaler.delta.<since % DELTA_SLOTS>`, each
/// `since ‖ version ‖ body`: a worker at `since` applies the slot's delta and goes on from
/// `version`. (Shared data keys can never be deleted: a fixed set of slots.)
pub const DELTA_KEY_PREFIX: &str = "kzscaler.delta.";
/// How many deltas the workers keep for each other: a worker further behind reads the full
/// snapshot, or polls one.
pub const DELTA_SLOTS: u64 = 16;

/// The shared data key of the slot for a delta from `since`.
pub fn delta_key(since: u64) -> String {
    format!("{DELTA_KEY_PREFIX}{}", since % DELTA_SLOTS)
}

/// Stores a delta from `since` to `version` for the other workers and raises the version
/// hint. Two deltas from the same version are both right (they come from one term): the
/// later write wins the slot.
pub fn publish_delta(shared: &mut impl Shared, since: u64, version: u64, body: &[u8]) -> bool {
    let mut blob = Vec::with_capacity(16 + body.len());
    blob.extend_from_slice(&since.to_le_bytes());
    blob.extend_from_slice(&version.to_le_bytes());
    blob.extend_from_slice(body);
    if !shared.set(&delta_key(since), &blob, None) {
        return false;
    }
    raise_hint(shared, version);
    true
}

/// What a worker behind the hint reads next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// A delta from the worker's version, as `(version, body)`.
    Delta(u64, Vec<u8>),
    /// The full snapshot, newer than the worker's version, as `(version, body)`.
    Full(u64, Vec<u8>),
    /// Behind, but neither a delta from its version nor a newer full snapshot is stored:
    /// it must poll a full snapshot itself.
    Lost,
}

/// Envoy's shared data, as the workers see it.
pub trait Shared {
    /// The value and its CAS token; None when the host refused the call.
    fn get(&self, key: &str) -> Option<(Option<Vec<u8>>, Option<u32>)>;
    /// Stores `value` if the key's CAS token is still `cas`; false when it changed meanwhile.
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

/// A little-endian u64 at the start of `bytes`.
pub fn u64_le(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// CAS attempts before giving up on a write another worker keeps winning (it wrote
/// something at least as new, or will on its next tick).
const CAS_ATTEMPTS: usize = 4;

/// The shared data key of a full snapshot slot.
pub fn slot_key(slot: u64) -> String {
    format!("{SNAPSHOT_SLOT_PREFIX}{}", slot % SNAPSHOT_SLOTS)
}

/// `(version, slot)` of [`SNAPSHOT_STORED_KEY`].
fn stored_of(bytes: &[u8]) -> Option<(u64, u64)> {
    Some((u64_le(bytes)?, u64_le(bytes.get(8..)?)?))
}

/// Stores the full snapshot `body` of `version` for the other workers, unless one at least as
/// new is stored: an older answer landing last never overwrites a newer one. Returns whether
/// it stored it. The body is stored as it is (no copy inside the VM).
pub fn publish(shared: &mut impl Shared, version: u64, body: &[u8]) -> bool {
    for _ in 0..CAS_ATTEMPTS {
        let Some((stored, cas)) = shared.get(SNAPSHOT_STORED_KEY) else {
            return false;
        };
        let previous = stored.as_deref().and_then(stored_of);
        if previous.is_some_and(|(v, _)| v >= version) {
            return false;
        }
        let slot = previous.map_or(0, |(_, s)| (s + 1) % SNAPSHOT_SLOTS);
        let mut claim = [0u8; 16];
        claim[..8].copy_from_slice(&version.to_le_bytes());
        claim[8..].copy_from_slice(&slot.to_le_bytes());
        if !shared.set(SNAPSHOT_STORED_KEY, &claim, cas) {
            continue;
        }
        // The version is claimed; readers that come before the body is written find the
        // slot's old body, see its version is not the stored one, and poll for themselves.
        if !shared.set(&slot_key(slot), body, None) {
            return false;
        }
        if let Some((_, old)) = previous
            && old != slot
            && shared
                .get(SNAPSHOT_STORED_KEY)
                .and_then(|(v, _)| v)
                .is_some_and(|v| v == claim)
        {
            // Still the stored one: nobody needs the older body any more.
            shared.set(&slot_key(old), &[], None);
        }
        raise_hint(shared, version);
        return true;
    }
    false
}

fn raise_hint(shared: &mut impl Shared, version: u64) {
    for _ in 0..CAS_ATTEMPTS {
        let Some((hint, cas)) = shared.get(SNAPSHOT_VERSION_KEY) else {
            return;
        };
        if hint
            .as_deref()
            .and_then(u64_le)
            .is_some_and(|h| h >= version)
            || shared.set(SNAPSHOT_VERSION_KEY, &version.to_le_bytes(), cas)
        {
            return;
        }
    }
}

/// Which snapshot a worker holds, and which stored one it last looked at.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    /// The version of the table in use (sent back as `If-None-Match`).
    pub version: Option<u64>,
    /// The hint of the stored blob last read, adopted or not (a blob that did not parse is
    /// read again only when the hint moves).
    tried_hint: Option<u64>,
}

impl Adopted {
    /// Whether a snapshot of `version` may replace the one in use: versions only move forward.
    pub fn is_newer(&self, version: u64) -> bool {
        self.version.is_none_or(|v| version > v)
    }

    /// Marks `version` as in use.
    pub fn adopt(&mut self, version: u64) {
        self.version = Some(version);
    }

    /// What brings this worker forward, if the hint is ahead of it: a stored delta from its
    /// version (small), else the full snapshot if newer. Read at most once per change of the
    /// hint unless something applies (then the caller asks again, for the next step).
    pub fn next_stored(&mut self, shared: &impl Shared) -> Option<Stored> {
        let (hint, _) = shared.get(SNAPSHOT_VERSION_KEY)?;
        let hint = u64_le(hint.as_deref()?)?;
        if !self.is_newer(hint) || self.tried_hint == Some(hint) {
            return None;
        }
        if let Some(v) = self.version
            && let Some((Some(blob), _)) = shared.get(&delta_key(v))
            && u64_le(&blob) == Some(v)
            && let Some(to) = blob.get(8..).and_then(u64_le)
            && to > v
        {
            return Some(Stored::Delta(
                to,
                blob.get(16..).map(<[u8]>::to_vec).unwrap_or_default(),
            ));
        }
        match self.newer_stored(shared) {
            Some((v, body)) => Some(Stored::Full(v, body)),
            None => Some(Stored::Lost),
        }
    }

    /// Forgets which hint was tried: the next [`Adopted::next_stored`] looks again (after
    /// a full snapshot was adopted: deltas stored since may follow).
    pub fn retry(&mut self) {
        self.tried_hint = None;
    }

    /// Stops looking at what is stored until the hint moves (a stored delta that does not
    /// apply is not read again every tick).
    pub fn skip_hint(&mut self, shared: &impl Shared) {
        if let Some((Some(hint), _)) = shared.get(SNAPSHOT_VERSION_KEY) {
            self.tried_hint = u64_le(&hint);
        }
    }

    /// A stored snapshot newer than the one in use, as `(version, body)`, read at most once
    /// per change of the stored version. The body is the controller's: whoever parses it
    /// checks that it is of `version` (a slot being rewritten holds another one).
    pub fn newer_stored(&mut self, shared: &impl Shared) -> Option<(u64, Vec<u8>)> {
        let (hint, _) = shared.get(SNAPSHOT_VERSION_KEY)?;
        let hint = u64_le(hint.as_deref()?)?;
        if !self.is_newer(hint) || self.tried_hint == Some(hint) {
            return None;
        }
        self.tried_hint = Some(hint);
        let (stored, _) = shared.get(SNAPSHOT_STORED_KEY)?;
        let (version, slot) = stored_of(&stored?)?;
        if !self.is_newer(version) {
            return None;
        }
        let (body, _) = shared.get(&slot_key(slot))?;
        Some((version, body.filter(|b| !b.is_empty())?))
    }
}

/// Takes the poll lease for `hold_ms` if it is free: passed, or further ahead than any lease
/// is ever set (`max_ms`: the holder's clock was ahead of ours, or ours stepped back: waiting
/// for it would stop polling for as long as the step).
pub fn take_poll_lease(shared: &mut impl Shared, now: u64, hold_ms: u64, max_ms: u64) -> bool {
    take_lease(shared, POLL_LEASE_KEY, now, hold_ms, max_ms)
}

/// Takes the lease under `key` (see [`take_poll_lease`]).
pub fn take_lease(
    shared: &mut impl Shared,
    key: &str,
    now: u64,
    hold_ms: u64,
    max_ms: u64,
) -> bool {
    let Some((lease, cas)) = shared.get(key) else {
        return false;
    };
    if lease
        .as_deref()
        .and_then(u64_le)
        .is_some_and(|until| now < until && until <= now.saturating_add(max_ms))
    {
        return false;
    }
    shared.set(key, &now.saturating_add(hold_ms).to_le_bytes(), cas)
}

/// Adds `report` to this Envoy's activity in shared data: requests are summed; requests in
/// flight are the most any worker has (any is activity), and only if `in_flight` (a report
/// put back after it did not arrive has stale ones). False when the host refused.
pub fn add_activity(shared: &mut impl Shared, report: &ActivityReport, in_flight: bool) -> bool {
    for _ in 0..CAS_ATTEMPTS {
        let Some((stored, cas)) = shared.get(ACTIVITY_KEY) else {
            return false;
        };
        let mut sum: ActivityReport = stored
            .as_deref()
            .filter(|b| !b.is_empty())
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default();
        merge_activity(&mut sum, report, in_flight);
        let Ok(bytes) = serde_json::to_vec(&sum) else {
            return false;
        };
        if shared.set(ACTIVITY_KEY, &bytes, cas) {
            return true;
        }
    }
    false
}

/// Takes this Envoy's activity out of shared data (leaving none), to send it.
pub fn take_activity(shared: &mut impl Shared) -> Option<ActivityReport> {
    for _ in 0..CAS_ATTEMPTS {
        let (stored, cas) = shared.get(ACTIVITY_KEY)?;
        let stored = stored.filter(|b| !b.is_empty())?;
        if shared.set(ACTIVITY_KEY, b"", cas) {
            // A record that does not parse is dropped rather than kept forever.
            return serde_json::from_slice(&stored).ok();
        }
    }
    None
}

fn merge_activity(into: &mut ActivityReport, from: &ActivityReport, in_flight: bool) {
    let fl = |n: u64| if in_flight { n } else { 0 };
    for c in &from.outbound {
        match into.outbound.iter_mut().find(|x| x.cluster == c.cluster) {
            Some(x) => {
                x.requests = x.requests.saturating_add(c.requests);
                x.in_flight = x.in_flight.max(fl(c.in_flight));
            }
            None => into.outbound.push(ClusterCount {
                in_flight: fl(c.in_flight),
                ..c.clone()
            }),
        }
    }
    for c in &from.inbound {
        match into
            .inbound
            .iter_mut()
            .find(|x| x.namespace == c.namespace && x.deployment == c.deployment)
        {
            Some(x) => {
                x.requests = x.requests.saturating_add(c.requests);
                x.in_flight = x.in_flight.max(fl(c.in_flight));
            }
            None => into.inbound.push(InboundCount {
                in_flight: fl(c.in_flight),
                ..c.clone()
            }),
        }
    }
}

/// The holder's poll was answered (or could not be sent): its lease, until `held` as taken,
/// now ends at `until` (the poll's start plus one poll period), so the next poll starts then,
/// whichever worker takes it, and never sooner. A lease another worker took meanwhile (this
/// one had expired) is left alone.
pub fn end_poll_lease(shared: &mut impl Shared, held: u64, until: u64) -> bool {
    let Some((stored, cas)) = shared.get(POLL_LEASE_KEY) else {
        return false;
    };
    if stored.as_deref().and_then(u64_le) != Some(held) {
        return false;
    }
    shared.set(POLL_LEASE_KEY, &until.to_le_bytes(), cas)
}

/// Time for deadlines and periods that a step of the wall clock cannot stretch: it follows
/// the wall clock's progress, counting a step back as no time and a jump forward as at most
/// [`Clock::MAX_STEP_MS`]. (The proxy-wasm ABI gives only the wall clock.)
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    last_wall: Option<u64>,
    now: u64,
}

impl Clock {
    /// The longest progress one reading may add: far longer than any tick period, far
    /// shorter than a clock correction.
    pub const MAX_STEP_MS: u64 = 5_000;

    /// The time now, given the wall clock now.
    pub fn now(&mut self, wall_ms: u64) -> u64 {
        let progress = match self.last_wall {
            None => wall_ms, // starts where the wall clock is: readable in logs
            Some(last) => wall_ms.saturating_sub(last).min(Self::MAX_STEP_MS),
        };
        self.last_wall = Some(wall_ms);
        self.now = self.now.saturating_add(progress);
        self.now
    }
}

/// The tick period a worker's root context runs at. Envoy re-arms the timer from "now" on
/// every `set_tick_period`, so it must be set only when it changes: set on every held
/// request, a steady stream of them would keep the tick from ever firing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    current: Option<std::time::Duration>,
}

impl Tick {
    /// The period to hand to Envoy, if it differs from the one set.
    pub fn change(&mut self, wanted: std::time::Duration) -> Option<std::time::Duration> {
        (self.current != Some(wanted)).then(|| {
            self.current = Some(wanted);
            wanted
        })
    }
}

/// Whether an activity report arrived: the controller answers 204; anything else (Envoy's
/// own 503 or 504, a follower's 503) means its counts must be sent again.
pub fn report_delivered(status: Option<u32>) -> bool {
    status == Some(204)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::HashMap;
    use std::time::Duration;

    /// Envoy's shared data: a CAS token per key that changes on every write.
    #[derive(Default)]
    struct FakeShared {
        data: HashMap<String, (Vec<u8>, u32)>,
        /// Reads of the (large) snapshot blob.
        blob_reads: Cell<usize>,
    }

    impl Shared for FakeShared {
        fn get(&self, key: &str) -> Option<(Option<Vec<u8>>, Option<u32>)> {
            if key.starts_with(SNAPSHOT_SLOT_PREFIX) {
                self.blob_reads.set(self.blob_reads.get() + 1);
            }
            Some(match self.data.get(key) {
                Some((v, cas)) => (Some(v.clone()), Some(*cas)),
                None => (None, None),
            })
        }
        fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
            let current = self.data.get(key).map(|(_, c)| *c);
            if cas.is_some_and(|c| c != 0) && cas != current {
                return false;
            }
            let next = current.unwrap_or(0) + 1;
            self.data.insert(key.to_owned(), (value.to_vec(), next));
            true
        }
    }

    #[test]
    fn an_older_snapshot_answered_last_never_overwrites_a_newer_one() {
        let mut shared = FakeShared::default();
        // Two workers' polls overlap: v7 lands first, the older v6 after it.
        assert!(publish(&mut shared, 7, b"seven"));
        assert!(!publish(&mut shared, 6, b"six"));
        let mut other = Adopted::default();
        assert_eq!(other.newer_stored(&shared), Some((7, b"seven".to_vec())));
        other.adopt(7);
        assert!(!other.is_newer(6), "a worker never adopts an older version");
        assert!(other.is_newer(8));
        assert_eq!(other.newer_stored(&shared), None);
    }

    #[test]
    fn a_stored_snapshot_is_read_once_per_change_even_when_it_is_not_adopted() {
        let mut shared = FakeShared::default();
        publish(&mut shared, 3, b"not json");
        let mut a = Adopted::default();
        assert!(a.newer_stored(&shared).is_some());
        let reads = shared.blob_reads.get();
        // Not adopted (it did not parse): not read again on every tick.
        for _ in 0..10 {
            assert_eq!(a.newer_stored(&shared), None);
        }
        assert_eq!(shared.blob_reads.get(), reads);
        publish(&mut shared, 4, b"{}");
        assert_eq!(a.newer_stored(&shared), Some((4, b"{}".to_vec())));
    }

    #[test]
    fn a_cas_lost_to_another_worker_is_retried_against_what_it_wrote() {
        let mut shared = FakeShared::default();
        publish(&mut shared, 5, b"five");
        // Another worker wrote between our read and our write: the CAS fails, and the retry
        // compares with what it wrote.
        let (_, stale_cas) = shared.get(SNAPSHOT_STORED_KEY).unwrap();
        publish(&mut shared, 9, b"nine");
        assert!(!shared.set(SNAPSHOT_STORED_KEY, b"x", stale_cas));
        assert!(!publish(&mut shared, 8, b"eight"));
        assert!(publish(&mut shared, 10, b"ten"));
        let hint = shared.get(SNAPSHOT_VERSION_KEY).unwrap().0.unwrap();
        assert_eq!(u64_le(&hint), Some(10));
    }

    #[test]
    fn publishing_reads_no_stored_body_and_leaves_only_the_newest_one() {
        let mut shared = FakeShared::default();
        for (v, body) in [
            (5, &b"five"[..]),
            (9, b"nine"),
            (10, b"ten"),
            (12, b"twelve"),
        ] {
            assert!(publish(&mut shared, v, body));
        }
        assert_eq!(
            shared.blob_reads.get(),
            0,
            "no VM holds two bodies to publish one"
        );
        let bodies: Vec<&[u8]> = (0..SNAPSHOT_SLOTS)
            .filter_map(|s| shared.data.get(&slot_key(s)))
            .map(|(v, _)| v.as_slice())
            .filter(|v| !v.is_empty())
            .collect();
        assert_eq!(bodies, vec![&b"twelve"[..]], "the older slot is emptied");
        let mut a = Adopted::default();
        assert_eq!(a.newer_stored(&shared), Some((12, b"twelve".to_vec())));
    }

    #[test]
    fn a_worker_follows_the_deltas_others_stored_and_falls_back_to_the_full_snapshot() {
        let mut shared = FakeShared::default();
        publish(&mut shared, 10, b"full ten");
        let mut a = Adopted::default();
        assert_eq!(
            a.next_stored(&shared),
            Some(Stored::Full(10, b"full ten".to_vec()))
        );
        a.adopt(10);
        // Another worker applied two deltas: 10 → 11 → 13.
        assert!(publish_delta(&mut shared, 10, 11, b"d11"));
        assert!(publish_delta(&mut shared, 11, 13, b"d13"));
        assert_eq!(
            a.next_stored(&shared),
            Some(Stored::Delta(11, b"d11".to_vec()))
        );
        a.adopt(11);
        assert_eq!(
            a.next_stored(&shared),
            Some(Stored::Delta(13, b"d13".to_vec()))
        );
        a.adopt(13);
        assert_eq!(a.next_stored(&shared), None, "caught up");
        // Too far behind: the slot of its version was reused, and the full snapshot is older.
        let mut b = Adopted::default();
        b.adopt(12);
        assert!(publish_delta(
            &mut shared,
            12 + DELTA_SLOTS * 3,
            12 + DELTA_SLOTS * 3 + 1,
            b"x"
        ));
        assert_eq!(b.next_stored(&shared), Some(Stored::Lost));
        assert_eq!(b.next_stored(&shared), None, "asked once per hint");
        b.retry();
        assert_eq!(b.next_stored(&shared), Some(Stored::Lost));
        // A newer full snapshot brings it back.
        publish(&mut shared, 100, b"full hundred");
        assert_eq!(
            b.next_stored(&shared),
            Some(Stored::Full(100, b"full hundred".to_vec()))
        );
    }

    fn report(cluster: &str, requests: u64, in_flight: u64) -> ActivityReport {
        ActivityReport {
            outbound: vec![ClusterCount {
                cluster: cluster.into(),
                requests,
                in_flight,
            }],
            inbound: vec![InboundCount {
                namespace: "shop".into(),
                deployment: "web".into(),
                requests,
                in_flight,
            }],
        }
    }

    #[test]
    fn the_workers_activity_goes_out_as_one_report_per_envoy() {
        let mut shared = FakeShared::default();
        assert_eq!(
            take_activity(&mut shared),
            None,
            "nothing counted: nothing sent"
        );
        // Two workers add theirs; one of them sends it.
        assert!(add_activity(&mut shared, &report("a", 3, 1), true));
        assert!(add_activity(&mut shared, &report("a", 2, 0), true));
        assert!(add_activity(&mut shared, &report("b", 1, 0), true));
        let sent = take_activity(&mut shared).unwrap();
        let a = &sent.outbound[0];
        assert_eq!((a.cluster.as_str(), a.requests, a.in_flight), ("a", 5, 1));
        assert_eq!(sent.outbound[1].requests, 1);
        assert_eq!((sent.inbound.len(), sent.inbound[0].requests), (1, 6));
        assert_eq!(take_activity(&mut shared), None, "taken once");
        // It did not arrive: its requests count again, its stale in-flight counts do not.
        assert!(add_activity(&mut shared, &sent, false));
        let again = take_activity(&mut shared).unwrap();
        assert_eq!(
            (again.outbound[0].requests, again.outbound[0].in_flight),
            (5, 0)
        );
    }

    #[test]
    fn one_worker_reports_per_period() {
        let mut shared = FakeShared::default();
        assert!(take_lease(
            &mut shared,
            REPORT_LEASE_KEY,
            1_000,
            1_000,
            1_000
        ));
        assert!(!take_lease(
            &mut shared,
            REPORT_LEASE_KEY,
            1_500,
            1_000,
            1_000
        ));
        assert!(
            take_poll_lease(&mut shared, 1_500, 1_000, 1_000),
            "the poll lease is another"
        );
        assert!(take_lease(
            &mut shared,
            REPORT_LEASE_KEY,
            2_000,
            1_000,
            1_000
        ));
    }

    #[test]
    fn one_worker_holds_the_poll_lease_for_a_period() {
        let mut shared = FakeShared::default();
        assert!(take_poll_lease(&mut shared, 1_000, 1_000, 1_000));
        assert!(!take_poll_lease(&mut shared, 1_500, 1_000, 1_000), "held");
        assert!(take_poll_lease(&mut shared, 2_000, 1_000, 1_000), "passed");
    }

    #[test]
    fn a_long_poll_holds_the_lease_until_answered_then_one_period_from_its_start() {
        let mut shared = FakeShared::default();
        let (period, long) = (1_000, 32_000);
        // A long poll starts at 10 s: nobody else polls while it is open.
        assert!(take_poll_lease(&mut shared, 10_000, long, long));
        assert!(
            !take_poll_lease(&mut shared, 25_000, period, long),
            "still open"
        );
        // Answered at 10.2 s (something changed): the next poll starts at 11 s, not before.
        assert!(end_poll_lease(&mut shared, 10_000 + long, 10_000 + period));
        assert!(!take_poll_lease(&mut shared, 10_500, long, long));
        assert!(take_poll_lease(&mut shared, 11_000, long, long));
        // Its lease expired and another worker took it: a late answer leaves that one alone.
        assert!(take_poll_lease(&mut shared, 11_000 + long, long, long));
        assert!(!end_poll_lease(&mut shared, 11_000 + long, 11_000 + period));
        assert!(!take_poll_lease(
            &mut shared,
            11_000 + long + 10,
            long,
            long
        ));
        // Answered after its whole wait: the next starts one period after it started.
        assert!(end_poll_lease(
            &mut shared,
            11_000 + 2 * long,
            11_000 + long + period
        ));
        assert!(take_poll_lease(
            &mut shared,
            11_000 + long + period,
            long,
            long
        ));
    }

    #[test]
    fn a_clock_step_back_does_not_stop_polling() {
        let mut shared = FakeShared::default();
        assert!(take_poll_lease(&mut shared, 10_000_000, 1_000, 1_000));
        // The wall clock steps back an hour: the lease lies further ahead than any lease is
        // set. Waiting for it would stop polling for an hour.
        assert!(take_poll_lease(
            &mut shared,
            10_000_000 - 3_600_000,
            1_000,
            1_000
        ));
        assert!(!take_poll_lease(
            &mut shared,
            10_000_000 - 3_599_500,
            1_000,
            1_000
        ));
    }

    #[test]
    fn the_clock_counts_a_step_back_as_no_time_and_a_jump_as_at_most_a_few_seconds() {
        let mut c = Clock::default();
        let t0 = c.now(1_000_000);
        assert_eq!(c.now(1_000_100), t0 + 100);
        assert_eq!(c.now(400_000), t0 + 100, "stepped back: no time passes");
        assert_eq!(c.now(400_050), t0 + 150, "and it goes on from there");
        assert_eq!(
            c.now(400_050 + 3_600_000),
            t0 + 150 + Clock::MAX_STEP_MS,
            "an hour's jump forward does not expire every held request"
        );
    }

    #[test]
    fn the_tick_is_set_only_when_it_changes() {
        let mut t = Tick::default();
        let fast = Duration::from_millis(2);
        let idle = Duration::from_millis(100);
        assert_eq!(t.change(idle), Some(idle));
        assert_eq!(t.change(fast), Some(fast));
        // A stream of held requests each wanting the fast tick: Envoy is not re-armed.
        for _ in 0..1_000 {
            assert_eq!(t.change(fast), None);
        }
        assert_eq!(t.change(idle), Some(idle));
    }

    #[test]
    fn only_the_controllers_204_delivers_a_report() {
        assert!(report_delivered(Some(204)));
        for lost in [None, Some(200), Some(503), Some(504), Some(400)] {
            assert!(!report_delivered(lost), "{lost:?}");
        }
    }
}
