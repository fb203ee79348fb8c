//! The host's Prometheus metrics, served at `GET /metrics`: records by topic and outcome, handler
//! duration, retries, dead-lettered records, reloads, consumer lag, in-flight records, the
//! instance budget, instances replaced and why, and how long records waited for their key.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Topic and outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The handler's topic.
    pub topic: String,
    /// `ok`, `retry`, `reject`, `trap`, `timeout`, `memory`.
    pub outcome: String,
}

/// A topic.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    /// The handler's topic.
    pub topic: String,
}

/// A topic and a kind of event.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The handler's topic.
    pub topic: String,
    /// What happened (`in_place`, `retry_topic`; `ok`, `rejected`; a dead-letter reason class).
    pub kind: String,
}

/// A partition.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// The Kafka topic (including `.retry` topics).
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

/// Why a worker dropped its instance after a call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `fault` (a trap or a time limit), `memory` (the instance reached its memory cap, or grew
    /// past half the room it had), `records` (`recycle_after_records`).
    pub reason: String,
}

/// Every metric the host exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Handler calls by outcome.
    pub records: Family<OutcomeLabels, Counter>,
    /// Handler call duration.
    pub handler_seconds: Family<TopicLabels, Histogram, fn() -> Histogram>,
    /// Retries by kind (`in_place`, `retry_topic`).
    pub retries: Family<KindLabels, Counter>,
    /// Records sent to `<topic>.dlq`, by why (`reject`, `exhausted`, `malformed`).
    pub dead_lettered: Family<KindLabels, Counter>,
    /// Handler loads by result (`ok`, `rejected`).
    pub reloads: Family<KindLabels, Counter>,
    /// Consumer lag per partition: the high watermark (from librdkafka's statistics) less the
    /// first record whose outcome is not final.
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    /// Batches (`handle-batch` calls of pure handlers; native benchmark handlers too) by topic and result (`handled`; `failed`: its records were then
    /// handled one by one).
    pub batches: Family<KindLabels, Counter>,
    /// Records handled in batches (that came back with a result), by topic.
    pub batched_records: Family<TopicLabels, Counter>,
    /// Records being handled right now (in a handler call).
    pub in_flight: Gauge,
    /// Records taken from a partition and not final (running, waiting for their key, or for
    /// their retry or dead-letter copy to be written).
    pub partition_in_flight: Family<PartitionLabels, Gauge>,
    /// How long records waited for the record before them with their key.
    pub key_wait_seconds: Family<TopicLabels, Histogram, fn() -> Histogram>,
    /// Workers (each with at most one instance) serving a record now.
    pub instances_busy: Gauge,
    /// Workers kept idle with their instance for the next record.
    pub instances_idle: Gauge,
    /// `MAX_INSTANCES`: the most workers all partitions may hold.
    pub instances_max: Gauge,
    /// Instances dropped after a call under the `reuse` policy, by reason.
    pub instances_recycled: Family<ReasonLabels, Counter>,
    /// Partitions assigned to this host.
    pub assigned_partitions: Gauge,
    /// Partitions that have not been able to move on for `STALL_REPORTED_AFTER` or longer.
    pub stalled_partitions: Gauge,
    /// Events dropped because no subscriber kept up, or log lines and events dropped at caps.
    pub dropped: Family<TopicLabels, Counter>,
}

fn duration_histogram() -> Histogram {
    Histogram::new([0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("host");
        let m = Self {
            registry: Registry::default(),
            records: Family::default(),
            handler_seconds: Family::new_with_constructor(duration_histogram),
            retries: Family::default(),
            dead_lettered: Family::default(),
            reloads: Family::default(),
            consumer_lag: Family::default(),
            batches: Family::default(),
            batched_records: Family::default(),
            in_flight: Gauge::default(),
            partition_in_flight: Family::default(),
            key_wait_seconds: Family::new_with_constructor(duration_histogram),
            instances_busy: Gauge::default(),
            instances_idle: Gauge::default(),
            instances_max: Gauge::default(),
            instances_recycled: Family::default(),
            assigned_partitions: Gauge::default(),
            stalled_partitions: Gauge::default(),
            dropped: Family::default(),
        };
        registry.register("records", "Handler calls by topic and outcome", m.records.clone());
        registry.register(
            "handler_duration_seconds",
            "Handler call duration, instantiation included",
            m.handler_seconds.clone(),
        );
        registry.register("retries", "Retries by topic and kind (in_place, retry_topic)", m.retries.clone());
        registry.register(
            "dead_lettered",
            "Records sent to the dead-letter topic, by topic and reason",
            m.dead_lettered.clone(),
        );
        registry.register("reloads", "Handler loads by topic and result (ok, rejected)", m.reloads.clone());
        registry.register("consumer_lag", "Records behind the high watermark, per partition", m.consumer_lag.clone());
        registry.register(
            "batches",
            "Batches (handle-batch calls) by topic and result (handled; failed: its records then went one by one)",
            m.batches.clone(),
        );
        registry.register("batched_records", "Records handled in batches", m.batched_records.clone());
        registry.register("in_flight", "Records in a handler call now", m.in_flight.clone());
        registry.register(
            "partition_in_flight",
            "Records taken from a partition and not final, per partition",
            m.partition_in_flight.clone(),
        );
        registry.register(
            "key_wait_seconds",
            "Time records waited for the record before them with their key",
            m.key_wait_seconds.clone(),
        );
        registry.register("instances_busy", "Workers serving a record now", m.instances_busy.clone());
        registry.register("instances_idle", "Workers kept idle with their instance", m.instances_idle.clone());
        registry.register(
            "instances_max",
            "MAX_INSTANCES: the most workers all partitions may hold",
            m.instances_max.clone(),
        );
        registry.register(
            "instances_recycled",
            "Instances dropped after a call, by reason (fault, memory, records)",
            m.instances_recycled.clone(),
        );
        registry.register("assigned_partitions", "Partitions assigned to this host", m.assigned_partitions.clone());
        registry.register(
            "stalled_partitions",
            "Partitions whose next record's copy (retry, dead letter, events) has failed to be written for 30 s or more",
            m.stalled_partitions.clone(),
        );
        registry.register("dropped", "Log lines and events dropped at caps or by slow subscribers", m.dropped.clone());
        Self { registry, ..m }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        common::telemetry::render_metrics(&self.registry)
    }
}
