//! The consumer pipeline: Kafka records in, handler outcomes out. [`consumer`] polls Kafka and
//! owns rebalances and partition queues; [`partition`] runs one task per assigned partition;
//! [`deliver`] sends to the retry, dead-letter and events topics; [`headers`] defines their headers.

pub mod consumer;
pub mod deliver;
pub mod headers;
pub mod partition;

use crate::events::EventHub;
use crate::handlers::Registry;
use crate::metrics::Metrics;
use crate::producer_api::ProducerClient;
use consumer::HostContext;
use rdkafka::consumer::BaseConsumer;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// What `/readyz` reads.
#[derive(Debug, Default)]
pub struct Health {
    /// The consumer joined its group (received an assignment).
    pub joined: AtomicBool,
    /// librdkafka reported every broker down and none has answered since.
    pub brokers_down: AtomicBool,
}

/// What the consumer thread and the partition tasks share.
pub struct Shared {
    pub(crate) registry: Arc<Registry>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) events: EventHub,
    pub(crate) producer_client: ProducerClient,
    pub(crate) deliverer: deliver::Deliverer,
    pub(crate) consumer: OnceLock<Weak<BaseConsumer<HostContext>>>,
    /// Per partition, the next offset to commit: one past the last record whose outcome is
    /// final (-1 before the first). Each partition task writes its own; explicit commits
    /// (revoke, shutdown) commit exactly these, never the fetch position.
    pub(crate) stored: std::sync::Mutex<std::collections::HashMap<(String, i32), Arc<std::sync::atomic::AtomicI64>>>,
    pub(crate) health: Arc<Health>,
    pub(crate) drain_timeout: Duration,
    pub(crate) events_topic: Option<String>,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl Shared {
    /// The slot a partition task records its next offset to commit in (registered on first use).
    pub(crate) fn offset_slot(&self, topic: &str, partition: i32) -> Arc<std::sync::atomic::AtomicI64> {
        self.stored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((topic.to_string(), partition))
            .or_insert_with(|| Arc::new(std::sync::atomic::AtomicI64::new(-1)))
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
        let shared = Arc::new(Shared {
            deliverer: deliver::Deliverer::new(&deps.kafka)?,
            registry: deps.registry.clone(),
            metrics: deps.metrics,
            events: deps.events,
            producer_client: deps.producer_client,
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

    /// Stops fetching, lets records in hand finish (bounded), commits, leaves the group.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let thread = self.thread;
        if tokio::task::spawn_blocking(move || thread.join()).await.is_err() {
            tracing::error!("the consumer thread panicked");
        }
    }
}
