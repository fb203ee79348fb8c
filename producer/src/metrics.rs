//! The producer's Prometheus metrics: requests by route and status, publish latency and errors
//! by topic, idempotent replays. Served at `GET /producer-svc/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of an HTTP request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched route, or `unmatched`.
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// HTTP status code.
    pub status: u16,
}

/// Labels of a publish.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    /// Topic.
    pub topic: String,
}

/// Labels of a publish error.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Topic.
    pub topic: String,
    /// `timeout` or `kafka`.
    pub reason: String,
}

/// Every metric the producer exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from publish to broker acknowledgement.
    pub publish_seconds: Family<TopicLabels, Histogram, fn() -> Histogram>,
    /// Failed publishes.
    pub publish_errors: Family<ErrorLabels, Counter>,
    /// Requests answered from the idempotency store.
    pub idempotent_replays: Counter,
}

fn latency_histogram() -> Histogram {
    Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("producer");
        let requests = Family::<RequestLabels, Counter>::default();
        let publish_seconds: Family<TopicLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let publish_errors = Family::<ErrorLabels, Counter>::default();
        let idempotent_replays = Counter::default();
        registry.register("http_requests", "HTTP requests by route, method and status", requests.clone());
        registry.register(
            "publish_duration_seconds",
            "Time from publish to broker acknowledgement",
            publish_seconds.clone(),
        );
        registry.register("publish_errors", "Records that could not be published", publish_errors.clone());
        registry.register(
            "idempotent_replays",
            "Requests answered from the idempotency store",
            idempotent_replays.clone(),
        );
        Self { registry, requests, publish_seconds, publish_errors, idempotent_replays }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        common::telemetry::render_metrics(&self.registry)
    }
}
