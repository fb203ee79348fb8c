//! One task per assigned partition: takes the partition's records in offset order, runs each
//! through the topic's handler with in-place retries, hands failures on to the retry or
//! dead-letter topic, sends its events to the events topic when one is configured, and stores
//! the record's offset only once its outcome is final.

use super::Shared;
use super::consumer::HostContext;
use super::deliver::{Outgoing, Sent};
use super::headers::{DeadLetter, dlq_headers, parse_retry, retry_headers};
use crate::handlers::{ActiveHandler, HandlerCode, RETRY_SUFFIX, TopicCounters, dlq_topic, retry_topic};
use crate::metrics::{KindLabels, OutcomeLabels, TopicLabels};
use crate::record::{Outcome, Record};
use crate::runtime::Worker;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;
use rdkafka::consumer::base_consumer::PartitionQueue;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// The handle the consumer keeps for a partition's task.
#[derive(Debug)]
pub(crate) struct PartitionWorker {
    /// Set to stop after the record in hand.
    pub stop: watch::Sender<bool>,
    /// The task.
    pub join: JoinHandle<()>,
}

/// Whether a record's handling ended (offset may be stored) or was abandoned (it will be
/// redelivered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    Final,
    Abandoned,
}

/// Starts the task for `topic`/`partition`, reading the partition's own librdkafka queue.
///
/// Backpressure is librdkafka's: the task takes a record only when it is ready for one, and
/// librdkafka stops fetching a partition whose queue holds `queued.min.messages` records (or when
/// all queues together hold `queued.max.messages.kbytes`).
pub(crate) fn spawn(
    shared: Arc<Shared>,
    topic: String,
    partition: i32,
    mut queue: PartitionQueue<HostContext>,
) -> PartitionWorker {
    let ready = Arc::new(Notify::new());
    queue.set_nonempty_callback({
        let ready = ready.clone();
        move || ready.notify_one()
    });
    let (stop, stop_rx) = watch::channel(false);
    let join = shared.runtime.spawn(run(shared.clone(), topic, partition, queue, ready, stop_rx));
    PartitionWorker { stop, join }
}

/// The next record of the partition, or `None` when told to stop.
async fn next_record(
    queue: &PartitionQueue<HostContext>,
    ready: &Notify,
    stop: &mut watch::Receiver<bool>,
) -> Option<Record> {
    loop {
        if *stop.borrow() {
            return None;
        }
        match queue.poll(Duration::ZERO) {
            Some(Ok(message)) => return Some(super::consumer::to_record(&message)),
            Some(Err(e)) => tracing::warn!("partition queue: {e}"),
            None => {
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => return None,
                    () = ready.notified() => {}
                }
            }
        }
    }
}

/// What a partition task keeps between records, so the per-record path takes no lock and
/// allocates no metric label.
struct PartitionState {
    handler_topic: Arc<str>,
    from_retry_topic: bool,
    worker: Option<Worker>,
    handler: Option<(u64, Option<Arc<ActiveHandler>>)>,
    counters: Arc<TopicCounters>,
    outcomes: Vec<Counter>,
    duration: Histogram,
    dropped: Counter,
    next_offset: Arc<AtomicI64>,
    store: TopicPartitionList,
}

impl PartitionState {
    fn new(shared: &Shared, topic: &str, partition: i32) -> Self {
        let (handler_topic, from_retry_topic) = match topic.strip_suffix(RETRY_SUFFIX) {
            Some(base) => (Arc::<str>::from(base), true),
            None => (Arc::<str>::from(topic), false),
        };
        let label = TopicLabels { topic: handler_topic.to_string() };
        let outcomes = Outcome::LABELS
            .iter()
            .map(|o| {
                shared
                    .metrics
                    .records
                    .get_or_create(&OutcomeLabels { topic: handler_topic.to_string(), outcome: (*o).to_string() })
                    .clone()
            })
            .collect();
        let mut store = TopicPartitionList::with_capacity(1);
        store.add_partition(topic, partition);
        Self {
            counters: shared.registry.counters(&handler_topic),
            duration: shared.metrics.handler_seconds.get_or_create(&label).clone(),
            dropped: shared.metrics.dropped.get_or_create(&label).clone(),
            outcomes,
            handler_topic,
            from_retry_topic,
            worker: None,
            handler: None,
            next_offset: shared.offset_slot(topic, partition),
            store,
        }
    }

