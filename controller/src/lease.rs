//! Leader election with a `coordination.k8s.io/v1` Lease, so two controller replicas can run
//! and only one acts (scales, sleeps, writes WasmPlugins and Events).
//!
//! ```text
//!  every retry period:  GET Lease ──▶ Tracker::decide ──Acquire/Renew──▶ create or replace
//!                                          │                  (guarded by resourceVersion)
//!                                          └──Follow──▶ not leader
//!  leader ──no successful renew for the renew deadline──▶ steps down (stops acting)
//!  SIGTERM as leader ──▶ release (holder cleared): the other replica takes over at once
//! ```
//!
//! Expiry is judged on this process's own clock, from when it first saw the current record
//! (as client-go does), so clock skew between machines does not matter.

use crate::error::Error;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;

/// What a replica does about the Lease now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Take it: nobody holds it, or the holder's record has not changed for a whole lease
    /// duration.
    Acquire,
    /// Renew it: this replica holds it.
    Renew,
    /// Another replica holds it.
    Follow {
        /// The holder.
        holder: String,
    },
}

/// The part of a Lease the decision reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `spec.holderIdentity` (empty: released).
    pub holder: String,
    /// `spec.renewTime`, as written (only compared, never parsed).
    pub renewed: String,
    /// `spec.leaseDurationSeconds`, in ms.
    pub duration_ms: u64,
}

impl Record {
    fn from_lease(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .unwrap_or_default(),
            renewed: spec
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
            duration_ms: spec
                .and_then(|s| s.lease_duration_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(0)
                * 1000,
        }
    }
}

/// Remembers when the current record was first seen here.
#[derive(Debug, Default)]
pub struct Tracker {
    seen: Option<(Record, u64)>,
}

impl Tracker {
    /// The decision for the record read now (`None`: no Lease yet).
    pub fn decide(&mut self, me: &str, record: Option<Record>, now_ms: u64) -> Decision {
        let Some(record) = record else {
            self.seen = None;
            return Decision::Acquire;
        };
        if record.holder == me {
            return Decision::Renew;
        }
        if record.holder.is_empty() {
            return Decision::Acquire;
        }
        let since = match &self.seen {
            Some((r, at)) if *r == record => *at,
            _ => {
                self.seen = Some((record.clone(), now_ms));
                now_ms
            }
        };
        if now_ms.saturating_sub(since) >= record.duration_ms {
            Decision::Acquire
        } else {
            Decision::Follow {
                holder: record.holder,
            }
        }
    }
}

/// How to elect.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (the pod name in a cluster).
    pub identity: String,
    /// `leaseDurationSeconds`: how long a holder that stopped renewing keeps the Lease.
    pub duration: Duration,
}

impl Settings {
    /// How often the Lease is read and renewed.
    pub fn retry_period(&self) -> Duration {
        (self.duration / 5).max(Duration::from_millis(200))
    }

    /// A leader that could not renew for this long stops acting (before the others may take
    /// over at one lease duration).
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }
}

/// Who leads, as this replica knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Leadership {
    /// This replica leads.
    pub leader: bool,
    /// The holder last seen (this replica's identity when it leads).
    pub holder: String,
    /// When this replica's term ends unless renewed (monotonic): the last successful renew
    /// plus the renew deadline. None: no election, the term never ends.
    pub until: Option<tokio::time::Instant>,
}

impl Leadership {
    /// What is left of this replica's term, read on the monotonic clock now: None when it
    /// does not lead, or its term has run out although no task has noticed yet (a process
    /// resumed after a pause acts on nothing).
    pub fn term_left(&self) -> Option<Duration> {
        if !self.leader {
            return None;
        }
        match self.until {
            None => Some(Duration::MAX),
            Some(until) => until
                .checked_duration_since(tokio::time::Instant::now())
                .filter(|d| !d.is_zero()),
        }
    }
}

