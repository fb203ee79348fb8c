//! The Kafka side: one consumer polled by a dedicated thread, which follows the handler set's
//! topics and handles rebalances. Before partitions are assigned, each gets its own librdkafka
//! queue and a task that reads it (so records never pass through the main queue, and a slow
//! partition's backpressure is librdkafka's bounded prefetch); before partitions are revoked their
//! tasks finish the record in hand and the stored offsets are committed.

use super::Shared;
use super::partition::{self, PartitionWorker};
use crate::handlers::retry_topic;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Key = (String, i32);

/// The partition tasks.
#[derive(Debug, Default)]
pub(crate) struct Partitions {
    workers: HashMap<Key, PartitionWorker>,
}

/// The consumer's callbacks.
pub struct HostContext {
    shared: Arc<Shared>,
    kafka: common::kafka::KafkaContext,
    partitions: Mutex<Partitions>,
}

impl std::fmt::Debug for HostContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostContext").finish_non_exhaustive()
    }
}

impl HostContext {
    fn lock(&self) -> std::sync::MutexGuard<'_, Partitions> {
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the tasks of `keys` (all when `None`) after the record each has in hand, waiting up
    /// to the drain timeout; tasks still running then are aborted (their records are not stored,
    /// so they are redelivered).
    fn stop_workers(&self, keys: Option<&[Key]>) {
        let stopping: Vec<(Key, PartitionWorker)> = {
            let mut parts = self.lock();
            let keys: Vec<Key> = match keys {
                Some(keys) => keys.to_vec(),
                None => parts.workers.keys().cloned().collect(),
            };
            keys.iter().filter_map(|k| parts.workers.remove(k).map(|w| (k.clone(), w))).collect()
        };
        if stopping.is_empty() {
            return;
        }
        let handles: Vec<_> = stopping
            .into_iter()
            .map(|(key, w)| {
                let _ = w.stop.send(true);
                (key, w.join)
            })
            .collect();
        let deadline = self.shared.drain_timeout;
        self.shared.runtime.block_on(async {
            let started = Instant::now();
            for (key, handle) in handles {
                let left = deadline.saturating_sub(started.elapsed());
                let abort = handle.abort_handle();
                if tokio::time::timeout(left, handle).await.is_err() {
                    tracing::warn!(
                        topic = key.0,
                        partition = key.1,
                        "partition task did not finish within {deadline:?}: aborted"
                    );
                    abort.abort();
                }
            }
        });
        self.shared.metrics.assigned_partitions.set(self.lock().workers.len() as i64);
    }
}

impl ClientContext for HostContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        self.kafka.oauth_token()
    }

    fn stats(&self, statistics: Statistics) {
        let progress = self.shared.stored.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 {
                    continue;
                }
                let labels = crate::metrics::PartitionLabels { topic: topic.clone(), partition: *partition };
                let position = progress.get(&(topic.clone(), *partition)).map(|o| o.position());
                match (position, lag(position.flatten(), p)) {
                    (Some(_), Some(lag)) => {
                        self.shared.metrics.consumer_lag.get_or_create(&labels).set(lag);
                    }
                    // Not (or no longer) this host's partition.
                    (None, _) => {
                        self.shared.metrics.consumer_lag.remove(&labels);
                    }
                    (Some(_), None) => {}
                }
            }
        }
        let stalled =
            self.shared.health.stalled().iter().filter(|s| s.seconds >= super::STALL_REPORTED_AFTER.as_secs()).count();
        self.shared.metrics.stalled_partitions.set(stalled as i64);
        if statistics.brokers.values().any(|b| b.state == "UP") {
            self.shared.health.brokers_down.store(false, Ordering::Relaxed);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.shared.health.brokers_down.store(true, Ordering::Relaxed);
        }
        tracing::warn!("kafka: {error}: {reason}");
    }
}

impl ConsumerContext for HostContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // Each partition gets its own queue before librdkafka starts fetching it, so none of
            // its records ever reach the main queue, and a task per partition reads them in order.
            let Some(consumer) = self.shared.consumer.get().and_then(std::sync::Weak::upgrade) else { return };
            let mut parts = self.lock();
            for e in tpl.elements() {
                let key = (e.topic().to_string(), e.partition());
                if parts.workers.contains_key(&key) {
                    continue;
                }
                match consumer.split_partition_queue(&key.0, key.1) {
                    Some(queue) => {
                        let worker = partition::spawn(self.shared.clone(), key.0.clone(), key.1, queue);
                        parts.workers.insert(key, worker);
                    }
                    None => tracing::error!(topic = key.0, partition = key.1, "cannot open the partition's queue"),
                }
            }
        }
        if let Rebalance::Revoke(tpl) = rebalance {
            let keys: Vec<Key> = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
            tracing::info!(partitions = keys.len(), "partitions revoked: finishing records in hand");
            self.stop_workers(Some(&keys));
            commit(&self.shared, consumer, Some(&keys), "revoke");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::debug!(offsets = ?offsets.to_topic_map(), "offsets committed"),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!("offset commit failed: {e}"),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.shared.metrics.assigned_partitions.set(self.lock().workers.len() as i64);
                self.shared.health.joined.store(true, Ordering::Relaxed);
                tracing::info!(partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::error!("rebalance failed: {e}"),
        }
    }
}

