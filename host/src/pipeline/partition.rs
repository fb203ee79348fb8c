//! One task per assigned partition: takes the partition's records in offset order, runs each
//! through the topic's handler with in-place retries (several at once, in one `handle-batch`
//! call, when the handler is a pure batch handler and records are waiting), hands failures on to
//! the retry or dead-letter topic, sends its events to the events topic when one is configured,
//! and stores the record's offset only once its outcome is final.

use super::consumer::HostContext;
use super::deliver::{Outgoing, Refusal, Sent};
use super::headers::{DeadLetter, Source, dlq_headers, dlq_reference_headers, parse_retry, retry_headers};
use super::{PartitionHealth, Progress, Shared};
use crate::handlers::{ActiveHandler, HandlerCode, RETRY_SUFFIX, TopicCounters, dlq_topic, retry_topic};
use crate::metrics::{KindLabels, OutcomeLabels, TopicLabels};
use crate::record::Invocation;
use crate::record::{Outcome, Record};
use crate::runtime::{BatchInvocation, HandlerModule, Worker};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;
use rdkafka::consumer::base_consumer::PartitionQueue;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
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
    health: &PartitionHealth,
) -> Option<Record> {
    loop {
        if *stop.borrow() {
            return None;
        }
        match queue.poll(Duration::ZERO) {
            Some(Ok(message)) => return Some(super::consumer::to_record(&message)),
            Some(Err(e)) => fetch_failed(health, &e),
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

/// A fetch error on the partition's queue (the broker refuses the topic, a record cannot be
/// decoded): logged and reported, until a record of the partition is final again.
fn fetch_failed(health: &PartitionHealth, error: &rdkafka::error::KafkaError) {
    tracing::warn!("partition queue: {error}");
    health.failing(&format!("cannot fetch: {error}"));
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
    progress: Arc<Progress>,
    health: PartitionHealth,
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
            progress: shared.progress(topic, partition),
            health: PartitionHealth::new(shared.health.clone(), topic, partition),
            store,
        }
    }

    /// Records that the partition's records before `next` have final outcomes, for explicit
    /// commits (revoke, shutdown) and the lag metric. Cheap: call it per record.
    fn mark_final(&self, next: i64) {
        self.progress.stored.store(next, Ordering::Release);
        self.health.recovered();
    }

    /// Notes the offset of a record the task took, if it is the first.
    fn taken(&self, offset: i64) {
        let _ = self.progress.first_taken.compare_exchange(-1, offset, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// [`mark_final`](Self::mark_final), and hands the offset to librdkafka for the next
    /// auto-commit (once per record handled alone, once per batch).
    fn store_offset(&mut self, shared: &Shared, next: i64) {
        self.mark_final(next);
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
    // Records taken from the queue but not handled yet (the rest of a batch), in offset order.
    let mut pending: VecDeque<Record> = VecDeque::new();
    // Records to handle one by one (after a failed batch) before batching again.
    let mut singles = 0usize;
    tracing::debug!(topic, partition, "partition worker started");
    loop {
        let record = match pending.pop_front() {
            Some(record) if !*stop.borrow() => record,
            Some(_) => break,
            None => match next_record(&queue, &ready, &mut stop, &state.health).await {
                Some(record) => record,
                None => break,
            },
        };
        state.taken(record.offset);
        // A busy partition must not starve the other tasks on its thread (HTTP, other
        // partitions): a handler call often completes without ever yielding.
        tokio::task::consume_budget().await;
        let record = if singles == 0 {
            match gather_batch(&shared, &mut state, record, &mut pending, &queue) {
                Next::Batch(batch) => match handle_batch(&shared, &mut state, batch, &mut stop, &mut pending).await {
                    BatchDone::Abandoned => break,
                    BatchDone::Handled => continue,
                    BatchDone::Failed(n) => {
                        singles = n;
                        continue;
                    }
                },
                Next::Alone(record) => record,
            }
        } else {
            singles -= 1;
            record
        };
        let offset = record.offset;
        if handle(&shared, &mut state, record, &mut stop, None).await == Done::Abandoned {
            break;
        }
        state.store_offset(&shared, offset + 1);
    }
    tracing::debug!(topic, partition, "partition worker stopped");
}

/// What to handle next.
enum Next {
    /// One record on its own.
    Alone(Record),
    /// Two or more consecutive records in one batch.
    Batch(Vec<Record>),
}

/// The batch that starts with `record`: more of the records already taken, then of those waiting
/// in the partition's queue (never waiting for one), within the handler's batch limits. `record`
/// goes alone when the handler does not take batches, when the records come from a retry topic
/// (each waits for its own time), or when no other record is waiting.
fn gather_batch(
    shared: &Shared,
    state: &mut PartitionState,
    record: Record,
    pending: &mut VecDeque<Record>,
    queue: &PartitionQueue<HostContext>,
) -> Next {
    if state.from_retry_topic {
        return Next::Alone(record);
    }
    let Some(handler) = shared.registry.get_cached(&state.handler_topic, &mut state.handler) else {
        return Next::Alone(record);
    };
    let limits = match &handler.code {
        HandlerCode::Wasm(module) => {
            let worker = worker_for(shared, &mut state.worker, module);
            if !worker.takes_batches() {
                return Next::Alone(record);
            }
            worker.module().limits().as_ref()
        }
        // Native logic (benchmarks) goes through the same batches as a component would.
        #[cfg(feature = "native-handlers")]
        HandlerCode::Native(_) => &handler.settings.limits,
    };
    // A batch is copied into the guest whole: keep it well inside the guest's memory cap.
    let max_bytes = limits.max_batch_bytes.min(limits.max_memory_bytes / 4);
    let max_records = limits.max_batch_records as usize;
    let size = crate::runtime::packed::encoded_len;
    let mut bytes = size(&record);
    let mut batch = vec![record];
    while batch.len() < max_records {
        let next = match pending.pop_front() {
            Some(next) => next,
            None => match queue.poll(Duration::ZERO) {
                Some(Ok(message)) => super::consumer::to_record(&message),
                Some(Err(e)) => {
                    fetch_failed(&state.health, &e);
                    break;
                }
                None => break,
            },
        };
        let next_bytes = size(&next);
        if bytes + next_bytes > max_bytes {
            pending.push_front(next);
            break;
        }
        bytes += next_bytes;
        batch.push(next);
    }
    if batch.len() == 1 {
        return Next::Alone(batch.remove(0));
    }
    Next::Batch(batch)
}

/// `worker`, running `module` (swapped in, or created, when it runs something else or nothing).
fn worker_for<'a>(shared: &Shared, worker: &'a mut Option<Worker>, module: &HandlerModule) -> &'a mut Worker {
    match worker {
        Some(w) => {
            if !w.module().same_load(module) {
                w.swap(module.clone());
            }
            w
        }
        None => worker.insert(Worker::new(module.clone(), shared.producer_client.clone())),
    }
}

/// What became of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchDone {
    /// Its handled records are final (offsets stored); the rest wait in `pending`.
    Handled,
    /// It failed as a whole; its records wait in `pending`, this many to go one by one.
    Failed(usize),
    /// Told to stop.
    Abandoned,
}

/// Runs `batch` through the handler in one call. Each handled record then goes the way a single
/// record's first attempt goes (the same accounting, events, retries and dead letters, and its
/// offset stored once final); the records after the last handled one, or all of them when the
/// batch failed, go back to the front of `pending`.
async fn handle_batch(
    shared: &Shared,
    state: &mut PartitionState,
    batch: Vec<Record>,
    stop: &mut watch::Receiver<bool>,
    pending: &mut VecDeque<Record>,
) -> BatchDone {
    let n = batch.len();
    let Some(handler) = shared.registry.get_cached(&state.handler_topic, &mut state.handler) else {
        requeue(pending, batch);
        return BatchDone::Failed(n);
    };
    shared.metrics.in_flight.inc_by(n as i64);
    let result = match &handler.code {
        HandlerCode::Wasm(module) => worker_for(shared, &mut state.worker, module).invoke_batch(&batch).await,
        #[cfg(feature = "native-handlers")]
        HandlerCode::Native(native) => BatchInvocation::Handled(native.invoke_batch(&batch)),
    };
    shared.metrics.in_flight.dec_by(n as i64);
    let kind = |kind: &str| KindLabels { topic: state.handler_topic.to_string(), kind: kind.to_string() };
    match result {
        BatchInvocation::Failed(reason) => {
            shared.metrics.batches.get_or_create(&kind("failed")).inc();
            tracing::warn!(
                record = %At(&batch[0]),
                records = n,
                "a batch failed ({reason}); handling its records one by one"
            );
            requeue(pending, batch);
            BatchDone::Failed(n)
        }
        BatchInvocation::Handled(invocations) => {
            shared.metrics.batches.get_or_create(&kind("handled")).inc();
            let label = TopicLabels { topic: state.handler_topic.to_string() };
            shared.metrics.batched_records.get_or_create(&label).inc_by(invocations.len() as u64);
            let mut records = batch.into_iter();
            // Each final record is marked at once (a stop or revoke that cuts the batch short
            // commits every record finished so far); librdkafka is handed the offset once for
            // the batch, after its last final record (also when giving up on the one after it).
            let (mut next, mut done) = (None, BatchDone::Handled);
            for invocation in invocations {
                let Some(record) = records.next() else { break };
                let offset = record.offset;
                if handle(shared, state, record, stop, Some((invocation, &handler.code))).await == Done::Abandoned {
                    done = BatchDone::Abandoned;
                    break;
                }
                state.mark_final(offset + 1);
                next = Some(offset + 1);
            }
            if let Some(next) = next {
                state.store_offset(shared, next);
            }
            requeue(pending, records);
            done
        }
    }
}

/// Puts `records` (consecutive, in offset order) back at the front of `pending`, before what it
/// holds.
fn requeue(pending: &mut VecDeque<Record>, records: impl IntoIterator<Item = Record, IntoIter: DoubleEndedIterator>) {
    for record in records.into_iter().rev() {
        pending.push_front(record);
    }
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

/// Handles one record to a final outcome, or abandons it when told to stop. `first` is the
/// outcome of an attempt already made in a batch, by the code given with it: it counts as the
/// first attempt if that code is still the topic's handler (else the record is run again by
/// the handler now in place, whose digest and retry policy then apply).
async fn handle(
    shared: &Shared,
    state: &mut PartitionState,
    record: Record,
    stop: &mut watch::Receiver<bool>,
    mut first: Option<(Invocation, &HandlerCode)>,
) -> Done {
    let handler_topic = Arc::clone(&state.handler_topic);
    let handler_topic = &*handler_topic;
    // The record as consumed, when it is a retry topic's copy: dead letters name it too (its
    // value may be kept there longer than on the source topic).
    let source = state.from_retry_topic.then(|| Source::of(&record));
    let source = source.as_ref();
    let (mut record, hops) = if state.from_retry_topic {
        match parse_retry(record.clone()) {
            Ok(delivery) => {
                let wait = delivery.not_before_ms - chrono::Utc::now().timestamp_millis();
                // Never longer than the handler's policy allows now (a copy written under a
                // longer one, or by a skewed clock, must not hold its partition for days).
                let longest = shared
                    .registry
                    .get_cached(handler_topic, &mut state.handler)
                    .map_or(i64::MAX, |h| i64::try_from(h.settings.retry.retry_topic_delay_max_ms).unwrap_or(i64::MAX));
                if wait > longest {
                    tracing::warn!(
                        record = %At(&delivery.record),
                        "waits {wait} ms, longer than the policy's {longest} ms: waiting {longest} ms"
                    );
                }
                let wait = wait.min(longest);
                if wait > 0 && !sleep_unless_stopped(Duration::from_millis(wait.unsigned_abs()), stop).await {
                    return Done::Abandoned;
                }
                (delivery.record, delivery.hops)
            }
            Err(reason) => {
                let reason = format!("malformed retry record: {reason}");
                tracing::warn!(record = %At(&record), "{reason}");
                let dead = DeadLetter {
                    cause: "malformed",
                    outcome: "malformed",
                    reason: &reason,
                    attempts: 0,
                    digest: None,
                    source: None,
                };
                return dead_letter(shared, &state.health, handler_topic, &record, &dead, stop).await;
            }
        }
    } else {
        (record, 0)
    };

    let mut in_place = 0u32;
    loop {
        let Some(handler) = shared.registry.get_cached(handler_topic, &mut state.handler) else {
            // The handler file was removed: the partition is revoked once the consumer follows
            // the new topic set, unless the handler is back first (then the record is its).
            tracing::info!(record = %At(&record), "no handler for {handler_topic}: the record waits for one");
            if !wait_for_handler(shared, handler_topic, stop).await {
                return Done::Abandoned;
            }
            continue;
        };
        let earlier = first.take().filter(|(_, by)| handler.code.same_code(by));
        let invocation = match earlier {
            Some((invocation, _)) => invocation,
            None => {
                shared.metrics.in_flight.inc();
                let invocation = match &handler.code {
                    HandlerCode::Wasm(module) => worker_for(shared, &mut state.worker, module).invoke(&record).await,
                    #[cfg(feature = "native-handlers")]
                    HandlerCode::Native(native) => native.invoke(&record),
                };
                shared.metrics.in_flight.dec();
                invocation
            }
        };

        let outcome = invocation.outcome;
        if let Some(stderr) = &invocation.stderr {
            // The handler's own diagnostics (a traceback, an exception): escaped by the log.
            tracing::warn!(target: "handler", record = %At(&record), outcome = outcome.label(), "stderr: {stderr}");
        }
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
                    if let Some(events_topic) = &shared.events_topic {
                        match publish_durably(shared, &state.health, events_topic, &record, &invocation.events, stop)
                            .await
                        {
                            Sent::Acknowledged => {}
                            Sent::Abandoned => return Done::Abandoned,
                            // An event no retry will write (over the topic's size limit): the
                            // record is dead-lettered with the reason, to be re-driven once the
                            // handler is mended; events already written stay.
                            Sent::Refused(refusal) => {
                                let reason = format!("its events could not be written: {}", refusal.reason);
                                tracing::warn!(record = %At(&record), "{reason}; dead-lettering it");
                                let dead = DeadLetter {
                                    cause: "undeliverable",
                                    outcome: "ok",
                                    reason: &reason,
                                    attempts: record.attempt,
                                    digest: Some(digest),
                                    source,
                                };
                                return dead_letter(shared, &state.health, handler_topic, &record, &dead, stop).await;
                            }
                        }
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
                    source,
                };
                return dead_letter(shared, &state.health, handler_topic, &record, &dead, stop).await;
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
                        source,
                    };
                    return dead_letter(shared, &state.health, handler_topic, &record, &dead, stop).await;
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
                let out = Outgoing { key: record.key.as_deref(), value: record.value.as_deref() };
                let topic = retry_topic(handler_topic);
                let sent = match shared.deliverer.send(&topic, out, &headers, stop, &state.health).await {
                    // A topic the host may not write: it waits, reported, until it may (the
                    // record only needed a retry; dead-lettering it would be wrong).
                    Sent::Refused(Refusal { too_large: false, .. }) => {
                        shared.deliverer.send_or_stall(&topic, out, &headers, stop, &state.health).await
                    }
                    sent => sent,
                };
                return match sent {
                    // No retry will write this copy (over the retry topic's size limit):
                    // dead-lettered now, with both reasons.
                    Sent::Refused(refusal) => {
                        let reason = format!(
                            "{}: {reason}; it could not be handed to the retry topic: {}",
                            retryable.label(),
                            refusal.reason
                        );
                        tracing::warn!(record = %At(&record), "{reason}; dead-lettering it");
                        let dead = DeadLetter {
                            cause: "undeliverable",
                            outcome: retryable.label(),
                            reason: &reason,
                            attempts: record.attempt,
                            digest: Some(digest),
                            source,
                        };
                        dead_letter(shared, &state.health, handler_topic, &record, &dead, stop).await
                    }
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
/// all, `Abandoned` when told to stop first (the record is then handled again, and its events
/// sent again: the topic is at least once), or the refusal of an event over the topic's size
/// limit. A topic the host may not write stalls the partition until it can.
async fn publish_durably(
    shared: &Shared,
    health: &PartitionHealth,
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
            let out = Outgoing { key: record.key.as_deref(), value: Some(value.as_bytes()) };
            match shared.deliverer.send(events_topic, out, &headers, &mut stop, health).await {
                Sent::Refused(Refusal { too_large: false, .. }) => {
                    shared.deliverer.send_or_stall(events_topic, out, &headers, &mut stop, health).await
                }
                sent => sent,
            }
        }
    });
    let results = futures::future::join_all(sends).await;
    if let Some(refused) = results.iter().find(|r| matches!(r, Sent::Refused(_))) {
        return refused.clone();
    }
    if results.contains(&Sent::Abandoned) { Sent::Abandoned } else { Sent::Acknowledged }
}

/// Sends `record` to its dead-letter topic with `dead`'s reason. A copy no retry will write (over
/// the topic's size limit, or refused) is replaced by a reference to the record (its topic,
/// partition and offset, the reason and why the copy was replaced, the key if short; no value,
/// no original headers); a reference the topic refuses stalls the partition, reported with the
/// reason, until it can be written.
async fn dead_letter(
    shared: &Shared,
    health: &PartitionHealth,
    handler_topic: &str,
    record: &Record,
    dead: &DeadLetter<'_>,
    stop: &mut watch::Receiver<bool>,
) -> Done {
    let topic = dlq_topic(handler_topic);
    let headers = dlq_headers(record, dead);
    let out = Outgoing { key: record.key.as_deref(), value: record.value.as_deref() };
    let sent = match shared.deliverer.send(&topic, out, &headers, stop, health).await {
        Sent::Refused(refusal) => {
            tracing::warn!(record = %At(record), "{}; dead-lettering a reference to the record instead", refusal.reason);
            let (key, headers) = dlq_reference_headers(record, dead, &refusal.reason);
            // An empty value, not a tombstone (which would delete the key's dead letters on a
            // compacted topic, and look like a dead-lettered tombstone).
            let out = Outgoing { key, value: Some(&[]) };
            shared.deliverer.send_or_stall(&topic, out, &headers, stop, health).await
        }
        sent => sent,
    };
    match sent {
        Sent::Acknowledged => {
            shared
                .metrics
                .dead_lettered
                .get_or_create(&KindLabels { topic: handler_topic.to_string(), kind: dead.cause.to_string() })
                .inc();
            shared.registry.counters(handler_topic).dead_lettered.fetch_add(1, Ordering::Relaxed);
            Done::Final
        }
        Sent::Abandoned | Sent::Refused(_) => Done::Abandoned,
    }
}

/// Waits until `topic` has a handler again; false when told to stop first.
async fn wait_for_handler(shared: &Shared, topic: &str, stop: &mut watch::Receiver<bool>) -> bool {
    let mut topics = shared.registry.watch_topics();
    tokio::select! {
        _ = stop.wait_for(|s| *s) => false,
        found = topics.wait_for(|t| t.iter().any(|t| t == topic)) => found.is_ok(),
    }
}

/// Sleeps `d`; false when told to stop first.
async fn sleep_unless_stopped(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => false,
        () = tokio::time::sleep(d) => true,
    }
}
