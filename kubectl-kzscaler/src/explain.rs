//! `explain NAME`: why a Deployment is in its state, in sentences (pure: no I/O here).

use k8s_openapi::jiff::Timestamp;
use kzscaler_core::names;

use crate::age;
use crate::view::{Row, age_of};

/// One Event about the Deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLine {
    /// When (RFC 3339), if known.
    pub at: Option<String>,
    /// Normal or Warning.
    pub type_: String,
    /// The reason (Woke, Slept, StateCorrected, InvalidAnnotation, ...).
    pub reason: String,
    /// The message.
    pub note: String,
}

/// The explanation of `row`, with its latest `events` (oldest first).
pub fn explain(row: &Row, events: &[EventLine], now: Timestamp) -> String {
    let mut out = format!(
        "Deployment {}/{}: {} ({}/{} ready)\n",
        row.namespace, row.name, row.state, row.ready, row.desired
    );
    let wake_to = row.wake_replicas;
    let why = match row.state {
        "invalid" => format!(
            "kzscaler ignores it until its annotations are fixed: {}",
            row.error.as_deref().unwrap_or("unknown error")
        ),
        "asleep" => format!(
            "It sleeps: scaled to 0 {} ago. The first request from a pod with the filter wakes it to {wake_to} replica(s) and is held until it is ready (at most {}).",
            age_of(row.slept_at.as_deref(), now),
            row.wake_timeout
        ),
        "waking" => format!(
            "It is waking: {} replica(s) asked for, none ready yet. Held requests wait at most {}.",
            row.desired, row.wake_timeout
        ),
        "draining" => format!(
            "It is about to sleep: no request for {} (its idle timeout). Filters now ask the controller before each request; one request cancels the sleep.",
            row.idle_timeout
        ),
        _ if row.paused => format!(
            "It stays awake: paused ({}=\"true\"). `kubectl kzscaler resume {}` lets it sleep again.",
            names::PAUSED,
            row.name
        ),
        _ => format!(
            "It is awake and sleeps after {} without requests.",
            row.idle_timeout
        ),
    };
    out.push_str(&format!("  {why}\n"));
    out.push_str(&format!(
        "  Timeouts: idle {} ({}), wake {} ({}).\n",
        row.idle_timeout,
        names::IDLE_TIMEOUT,
        row.wake_timeout,
        names::WAKE_TIMEOUT
    ));
    match row.last_request.as_deref() {
        Some(at) => out.push_str(&format!(
            "  Last request: {} ago (recorded when it was last put to sleep).\n",
            age_of(Some(at), now)
        )),
        None => out.push_str(
            "  Last request: not recorded (kzscaler records it when it puts the Deployment to sleep).\n",
        ),
    }
    match &row.last_wake {
        Some(w) => out.push_str(&format!(
            "  Last wake: {} to {} replica(s) ({}).\n",
            age::millis(w.total_ms()),
            w.replicas,
            w.phases()
        )),
        None => out.push_str("  Last wake: <none>.\n"),
    }
    match &row.hpa {
        Some(h) => out.push_str(&format!(
            "  HPA {}: minReplicas {}, maxReplicas {}. It stands aside at 0 replicas; a wake scales to at least {}.\n",
            h.name, h.min, h.max, h.min
        )),
        None => out.push_str("  HPA: none.\n"),
    }
    out.push_str(&format!(
        "  Services: {}.\n",
        if row.services.is_empty() {
            "none (nothing can route to it, so nothing wakes it)".to_owned()
        } else {
            row.services.join(", ")
        }
    ));
    for w in &row.warnings {
        out.push_str(&format!("  Warning: {w}.\n"));
    }
    if events.is_empty() {
        out.push_str("  Events: none.\n");
    } else {
        out.push_str("  Events (latest last):\n");
        let width = events.iter().map(|e| e.reason.len()).max().unwrap_or(0);
        for e in events {
            out.push_str(&format!(
                "    {:<7} {:<8} {:<width$} {}\n",
                age_of(e.at.as_deref(), now),
                e.type_,
                e.reason,
                e.note
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{Hpa, Row};

    fn row(state: &'static str) -> Row {
        Row {
            namespace: "shop".into(),
            name: "web".into(),
            state,
            ready: 0,
            desired: 0,
            idle_timeout: "10m".into(),
            wake_timeout: "1m".into(),
            paused: false,
            last_request: Some("2026-11-28T11:40:00Z".into()),
            slept_at: Some("2026-11-28T11:55:00Z".into()),
            replicas_before_sleep: Some("2".into()),
            wake_replicas: 3,
            last_wake: None,
            services: vec!["web".into()],
            hpa: Some(Hpa {
                name: "web".into(),
                min: 3,
                max: 5,
            }),
            error: None,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn an_asleep_deployment_says_when_it_slept_and_what_wakes_it() {
        let now: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
        let events = [EventLine {
            at: Some("2026-11-28T11:55:00Z".into()),
            type_: "Normal".into(),
            reason: "Slept".into(),
            note: "no activity for 600.0s".into(),
        }];
        let text = explain(&row("asleep"), &events, now);
        assert!(
            text.starts_with("Deployment shop/web: asleep (0/0 ready)\n"),
            "{text}"
        );
        assert!(text.contains("scaled to 0 5m ago"), "{text}");
        assert!(
            text.contains("wakes it to 3 replica(s)"),
            "the HPA minimum wins: {text}"
        );
        assert!(
            text.contains("HPA web: minReplicas 3, maxReplicas 5"),
            "{text}"
        );
        assert!(text.contains("Last request: 20m ago"), "{text}");
        assert!(text.contains("5m      Normal   Slept"), "{text}");
    }

    #[test]
    fn an_invalid_deployment_says_why_it_is_ignored() {
        let mut r = row("invalid");
        r.error = Some("annotation kzscaler.io/idle-timeout: \"soon\" is not valid".into());
        let text = explain(&r, &[], Timestamp::UNIX_EPOCH);
        assert!(text.contains("kzscaler ignores it until its annotations are fixed: annotation kzscaler.io/idle-timeout"), "{text}");
    }
}
