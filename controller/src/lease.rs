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
            set(&tx, true, s.identity.clone(), &s);
        } else if tx.borrow().leader {
            last_renew = None;
            set(&tx, false, String::new(), &s);
        }
    }
    if tx.borrow().leader {
        set(&tx, false, String::new(), &s);
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
        *l = Leadership { leader, holder };
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