    /// Records that the partition's records before `next` have final outcomes, for the next
    /// auto-commit and for explicit commits.
    fn store_offset(&mut self, shared: &Shared, next: i64) {
        self.next_offset.store(next, Ordering::Release);
        let Some(consumer) = shared.consumer.get().and_then(std::sync::Weak::upgrade) else { return };
        if self.store.set_all_offsets(rdkafka::Offset::Offset(next)).is_ok()
            && let Err(e) = consumer.store_offsets(&self.store)
        {
            tracing::debug!(next, "offset not stored (partition no longer assigned?): {e}");
        }
    }
}

async fn run(
    shared: Arc<Shared>,
    topic: String,
    partition: i32,
    queue: PartitionQueue<HostContext>,
    ready: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut state = PartitionState::new(&shared, &topic, partition);
    tracing::debug!(topic, partition, "partition worker started");
    while let Some(record) = next_record(&queue, &ready, &mut stop).await {
        // A busy partition must not starve the other tasks on its thread (HTTP, other
        // partitions): a handler call often completes without ever yielding.
        tokio::task::consume_budget().await;
        let offset = record.offset;
        let done = handle(&shared, &mut state, record, &mut stop).await;
        if done == Done::Abandoned {
            break;
        }
        state.store_offset(&shared, offset + 1);
    }
    tracing::debug!(topic, partition, "partition worker stopped");
}

/// A record's coordinates in log lines: `topic/partition@offset` (the original ones for a
/// redelivery). A field per event rather than a span per record, which would cost every record
/// an allocation whenever info logging is on.
struct At<'a>(&'a Record);

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.0.topic, self.0.partition, self.0.offset)
    }
}

/// Handles one record to a final outcome, or abandons it when told to stop.
async fn handle(shared: &Shared, state: &mut PartitionState, record: Record, stop: &mut watch::Receiver<bool>) -> Done {
    let handler_topic = Arc::clone(&state.handler_topic);
    let handler_topic = &*handler_topic;
    let (mut record, hops) = if state.from_retry_topic {
        match parse_retry(record.clone()) {
            Ok(delivery) => {
                let wait_ms = delivery.not_before_ms - chrono::Utc::now().timestamp_millis();
                if wait_ms > 0 && !sleep_unless_stopped(Duration::from_millis(wait_ms as u64), stop).await {
                    return Done::Abandoned;
                }
                (delivery.record, delivery.hops)
            }
            Err(reason) => {
                let reason = format!("malformed retry record: {reason}");
                tracing::warn!(record = %At(&record), "{reason}");
                let dead =
                    DeadLetter { cause: "malformed", outcome: "malformed", reason: &reason, attempts: 0, digest: None };
                return dead_letter(shared, handler_topic, &record, &dead, stop).await;
            }
        }
    } else {
        (record, 0)
    };

    let mut in_place = 0u32;
    loop {
        let Some(handler) = shared.registry.get_cached(handler_topic, &mut state.handler) else {
            tracing::info!(record = %At(&record), "no handler for {handler_topic} any more; leaving the record for redelivery");
            return Done::Abandoned;
        };
        shared.metrics.in_flight.inc();
        let invocation = match &handler.code {
            HandlerCode::Wasm(module) => {
                let w = match &mut state.worker {
                    Some(w) if w.module().same_load(module) => w,
                    Some(w) => {
                        w.swap(module.clone());
                        w
                    }
                    None => state.worker.insert(Worker::new(module.clone(), shared.producer_client.clone())),
                };
                w.invoke(&record).await
            }
            HandlerCode::Native(native) => native.invoke(&record),
        };
        shared.metrics.in_flight.dec();

        let outcome = invocation.outcome;
        state.outcomes[outcome.index()].inc();
        state.duration.observe(invocation.duration.as_secs_f64());
        if invocation.dropped > 0 {
            state.dropped.inc_by(u64::from(invocation.dropped));
        }
        state.counters.count(&outcome);
        let digest = handler.code.digest();
        let policy = &handler.settings.retry;
        match &outcome {
            Outcome::Ok => {
                tracing::debug!(record = %At(&record), attempt = record.attempt, us = invocation.duration.as_micros() as u64, "ok");
                if !invocation.events.is_empty() {
                    if let Some(events_topic) = &shared.events_topic
                        && publish_durably(shared, events_topic, &record, &invocation.events, stop).await
                            == Sent::Abandoned
                    {
                        return Done::Abandoned;
                    }
                    shared.events.publish(invocation.events);
                }
                return Done::Final;
            }
            Outcome::Reject(reason) => {
                tracing::info!(record = %At(&record), attempt = record.attempt, "rejected: {reason}");
                let dead = DeadLetter {
                    cause: "reject",
                    outcome: "reject",
                    reason,
                    attempts: record.attempt,
                    digest: Some(digest),
                };
                return dead_letter(shared, handler_topic, &record, &dead, stop).await;
            }
            retryable => {
                let reason = retryable.reason().unwrap_or_default();
                if record.attempt >= policy.max_attempts {
                    tracing::warn!(
                        record = %At(&record),
                        attempt = record.attempt,
                        "giving up after {} attempts: {} {reason}",
                        record.attempt,
                        retryable.label()
                    );
                    let dead = DeadLetter {
                        cause: "exhausted",
                        outcome: retryable.label(),
                        reason,
                        attempts: record.attempt,
                        digest: Some(digest),
                    };
                    return dead_letter(shared, handler_topic, &record, &dead, stop).await;
                }
                in_place += 1;
                if in_place < policy.in_place_attempts {
                    let backoff = policy.in_place_backoff(in_place);
                    tracing::info!(
                        record = %At(&record),
                        attempt = record.attempt,
                        "{}: {reason}; retrying in place in {backoff:?}",
                        retryable.label()
                    );
                    shared
                        .metrics
                        .retries
                        .get_or_create(&KindLabels { topic: handler_topic.to_string(), kind: "in_place".into() })
                        .inc();
                    if !sleep_unless_stopped(backoff, stop).await {
                        return Done::Abandoned;
                    }
                    record.attempt += 1;
                    continue;
                }
                let delay = policy.retry_topic_delay(hops);
                let not_before = chrono::Utc::now().timestamp_millis() + delay.as_millis() as i64;
                let headers = retry_headers(
                    &record,
                    record.attempt + 1,
                    hops + 1,
                    not_before,
                    &format!("{}: {reason}", retryable.label()),
                );
                tracing::info!(
                    record = %At(&record),
                    attempt = record.attempt,
                    "{}: {reason}; redelivering through the retry topic in {delay:?}",
                    retryable.label()
                );
                return match shared.deliverer.send(&retry_topic(handler_topic), &record, &headers, stop).await {
                    Sent::Acknowledged => {
                        shared
                            .metrics
                            .retries
                            .get_or_create(&KindLabels { topic: handler_topic.to_string(), kind: "retry_topic".into() })
                            .inc();
                        state.counters.sent_to_retry.fetch_add(1, Ordering::Relaxed);
                        Done::Final
                    }
                    Sent::Abandoned => Done::Abandoned,
                };
            }
        }
    }
}

