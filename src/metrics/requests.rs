//! The three metrics of a kind of request, as FUSE requests and store
//! calls both have them: a count and a latency histogram by one set of
//! labels, and errors by another.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// What each of the three metrics is said to count, for their HELP lines.
pub(super) struct Help {
    pub requests: &'static str,
    pub duration: &'static str,
    pub errors: &'static str,
}

/// `<kind>_requests_total`, `<kind>_request_duration_seconds` and
/// `<kind>_errors_total`.
pub(super) struct RequestMetrics<L, E> {
    requests: Family<L, Counter>,
    duration: Family<L, Histogram, fn() -> Histogram>,
    errors: Family<E, Counter>,
}

impl<L, E> RequestMetrics<L, E>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
    E: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    /// Registers the three under `kind`, with histograms from `buckets`.
    pub(super) fn register(
        registry: &mut Registry,
        kind: &str,
        help: Help,
        buckets: fn() -> Histogram,
    ) -> Self {
        let metrics = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(buckets),
            errors: Family::default(),
        };
        registry.register(
            format!("{kind}_requests"),
            help.requests,
            metrics.requests.clone(),
        );
        registry.register_with_unit(
            format!("{kind}_request_duration"),
            help.duration,
            Unit::Seconds,
            metrics.duration.clone(),
        );
        registry.register(
            format!("{kind}_errors"),
            help.errors,
            metrics.errors.clone(),
        );
        metrics
    }

    /// One request that took `took`.
    pub(super) fn observe(&self, labels: &L, took: Duration) {
        self.requests.get_or_create(labels).inc();
        self.duration
            .get_or_create(labels)
            .observe(took.as_secs_f64());
    }

    /// One error.
    pub(super) fn error(&self, labels: &E) {
        self.errors.get_or_create(labels).inc();
    }
}