/// The longest any one write to the API server may take, term or not.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Every write this replica makes as leader goes through here: it is sent only inside the
/// term and abandoned when the term ends, and shutdown waits for the writes in flight before
/// the Lease is released. (A write already sent when its term ends is fenced by the API
/// server: writes that change replicas carry a resourceVersion precondition.)
#[derive(Debug)]
pub struct Fence {
    leadership: watch::Receiver<Leadership>,
    inflight: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Decrements the count of writes in flight when a write ends, however it ends.
struct InFlight<'a>(&'a Fence);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self
            .0
            .inflight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

impl Fence {
    /// A fence following `leadership`.
    pub fn new(leadership: watch::Receiver<Leadership>) -> Self {
        Self {
            leadership,
            inflight: std::sync::atomic::AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
        }
    }

    /// Runs the write `what` if this replica leads, for at most what is left of its term.
    pub async fn write<T>(
        &self,
        what: &str,
        write: impl std::future::Future<Output = crate::Result<T>>,
    ) -> crate::Result<T> {
        // Counted before the term is checked: a shutdown that stops leading and then waits
        // for the writes in flight cannot miss this one.
        self.inflight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let _inflight = InFlight(self);
        let left = self
            .leadership
            .borrow()
            .term_left()
            .ok_or_else(|| Error::NotLeading {
                what: what.to_owned(),
            })?;
        let mut leadership = self.leadership.clone();
        let stepped_down = async move {
            // Err: no more changes will come; the term and the timeout still bound the write.
            if leadership.wait_for(|l| !l.leader).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = tokio::time::timeout(left.min(WRITE_TIMEOUT), write) => match r {
                Ok(r) => r,
                Err(_) if left < WRITE_TIMEOUT => Err(Error::Abandoned {
                    what: what.to_owned(),
                    why: "the leadership term ended before the API server answered",
                }),
                Err(_) => Err(Error::Abandoned {
                    what: what.to_owned(),
                    why: "no answer from the API server within 10s",
                }),
            },
            () = stepped_down => Err(Error::Abandoned {
                what: what.to_owned(),
                why: "this replica stopped leading",
            }),
        }
    }

