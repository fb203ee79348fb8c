//! The consumer pipeline: Kafka records in, handler outcomes out. [`consumer`] polls Kafka and
//! owns rebalances and partition queues; [`partition`] runs one task per assigned partition,
//! which decides with [`lanes`] which of its records run side by side; [`flow`] takes one record
//! to a final outcome (attempt, [`decide`], apply); [`deliver`] sends to the retry, dead-letter
//! and events topics; [`headers`] defines their headers; [`stop`] is the one signal all of a
//! partition's work obeys.

pub mod consumer;
pub mod decide;
pub mod deliver;
mod flow;
pub mod headers;
pub mod lanes;
pub mod partition;
pub mod stop;

use crate::events::EventHub;
use crate::handlers::Registry;
use crate::metrics::Metrics;
use crate::producer_api::ProducerClient;
use crate::runtime::Instances;
use consumer::HostContext;
use rdkafka::consumer::BaseConsumer;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// What `/readyz` and `/handlers` read.
#[derive(Debug, Default)]
pub struct Health {
    /// The consumer joined its group (received an assignment).
    pub joined: AtomicBool,
    /// librdkafka reported every broker down and none has answered since.
    pub brokers_down: AtomicBool,
    /// Partitions whose next step keeps failing, by topic and partition.
    stalls: std::sync::Mutex<std::collections::BTreeMap<(String, i32), Stall>>,
}

/// A partition that cannot move on: a record's copy (to the retry, dead-letter or events topic)
/// keeps failing to be written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stall {
    /// The Kafka topic (a `.retry` topic included).
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// When it started failing (RFC 3339).
    pub since: String,
    /// Seconds it has been failing.
    pub seconds: u64,
    /// The last failure.
    pub reason: String,
    #[serde(skip)]
    started: std::time::Instant,
    /// The reporter that owns it (a partition revoked and assigned again gets a new one).
    #[serde(skip)]
    owner: u64,
}

/// How long a partition may fail to move on before `/readyz` reports it (shorter failures are
/// the ordinary blips of a cluster: a leader moving, a broker restarting).
pub const STALL_REPORTED_AFTER: Duration = Duration::from_secs(30);

