//! The controller's one error type: what a write to the API server can end in.

use crate::cache::Key;

/// What went wrong, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed the call.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done, e.g. `waking shop/web to 1 replicas`.
        what: String,
        /// The API server's answer.
        #[source]
        source: Box<kube::Error>,
    },
    /// A sleep refused by its resourceVersion precondition: the Deployment changed since it
    /// was found idle (decided again from what the watch brings).
    #[error("{key} changed since it was found idle; not put to sleep")]
    StaleSleep {
        /// The Deployment.
        key: Key,
    },
    /// A wake's compare-and-swap of the scale lost on every attempt.
    #[error("waking {key}: the Deployment changed on every attempt; the next activate tries again")]
    Contended {
        /// The Deployment.
        key: Key,
    },
    /// Not sent: this replica does not lead (any more).
    #[error("{what}: not sent: this replica does not lead (any more)")]
    NotLeading {
        /// What would have been written.
        what: String,
    },
    /// Sent, and given up on before the API server answered.
    #[error("{what}: abandoned: {why}")]
    Abandoned {
        /// What was being written.
        what: String,
        /// Why: the term ended, no answer in time, or the replica stopped leading.
        why: &'static str,
    },
}

impl Error {
    /// The API server's error, for `what`.
    pub fn kube(what: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            what: what.into(),
            source: Box::new(source),
        }
    }

    /// A short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "kube",
            Self::StaleSleep { .. } => "stale",
            Self::Contended { .. } => "contended",
            Self::NotLeading { .. } => "not_leading",
            Self::Abandoned { .. } => "abandoned",
        }
    }

    /// Whether the API server refused the write because the object changed since the
    /// version it was made on (409).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Kube { source, .. } if matches!(source.as_ref(), kube::Error::Api(s) if s.code == 409))
    }
}

/// The controller's `Result`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_says_what_was_being_done_and_has_a_label() {
        let key = Key {
            namespace: "shop".into(),
            name: "web".into(),
        };
        let conflict = Error::kube(
            "putting shop/web to sleep",
            kube::Error::Api(Box::new(kube::core::Status {
                code: 409,
                message: "the object has been modified".into(),
                ..Default::default()
            })),
        );
        assert!(conflict.is_conflict());
        assert_eq!(conflict.metric_label(), "kube");
        assert!(
            conflict
                .to_string()
                .starts_with("putting shop/web to sleep: ")
        );
        let stale = Error::StaleSleep { key: key.clone() };
        assert!(!stale.is_conflict());
        assert_eq!(
            (stale.metric_label(), stale.to_string().as_str()),
            (
                "stale",
                "shop/web changed since it was found idle; not put to sleep"
            )
        );
        assert_eq!(Error::Contended { key }.metric_label(), "contended");
    }
}