    /// Waits until no write is in flight, for at most `max`.
    pub async fn drained(&self, max: Duration) {
        let _ = tokio::time::timeout(max, async {
            loop {
                let idle = self.idle.notified();
                if self.inflight.load(std::sync::atomic::Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        })
        .await;
    }
}

fn lease_object(s: &Settings, transitions: i32, acquire: Option<MicroTime>) -> Lease {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    Lease {
        metadata: ObjectMeta {
            name: Some(s.name.clone()),
            namespace: Some(s.namespace.clone()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(s.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(s.duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }),
    }
}

/// Runs the election until `stop` turns true, then releases the Lease if held.
pub async fn run(
    client: Client,
    s: Settings,
    tx: watch::Sender<Leadership>,
    fence: std::sync::Arc<Fence>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &s.namespace);
    let mut tracker = Tracker::default();
    let mut last_renew: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(s.retry_period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let started = tokio::time::Instant::now();
        // A stalled API server must not keep a leader acting past its renew deadline (the
        // others take over at one lease duration): the attempt gets only what is left of it.
        let budget = last_renew
            .map_or(s.renew_deadline(), |t| {
                s.renew_deadline().saturating_sub(t.elapsed())
            })
            .max(Duration::from_millis(100));
        let held = match tokio::time::timeout(budget, attempt(&api, &s, &mut tracker)).await {
            Ok(Ok(Ok(()))) => {
                last_renew = Some(started);
                true
            }
            Ok(Ok(Err(holder))) => {
                last_renew = None;
                set(&tx, false, holder, &s);
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!(lease = %format!("{}/{}", s.namespace, s.name), error = %e, "lease: read or write failed");
                // Still leader while the last renew is within the renew deadline.
                last_renew.is_some_and(|t| t.elapsed() < s.renew_deadline())
            }
            Err(_) => {
                tracing::warn!(lease = %format!("{}/{}", s.namespace, s.name), waited_ms = budget.as_millis(), "lease: the API server did not answer in time");
                last_renew.is_some_and(|t| t.elapsed() < s.renew_deadline())
            }
        };
        if held {
            let until = last_renew.map(|t| t + s.renew_deadline());
            set(&tx, true, s.identity.clone(), &s);
            tx.send_if_modified(|l| {
                let changed = l.until != until;
                l.until = until;
                changed
            });
        } else if tx.borrow().leader {
            last_renew = None;
            set(&tx, false, String::new(), &s);
        }
    }
    if tx.borrow().leader {
        // Stop acting first, let the writes in flight end, and only then let another
        // replica take over: nothing this one sent can land after the other's.
        set(&tx, false, String::new(), &s);
        fence.drained(WRITE_TIMEOUT).await;
        release(&api, &s).await;
    }
}

fn set(tx: &watch::Sender<Leadership>, leader: bool, holder: String, s: &Settings) {
    tx.send_if_modified(|l| {
        if l.leader == leader && l.holder == holder {
            return false;
        }
        if leader && !l.leader {
            tracing::info!(identity = %s.identity, lease = %format!("{}/{}", s.namespace, s.name), "lease acquired: leading");
        } else if !leader && l.leader {
            tracing::warn!(identity = %s.identity, "lease lost: no longer leading");
        } else if !leader {
            tracing::info!(identity = %s.identity, leader = %holder, "following");
        }
        *l = Leadership {
            leader,
            holder,
            until: l.until.filter(|_| leader),
        };
        true
    });
}

/// One round: `Ok(Ok(()))` when this replica holds the Lease afterwards, `Ok(Err(holder))`
/// when another does.
async fn attempt(
    api: &Api<Lease>,
    s: &Settings,
    tracker: &mut Tracker,
) -> Result<Result<(), String>, kube::Error> {
    let current = api.get_opt(&s.name).await?;
    let now = crate::clock::mono_ms();
    let record = current.as_ref().map(Record::from_lease);
    match (tracker.decide(&s.identity, record, now), current) {
        (Decision::Follow { holder }, _) => Ok(Err(holder)),
        (_, None) => match api
            .create(&PostParams::default(), &lease_object(s, 0, None))
            .await
        {
            Ok(_) => Ok(Ok(())),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Err(String::new())),
            Err(e) => Err(e),
        },
        (decision, Some(lease)) => {
            let spec = lease.spec.clone().unwrap_or_default();
            let (transitions, acquired) = if decision == Decision::Renew {
                (spec.lease_transitions.unwrap_or(0), spec.acquire_time)
            } else {
                (spec.lease_transitions.unwrap_or(0).saturating_add(1), None)
            };
            let mut next = lease_object(s, transitions, acquired);
            // The resourceVersion makes this a compare-and-swap: of two replicas taking over
            // at once, one gets a 409.
            next.metadata = lease.metadata;
            match api.replace(&s.name, &PostParams::default(), &next).await {
                Ok(_) => Ok(Ok(())),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Err(String::new())),
                Err(e) => Err(e),
            }
        }
    }
}

/// Clears the holder so another replica takes over without waiting for expiry.
async fn release(api: &Api<Lease>, s: &Settings) {
    let Ok(Some(mut lease)) = api.get_opt(&s.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(s.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    match api.replace(&s.name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(identity = %s.identity, "lease released"),
        Err(e) => {
            tracing::warn!(error = %e, "could not release the lease; the other replica takes over when it expires")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str, renewed: &str) -> Option<Record> {
        Some(Record {
            holder: holder.into(),
            renewed: renewed.into(),
            duration_ms: 15_000,
        })
    }

    #[test]
    fn no_lease_or_a_released_one_is_acquired() {
        let mut t = Tracker::default();
        assert_eq!(t.decide("a", None, 0), Decision::Acquire);
        assert_eq!(t.decide("a", held_by("", "t1"), 0), Decision::Acquire);
    }

    #[test]
    fn the_holder_renews() {
        let mut t = Tracker::default();
        assert_eq!(t.decide("a", held_by("a", "t1"), 0), Decision::Renew);
    }

    #[test]
    fn a_renewing_holder_is_followed_however_long_it_leads() {
        let mut t = Tracker::default();
        for (i, now) in [0u64, 10_000, 20_000, 30_000].into_iter().enumerate() {
            let d = t.decide("b", held_by("a", &format!("t{i}")), now);
            assert_eq!(d, Decision::Follow { holder: "a".into() }, "at {now}");
        }
    }

    #[test]
    fn a_holder_that_stopped_renewing_is_replaced_after_one_lease_duration_seen_here() {
        let mut t = Tracker::default();
        // The renew time is far in the past by any clock: only local observation counts.
        assert!(matches!(
            t.decide("b", held_by("a", "1970"), 1_000_000),
            Decision::Follow { .. }
        ));
        assert!(matches!(
            t.decide("b", held_by("a", "1970"), 1_014_999),
            Decision::Follow { .. }
        ));
        assert_eq!(
            t.decide("b", held_by("a", "1970"), 1_015_000),
            Decision::Acquire
        );
    }

    fn leading_until(until: Option<tokio::time::Instant>) -> watch::Receiver<Leadership> {
        watch::channel(Leadership {
            leader: true,
            holder: "a".into(),
            until,
        })
        .1
    }

    #[tokio::test]
    async fn a_write_after_the_term_ran_out_is_not_sent() {
        // A leader paused (SIGSTOP) past its renew deadline resumes with its Leadership still
        // saying leader: the term, read on the monotonic clock, has ended all the same.
        let ended = tokio::time::Instant::now() - Duration::from_millis(1);
        let fence = Fence::new(leading_until(Some(ended)));
        let sent = std::sync::atomic::AtomicBool::new(false);
        let r = fence
            .write("scale shop/web to 0", async {
                sent.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            })
            .await;
        assert!(r.unwrap_err().to_string().contains("does not lead"));
        assert!(!sent.load(std::sync::atomic::Ordering::SeqCst));
        let follower = Fence::new(watch::channel(Leadership::default()).1);
        assert!(follower.write("x", async { Ok(()) }).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_is_abandoned_when_the_term_ends() {
        let until = tokio::time::Instant::now() + Duration::from_millis(500);
        let fence = Fence::new(leading_until(Some(until)));
        let r: crate::Result<()> = fence.write("scale", std::future::pending()).await;
        assert!(
            r.unwrap_err().to_string().contains("term ended"),
            "abandoned at the end of the term"
        );
        let unbounded = Fence::new(leading_until(None));
        let r: crate::Result<()> = unbounded.write("scale", std::future::pending()).await;
        assert!(
            r.unwrap_err().to_string().contains("within"),
            "no write waits forever"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_in_flight_is_abandoned_when_the_replica_stops_leading() {
        let (tx, rx) = watch::channel(Leadership {
            leader: true,
            holder: "a".into(),
            until: None,
        });
        let fence = std::sync::Arc::new(Fence::new(rx));
        let f = fence.clone();
        let write = tokio::spawn(async move {
            f.write("scale", std::future::pending::<crate::Result<()>>())
                .await
        });
        tokio::task::yield_now().await;
        tx.send_modify(|l| l.leader = false);
        let r = write.await.unwrap();
        assert!(r.unwrap_err().to_string().contains("stopped leading"));
        fence.drained(Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_the_writes_in_flight() {
        let fence = std::sync::Arc::new(Fence::new(leading_until(None)));
        let f = fence.clone();
        let write = tokio::spawn(async move {
            f.write("slow", async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(())
            })
            .await
        });
        tokio::task::yield_now().await;
        let t = tokio::time::Instant::now();
        fence.drained(Duration::from_secs(3)).await;
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert!(write.await.unwrap().is_ok());
    }

    #[test]
    fn retry_period_and_renew_deadline_fit_inside_the_lease_duration() {
        let s = Settings {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "a".into(),
            duration: Duration::from_secs(15),
        };
        assert_eq!(s.retry_period(), Duration::from_secs(3));
        assert_eq!(s.renew_deadline(), Duration::from_secs(10));
        assert!(s.renew_deadline() < s.duration);
    }
}