impl Health {
    fn stalls(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<(String, i32), Stall>> {
        self.stalls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every partition stalled right now, with how long it has been.
    pub fn stalled(&self) -> Vec<Stall> {
        self.stalls().values().map(|s| Stall { seconds: s.started.elapsed().as_secs(), ..s.clone() }).collect()
    }
}

/// One partition's side of [`Health`]: the partition task reports through it when it cannot
/// move on and when it can again (without a lock while nothing fails).
#[derive(Debug)]
pub struct PartitionHealth {
    health: Arc<Health>,
    topic: String,
    partition: i32,
    stalled: AtomicBool,
    /// Unique per reporter: a task that ends after its partition's next task started must not
    /// clear the newer one's report.
    id: u64,
}

impl PartitionHealth {
    /// The reporter of `topic`/`partition`.
    pub fn new(health: Arc<Health>, topic: &str, partition: i32) -> Self {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        Self { health, topic: topic.to_string(), partition, stalled: AtomicBool::new(false), id }
    }

    /// The partition's next step failed for `reason`: it is stalled from now (or since it first
    /// failed, if it still is).
    pub fn failing(&self, reason: &str) {
        self.stalled.store(true, Ordering::Relaxed);
        let mut stalls = self.health.stalls();
        let stall = stalls.entry((self.topic.clone(), self.partition)).or_insert_with(|| Stall {
            topic: self.topic.clone(),
            partition: self.partition,
            since: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            seconds: 0,
            reason: String::new(),
            started: std::time::Instant::now(),
            owner: self.id,
        });
        stall.owner = self.id;
        stall.reason.clear();
        stall.reason.push_str(reason);
    }

    /// The partition moves on again.
    pub fn recovered(&self) {
        if self.stalled.swap(false, Ordering::Relaxed) {
            let mut stalls = self.health.stalls();
            let key = (self.topic.clone(), self.partition);
            if stalls.get(&key).is_some_and(|s| s.owner == self.id) {
                stalls.remove(&key);
            }
        }
    }
}

impl Drop for PartitionHealth {
    fn drop(&mut self) {
        // A partition given up (revoked, stopped) is no longer this host's to report.
        self.recovered();
    }
}

/// What the consumer thread and the partition tasks share.
pub struct Shared {
    pub(crate) registry: Arc<Registry>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) events: EventHub,
    /// The workers every partition's records run on, within `MAX_INSTANCES`.
    pub(crate) instances: Arc<Instances>,
    pub(crate) deliverer: deliver::Deliverer,
    pub(crate) consumer: OnceLock<Weak<BaseConsumer<HostContext>>>,
    /// Per partition, how far its task got. Each partition task writes its own; explicit
    /// commits (revoke, shutdown) commit exactly its `stored` offsets, never the fetch position,
    /// and the lag metric is counted from them.
    pub(crate) stored: std::sync::Mutex<std::collections::HashMap<(String, i32), Arc<Progress>>>,
    pub(crate) health: Arc<Health>,
    pub(crate) drain_timeout: Duration,
    pub(crate) events_topic: Option<String>,
    pub(crate) runtime: tokio::runtime::Handle,
}

/// How far a partition's task got.
#[derive(Debug)]
pub(crate) struct Progress {
    /// The next offset to commit: one past the last record whose outcome is final (-1 before
    /// the first).
    pub stored: AtomicI64,
    /// The offset of the first record the task took (-1 before it took one): where the
    /// partition stands while no outcome is final yet.
    pub first_taken: AtomicI64,
}

impl Progress {
    /// Where the partition stands: the first offset whose outcome is not final, as far as the
    /// task knows (`None` before it took a record).
    pub fn position(&self) -> Option<i64> {
        let stored = self.stored.load(Ordering::Acquire);
        let first = self.first_taken.load(Ordering::Acquire);
        [stored, first].into_iter().find(|o| *o >= 0)
    }
}

impl Shared {
    /// The progress a partition task records its offsets in (registered on first use).
    pub(crate) fn progress(&self, topic: &str, partition: i32) -> Arc<Progress> {
        self.stored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((topic.to_string(), partition))
            .or_insert_with(|| Arc::new(Progress { stored: AtomicI64::new(-1), first_taken: AtomicI64::new(-1) }))
            .clone()
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("health", &self.health).finish_non_exhaustive()
    }
}

/// Everything the pipeline needs from the rest of the host.
#[derive(Debug, Clone)]
pub struct PipelineDeps {
    /// Kafka settings.
    pub kafka: common::kafka::KafkaSettings,
    /// Consumer group.
    pub group_id: String,
    /// The handler set.
    pub registry: Arc<Registry>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Event stream.
    pub events: EventHub,
    /// Producer-API client given to handlers.
    pub producer_client: ProducerClient,
    /// Instances all partitions' records may hold at once.
    pub max_instances: usize,
    /// Readiness flags.
    pub health: Arc<Health>,
    /// Time allowed to finish records in hand at revoke and shutdown.
    pub drain_timeout: Duration,
    /// The topic that receives every published event before its record counts as done.
    pub events_topic: Option<String>,
}

/// A running pipeline.
#[derive(Debug)]
pub struct Pipeline {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the Kafka consumer: {0}")]
pub struct StartError(#[from] rdkafka::error::KafkaError);

impl Pipeline {
    /// Starts consuming the registry's topics. Must be called within a tokio runtime.
    pub fn start(deps: PipelineDeps) -> Result<Self, StartError> {
        deps.metrics.instances_max.set(deps.max_instances as i64);
        let instances = Instances::new(
            deps.max_instances,
            deps.producer_client,
            deps.metrics.instances_busy.clone(),
            deps.metrics.instances_idle.clone(),
            deps.metrics.instances_recycled.clone(),
        );
        let shared = Arc::new(Shared {
            deliverer: deliver::Deliverer::new(&deps.kafka)?,
            registry: deps.registry.clone(),
            metrics: deps.metrics,
            events: deps.events,
            instances,
            consumer: OnceLock::new(),
            stored: std::sync::Mutex::default(),
            health: deps.health,
            drain_timeout: deps.drain_timeout,
            events_topic: deps.events_topic,
            runtime: tokio::runtime::Handle::current(),
        });
        let poll = consumer::PollLoop::new(shared, &deps.kafka, &deps.group_id)?;
        let (stop, stop_rx) = watch::channel(false);
        let topics = deps.registry.watch_topics();
        let thread = std::thread::Builder::new()
            .name("kafka-consumer".into())
            .spawn(move || poll.run(topics, stop_rx))
            .map_err(|e| StartError(rdkafka::error::KafkaError::ClientCreation(e.to_string())))?;
        Ok(Self { stop, thread })
    }

    /// Stops taking records, lets the records taken finish (bounded), commits, leaves the group.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let thread = self.thread;
        if tokio::task::spawn_blocking(move || thread.join()).await.is_err() {
            tracing::error!("the consumer thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_cleared_only_by_the_reporter_that_owns_it() {
        let health = Arc::new(Health::default());
        let old = PartitionHealth::new(health.clone(), "orders", 1);
        let new = PartitionHealth::new(health.clone(), "orders", 1);
        old.failing("cannot write to orders.dlq");
        new.failing("cannot write to orders.dlq: still");
        drop(old);
        assert_eq!(health.stalled().len(), 1, "the newer task's report stays after the older task ends");
        assert_eq!(health.stalled()[0].reason, "cannot write to orders.dlq: still");
        new.recovered();
        assert!(health.stalled().is_empty());
    }

    #[test]
    fn a_stall_keeps_when_it_started_while_its_reason_changes() {
        let health = Arc::new(Health::default());
        let partition = PartitionHealth::new(health.clone(), "orders", 0);
        partition.failing("first");
        let since = health.stalled()[0].since.clone();
        partition.failing("second");
        assert_eq!((health.stalled()[0].since.clone(), health.stalled()[0].reason.as_str()), (since, "second"));
    }
}