/// Commits the stored offsets of `keys` (all when `None`) synchronously, and forgets them.
/// Only offsets of records with a final outcome are ever committed: never the fetch position,
/// which runs ahead of the records still queued for the partition tasks.
fn commit(shared: &Shared, consumer: &BaseConsumer<HostContext>, keys: Option<&[Key]>, when: &str) {
    if let Some(keys) = keys {
        // No longer this host's partitions: their lag is another member's to report.
        for (topic, partition) in keys {
            let labels = crate::metrics::PartitionLabels { topic: topic.clone(), partition: *partition };
            shared.metrics.consumer_lag.remove(&labels);
        }
    }
    let offsets: Vec<(Key, i64)> = {
        let mut stored = shared.stored.lock().unwrap_or_else(|e| e.into_inner());
        let taken: Vec<(Key, Arc<super::Progress>)> = match keys {
            Some(keys) => keys.iter().filter_map(|k| stored.remove(k).map(|o| (k.clone(), o))).collect(),
            None => stored.drain().collect(),
        };
        taken.into_iter().map(|(k, o)| (k, o.stored.load(Ordering::Acquire))).filter(|(_, o)| *o >= 0).collect()
    };
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), next) in &offsets {
        if let Err(e) = tpl.add_partition_offset(topic, *partition, rdkafka::Offset::Offset(*next)) {
            tracing::warn!(topic, partition, "cannot commit offset {next}: {e}");
        }
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => tracing::debug!(partitions = offsets.len(), "offsets committed on {when}"),
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!("cannot commit offsets on {when}: {e}"),
    }
}

/// Records between a partition's high watermark and where its task stands (`position`: the
/// first record whose outcome is not final), or, before the task took a record, its committed
/// offset, or its low watermark: so a partition that never committed (or is stuck on its first
/// record) has a lag too. `None` while the broker has not told the high watermark.
fn lag(position: Option<i64>, p: &rdkafka::statistics::Partition) -> Option<i64> {
    if p.hi_offset < 0 {
        return None;
    }
    let from = [position.unwrap_or(-1), p.committed_offset, p.lo_offset].into_iter().find(|o| *o >= 0)?;
    Some((p.hi_offset - from).max(0))
}

/// The consumer and its poll thread's state.
pub(crate) struct PollLoop {
    pub consumer: Arc<BaseConsumer<HostContext>>,
    pub shared: Arc<Shared>,
}

impl PollLoop {
    /// Creates the consumer for `group_id`.
    pub fn new(shared: Arc<Shared>, settings: &common::kafka::KafkaSettings, group_id: &str) -> KafkaResult<Self> {
        let mut config = settings.client_config(common::kafka::ClientRole::Consumer);
        config
            .set("group.id", group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        // Defaults the operator may override with KAFKA_OPT_*. Prefetch bounds (the
        // backpressure): per partition at most `queued.min.messages` records, in all
        // `queued.max.messages.kbytes`.
        // Cooperative rebalancing: a member joining or leaving moves only the partitions that
        // change hands; the others keep their task and records in hand.
        for (property, value) in [
            ("queued.min.messages", "10000"),
            ("queued.max.messages.kbytes", "16384"),
            ("partition.assignment.strategy", "cooperative-sticky"),
            // How often the lag metric and the stalled-partition gauge are updated.
            ("statistics.interval.ms", "5000"),
        ] {
            if config.get(property).is_none() {
                config.set(property, value);
            }
        }
        let context = HostContext {
            shared: shared.clone(),
            kafka: common::kafka::KafkaContext::new(settings),
            partitions: Mutex::default(),
        };
        let consumer = Arc::new(config.create_with_context::<_, BaseConsumer<HostContext>>(context)?);
        let _ = shared.consumer.set(Arc::downgrade(&consumer));
        Ok(Self { consumer, shared })
    }

    fn follow(&self, topics: &[String]) {
        if topics.is_empty() {
            self.consumer.unsubscribe();
            tracing::info!("no handlers: unsubscribed");
            return;
        }
        let mut all: Vec<String> = topics.to_vec();
        all.extend(topics.iter().map(|t| retry_topic(t)));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        match self.consumer.subscribe(&refs) {
            Ok(()) => tracing::info!(topics = ?refs, "subscribed"),
            Err(e) => tracing::error!("cannot subscribe to {refs:?}: {e}"),
        }
    }

    /// Polls until `stop`, then drains and closes.
    pub fn run(self, mut topics: tokio::sync::watch::Receiver<Vec<String>>, stop: tokio::sync::watch::Receiver<bool>) {
        let initial = topics.borrow_and_update().clone();
        self.follow(&initial);
        let mut last_error: Option<(String, Instant)> = None;
        while !*stop.borrow() {
            if topics.has_changed().unwrap_or(false) {
                let now = topics.borrow_and_update().clone();
                self.follow(&now);
            }
            // Records go to the partition queues; the main queue serves rebalances, errors and
            // statistics. A record here belongs to no task: it is left uncommitted.
            match self.consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(message)) => {
                    tracing::warn!(
                        topic = message.topic(),
                        partition = message.partition(),
                        offset = message.offset(),
                        "record outside any partition queue: left for redelivery"
                    );
                }
                Some(Err(e)) => {
                    let text = e.to_string();
                    let repeat =
                        last_error.as_ref().is_some_and(|(t, at)| *t == text && at.elapsed() < Duration::from_secs(30));
                    if !repeat {
                        tracing::warn!("consumer: {text}");
                        last_error = Some((text, Instant::now()));
                    }
                }
            }
        }
        tracing::info!("stopping: finishing records in hand, then committing");
        self.consumer.context().stop_workers(None);
        commit(&self.shared, &self.consumer, None, "shutdown");
        // Dropping the last reference closes the consumer: it leaves the group cleanly.
        drop(self.consumer);
        tracing::info!("consumer closed");
    }
}