/// Sends a record's events to the events topic, keyed by the record's key (so one key's events
/// keep their order), each with an `event-kind` header; returns once the broker acknowledged them
/// all, or `Abandoned` when told to stop first (the record is then handled again, and its events
/// sent again: the topic is at least once).
async fn publish_durably(
    shared: &Shared,
    events_topic: &str,
    record: &Record,
    events: &[crate::record::Event],
    stop: &watch::Receiver<bool>,
) -> Sent {
    let sends = events.iter().map(|event| {
        let mut stop = stop.clone();
        async move {
            let value = event.to_json().to_string();
            let headers = [crate::record::Header { key: "event-kind".into(), value: event.kind.clone().into_bytes() }];
            let out = Outgoing { key: record.key.as_deref(), value: Some(value.as_bytes()), timestamp_ms: None };
            shared.deliverer.send_parts(events_topic, out, &headers, &mut stop).await
        }
    });
    let results = futures::future::join_all(sends).await;
    if results.contains(&Sent::Abandoned) { Sent::Abandoned } else { Sent::Acknowledged }
}

async fn dead_letter(
    shared: &Shared,
    handler_topic: &str,
    record: &Record,
    dead: &DeadLetter<'_>,
    stop: &mut watch::Receiver<bool>,
) -> Done {
    let headers = dlq_headers(record, dead);
    match shared.deliverer.send(&dlq_topic(handler_topic), record, &headers, stop).await {
        Sent::Acknowledged => {
            shared
                .metrics
                .dead_lettered
                .get_or_create(&KindLabels { topic: handler_topic.to_string(), kind: dead.cause.to_string() })
                .inc();
            shared.registry.counters(handler_topic).dead_lettered.fetch_add(1, Ordering::Relaxed);
            Done::Final
        }
        Sent::Abandoned => Done::Abandoned,
    }
}

/// Sleeps `d`; false when told to stop first.
async fn sleep_unless_stopped(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => false,
        () = tokio::time::sleep(d) => true,
    }
}
