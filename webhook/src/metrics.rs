//! Prometheus metrics, served on `/metrics`:
//! `kzscaler_webhook_admissions_total{review="mutate|validate", result="admitted|mutated|denied|error"}`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::admission::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    review: &'static str,
    result: &'static str,
}

/// The webhook's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    admissions: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kzscaler_webhook");
        let admissions = Family::<Labels, Counter>::default();
        registry.register(
            "admissions",
            "Admission reviews answered, by review (mutate, validate) and result (admitted, mutated, denied, error)",
            admissions.clone(),
        );
        Self {
            registry,
            admissions,
        }
    }
}

impl Metrics {
    /// Counts one answered review.
    pub fn count(&self, review: &'static str, outcome: Outcome) {
        self.admissions
            .get_or_create(&Labels {
                review,
                result: outcome.label(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
