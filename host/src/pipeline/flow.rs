//! One record's way to a final outcome: attempt (the handler runs it, on a worker leased from
//! the host's budget), decide ([`super::decide`], pure), apply (wait and try again in place, or
//! write the record's events, its retry copy or its dead letter). A record is final once what
//! `apply` wrote is acknowledged; told to stop first, it ends `Err(Stopped)` and is delivered
//! again. Many records of a partition may be on this path at once ([`super::partition`] decides
//! which); everything they share is in [`PartitionCtx`].

use super::decide::{Disposition, decide};
use super::deliver::{Outgoing, Refusal, Sent};
use super::headers::{DeadLetter, Source, dlq_headers, dlq_reference_headers, parse_retry, retry_headers};
use super::stop::{Stop, Stopped};
use super::{PartitionHealth, Progress, Shared};
use crate::handlers::{ActiveHandler, HandlerCode, RETRY_SUFFIX, TopicCounters, dlq_topic, retry_topic};
use crate::metrics::{KindLabels, OutcomeLabels, PartitionLabels, TopicLabels};
use crate::record::{Event, Invocation, Outcome, Record};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the records of one partition share while they are handled: the handler's topic, the
/// metric handles (so the per-record path allocates no label), the partition's health and
/// progress.
pub(crate) struct PartitionCtx {
    pub shared: Arc<Shared>,
    /// The topic whose handler runs the records (the source topic of a `.retry` topic).
    pub handler_topic: Arc<str>,
    /// The partition is a `.retry` topic's: its records are retry copies.
    pub from_retry_topic: bool,
    handler: Mutex<Option<(u64, Option<Arc<ActiveHandler>>)>>,
    counters: Arc<TopicCounters>,
    outcomes: Vec<Counter>,
    duration: Histogram,
    dropped: Counter,
    /// Records of the partition taken and not final.
    pub in_flight: Gauge,
    /// How long records waited for the record before them with their key.
    pub key_wait: Histogram,
    pub progress: Arc<Progress>,
    pub health: PartitionHealth,
    store: Mutex<rdkafka::TopicPartitionList>,
}

impl PartitionCtx {
    pub fn new(shared: &Arc<Shared>, topic: &str, partition: i32) -> Self {
        let (handler_topic, from_retry_topic) = match topic.strip_suffix(RETRY_SUFFIX) {
            Some(base) => (Arc::<str>::from(base), true),
            None => (Arc::<str>::from(topic), false),
        };
        let metrics = &shared.metrics;
        let label = TopicLabels { topic: handler_topic.to_string() };
        let outcomes = Outcome::LABELS
            .iter()
            .map(|o| {
                metrics
                    .records
                    .get_or_create(&OutcomeLabels { topic: handler_topic.to_string(), outcome: (*o).to_string() })
                    .clone()
            })
            .collect();
        let mut store = rdkafka::TopicPartitionList::with_capacity(1);
        store.add_partition(topic, partition);
        Self {
            counters: shared.registry.counters(&handler_topic),
            duration: metrics.handler_seconds.get_or_create(&label).clone(),
            dropped: metrics.dropped.get_or_create(&label).clone(),
            key_wait: metrics.key_wait_seconds.get_or_create(&label).clone(),
            in_flight: metrics
                .partition_in_flight
                .get_or_create(&PartitionLabels { topic: topic.to_string(), partition })
                .clone(),
            outcomes,
            handler_topic,
            from_retry_topic,
            handler: Mutex::new(None),
            progress: shared.progress(topic, partition),
            health: PartitionHealth::new(shared.health.clone(), topic, partition),
            store: Mutex::new(store),
            shared: shared.clone(),
        }
    }

    /// The topic's handler now (looked up again only when the registry changed).
    pub fn handler(&self) -> Option<Arc<ActiveHandler>> {
        let mut cache = self.handler.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.registry.get_cached(&self.handler_topic, &mut cache)
    }

    /// Notes the offset of a record taken, if it is the first (where the partition stands for
    /// the lag metric before any outcome is final).
    pub fn taken(&self, offset: i64) {
        let _ = self.progress.first_taken.compare_exchange(-1, offset, AtomicOrdering::AcqRel, AtomicOrdering::Relaxed);
    }

    /// Every record before `next` is final: recorded for explicit commits (revoke, shutdown) and
    /// the lag metric (cheap: per record of a batch); the partition moves on, so it is no
    /// longer reported stalled.
    pub fn mark_final(&self, next: i64) {
        self.progress.stored.store(next, AtomicOrdering::Release);
        self.health.recovered();
    }

    /// [`mark_final`](Self::mark_final), and the offset handed to librdkafka for the next
    /// auto-commit.
    pub fn store_offset(&self, next: i64) {
        self.mark_final(next);
        let Some(consumer) = self.shared.consumer.get().and_then(std::sync::Weak::upgrade) else { return };
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        if store.set_all_offsets(rdkafka::Offset::Offset(next)).is_ok()
            && let Err(e) = rdkafka::consumer::Consumer::store_offsets(&*consumer, &store)
        {
            tracing::debug!(next, "offset not stored (partition no longer assigned?): {e}");
        }
    }

    /// Counts one handler call and logs what the handler wrote to its standard error.
    fn account(&self, record: &Record, invocation: &Invocation) {
        let outcome = &invocation.outcome;
        if let Some(stderr) = &invocation.stderr {
            // The handler's own diagnostics (a traceback, an exception): escaped by the log.
            tracing::warn!(target: "handler", record = %At(record), outcome = outcome.label(), "stderr: {stderr}");
        }
        self.outcomes[outcome.index()].inc();
        self.duration.observe(invocation.duration.as_secs_f64());
        if invocation.dropped > 0 {
            self.dropped.inc_by(u64::from(invocation.dropped));
        }
        self.counters.count(outcome);
    }

    fn count_retry(&self, kind: &str) {
        let labels = KindLabels { topic: self.handler_topic.to_string(), kind: kind.to_string() };
        self.shared.metrics.retries.get_or_create(&labels).inc();
    }
}

/// A record taken from the partition, ready for the handler.
#[derive(Debug)]
pub(crate) struct Item {
    /// Its offset in the partition it was consumed from (a `.retry` topic's own).
    pub offset: i64,
    /// The record as the handler sees it (a retry copy's original coordinates and attempt).
    pub record: Record,
    /// Its trips through the retry topic so far.
    pub hops: u32,
    /// The retry copy as consumed, when it is one: dead letters name it too (its value may be
    /// kept there longer than on the source topic).
    pub source: Option<Source>,
    /// A retry copy without its bookkeeping: dead-lettered at once, with this reason.
    pub malformed: Option<String>,
    /// When a retry copy may run (epoch milliseconds; 0 for a record of a source topic).
    pub not_before_ms: i64,
}

impl Item {
    /// `record` as consumed from the partition of `ctx`: a retry copy is read back into the
    /// original record.
    pub fn consumed(ctx: &PartitionCtx, record: Record) -> Self {
        let offset = record.offset;
        if !ctx.from_retry_topic {
            return Self { offset, record, hops: 0, source: None, malformed: None, not_before_ms: 0 };
        }
        let source = Some(Source::of(&record));
        match parse_retry(record.clone()) {
            Ok(delivery) => Self {
                offset,
                record: delivery.record,
                hops: delivery.hops,
                source,
                malformed: None,
                not_before_ms: delivery.not_before_ms,
            },
            Err(reason) => Self { offset, record, hops: 0, source, malformed: Some(reason), not_before_ms: 0 },
        }
    }

    /// How long it must still wait before it runs: never longer than the handler's policy
    /// allows now (a copy written under a longer one, or by a skewed clock, must not hold its
    /// partition for days).
    pub fn wait(&self, ctx: &PartitionCtx) -> Duration {
        let wait = self.not_before_ms - chrono::Utc::now().timestamp_millis();
        if wait <= 0 {
            return Duration::ZERO;
        }
        let longest = ctx
            .handler()
            .map_or(i64::MAX, |h| i64::try_from(h.settings.retry.retry_topic_delay_max_ms).unwrap_or(i64::MAX));
        if wait > longest {
            tracing::warn!(
                record = %At(&self.record),
                "waits {wait} ms, longer than the policy's {longest} ms: waiting {longest} ms"
            );
        }
        Duration::from_millis(wait.min(longest).unsigned_abs())
    }
}

/// Handles `item` to a final outcome. `first` is the outcome of an attempt already made in a
/// batch, by the code given with it: it counts as the first attempt if that code is still the
/// topic's handler (else the record is run again by the handler now in place, whose digest and
/// retry policy then apply).
pub(crate) async fn handle(
    ctx: &PartitionCtx,
    item: Item,
    mut stop: Stop,
    mut first: Option<(Invocation, &HandlerCode)>,
) -> Result<(), Stopped> {
    let Item { mut record, hops, source, malformed, .. } = item;
    let source = source.as_ref();
    if let Some(reason) = malformed {
        let reason = format!("malformed retry record: {reason}");
        tracing::warn!(record = %At(&record), "{reason}");
        let dead =
            DeadLetter { cause: "malformed", outcome: "malformed", reason: &reason, attempts: 0, digest: None, source };
        return dead_letter(ctx, &record, &dead, &mut stop).await;
    }
    let mut in_place = 0u32;
    loop {
        let Some(handler) = ctx.handler() else {
            // The handler file was removed: the partition is revoked once the consumer follows
            // the new topic set, unless the handler is back first (then the record is its).
            tracing::info!(record = %At(&record), "no handler for {}: the record waits for one", ctx.handler_topic);
            wait_for_handler(ctx, &mut stop).await?;
            continue;
        };
        let invocation = match first.take().filter(|(_, by)| handler.code.same_code(by)) {
            Some((invocation, _)) => invocation,
            None => attempt(ctx, &handler, &record).await,
        };
        ctx.account(&record, &invocation);
        in_place += 1;
        let digest = handler.code.digest();
        let policy = &handler.settings.retry;
        let outcome = &invocation.outcome;
        let reason = outcome.reason().unwrap_or_default();
        let dead = |cause| DeadLetter {
            cause,
            outcome: outcome.label(),
            reason,
            attempts: record.attempt,
            digest: Some(digest),
            source,
        };
        match decide(outcome, record.attempt, in_place, hops, policy) {
            Disposition::Done => {
                tracing::debug!(record = %At(&record), attempt = record.attempt, us = invocation.duration.as_micros() as u64, "ok");
                return publish(ctx, &record, invocation.events, digest, source, &mut stop).await;
            }
            Disposition::DeadLetter { cause } => {
                if cause == "reject" {
                    tracing::info!(record = %At(&record), attempt = record.attempt, "rejected: {reason}");
                } else {
                    tracing::warn!(
                        record = %At(&record),
                        attempt = record.attempt,
                        "giving up after {} attempts: {} {reason}",
                        record.attempt,
                        outcome.label()
                    );
                }
                return dead_letter(ctx, &record, &dead(cause), &mut stop).await;
            }
            Disposition::RetryInPlace { retry } => {
                let backoff = policy.in_place_backoff(retry);
                tracing::info!(
                    record = %At(&record),
                    attempt = record.attempt,
                    "{}: {reason}; retrying in place in {backoff:?}",
                    outcome.label()
                );
                ctx.count_retry("in_place");
                let waited = tokio::time::Instant::now();
                if stop.sleep(backoff).await.is_err() {
                    // Stopping: the record goes on through the retry topic after what is left of
                    // its backoff, rather than being abandoned, so the records after it that are
                    // already final need not be handled again by the partition's next owner.
                    let delay = backoff.saturating_sub(waited.elapsed());
                    return to_retry_topic(ctx, &record, hops, delay, outcome, digest, source, &mut stop).await;
                }
                record.attempt += 1;
            }
            Disposition::RetryTopic { delay } => {
                return to_retry_topic(ctx, &record, hops, delay, outcome, digest, source, &mut stop).await;
            }
        }
    }
}

/// One run of `record` through `handler`, on a worker leased for it.
async fn attempt(ctx: &PartitionCtx, handler: &ActiveHandler, record: &Record) -> Invocation {
    match &handler.code {
        HandlerCode::Wasm(module) => {
            let mut lease = ctx.shared.instances.lease(module).await;
            ctx.shared.metrics.in_flight.inc();
            let invocation = lease.worker().invoke(record).await;
            ctx.shared.metrics.in_flight.dec();
            invocation
        }
        #[cfg(feature = "native-handlers")]
        HandlerCode::Native(native) => native.invoke(record),
    }
}

/// A record handled `ok`: its events go to the events topic, when one is configured, before it
/// counts as final, then to `/events`.
async fn publish(
    ctx: &PartitionCtx,
    record: &Record,
    events: Vec<Event>,
    digest: &str,
    source: Option<&Source>,
    stop: &mut Stop,
) -> Result<(), Stopped> {
    if events.is_empty() {
        return Ok(());
    }
    if let Some(events_topic) = &ctx.shared.events_topic
        && let Sent::Refused(refusal) = publish_durably(ctx, events_topic, record, &events, stop).await?
    {
        // An event no retry will write (over the topic's size limit): the record is
        // dead-lettered with the reason, to be re-driven once the handler is mended; events
        // already written stay.
        let reason = format!("its events could not be written: {}", refusal.reason);
        tracing::warn!(record = %At(record), "{reason}; dead-lettering it");
        let dead = DeadLetter {
            cause: "undeliverable",
            outcome: "ok",
            reason: &reason,
            attempts: record.attempt,
            digest: Some(digest),
            source,
        };
        return dead_letter(ctx, record, &dead, stop).await;
    }
    ctx.shared.events.publish(events);
    Ok(())
}

/// Hands `record` to the retry topic, to be delivered again after `delay`; a copy no retry will
/// write (over the retry topic's size limit) is dead-lettered instead, and a retry topic the
/// host may not write stalls the partition until it may (the record only needed a retry;
/// dead-lettering it would be wrong).
#[allow(clippy::too_many_arguments)]
async fn to_retry_topic(
    ctx: &PartitionCtx,
    record: &Record,
    hops: u32,
    delay: Duration,
    outcome: &Outcome,
    digest: &str,
    source: Option<&Source>,
    stop: &mut Stop,
) -> Result<(), Stopped> {
    let reason = outcome.reason().unwrap_or_default();
    let not_before = chrono::Utc::now().timestamp_millis() + delay.as_millis() as i64;
    let headers =
        retry_headers(record, record.attempt + 1, hops + 1, not_before, &format!("{}: {reason}", outcome.label()));
    tracing::info!(
        record = %At(record),
        attempt = record.attempt,
        "{}: {reason}; redelivering through the retry topic in {delay:?}",
        outcome.label()
    );
    let out = Outgoing { key: record.key.as_deref(), value: record.value.as_deref() };
    let topic = retry_topic(&ctx.handler_topic);
    let deliverer = &ctx.shared.deliverer;
    let sent = match deliverer.send(&topic, out, &headers, stop, &ctx.health).await? {
        Sent::Refused(Refusal { too_large: false, .. }) => {
            deliverer.send_or_stall(&topic, out, &headers, stop, &ctx.health).await?;
            Sent::Acknowledged
        }
        sent => sent,
    };
    match sent {
        Sent::Acknowledged => {
            ctx.count_retry("retry_topic");
            ctx.counters.sent_to_retry.fetch_add(1, AtomicOrdering::Relaxed);
            Ok(())
        }
        Sent::Refused(refusal) => {
            let reason =
                format!("{}: {reason}; it could not be handed to the retry topic: {}", outcome.label(), refusal.reason);
            tracing::warn!(record = %At(record), "{reason}; dead-lettering it");
            let dead = DeadLetter {
                cause: "undeliverable",
                outcome: outcome.label(),
                reason: &reason,
                attempts: record.attempt,
                digest: Some(digest),
                source,
            };
            dead_letter(ctx, record, &dead, stop).await
        }
    }
}

/// Sends a record's events to the events topic, keyed by the record's key (so one key's events
/// keep their order), each with an `event-kind` header; returns once the broker acknowledged them
/// all, `Err(Stopped)` when told to stop first (the record is then handled again, and its events
/// sent again: the topic is at least once), or the refusal of an event over the topic's size
/// limit. A topic the host may not write stalls the partition until it can.
async fn publish_durably(
    ctx: &PartitionCtx,
    events_topic: &str,
    record: &Record,
    events: &[Event],
    stop: &Stop,
) -> Result<Sent, Stopped> {
    let sends = events.iter().map(|event| {
        let mut stop = stop.clone();
        async move {
            let value = event.to_json().to_string();
            let headers = [crate::record::Header { key: "event-kind".into(), value: event.kind.clone().into_bytes() }];
            let out = Outgoing { key: record.key.as_deref(), value: Some(value.as_bytes()) };
            let deliverer = &ctx.shared.deliverer;
            match deliverer.send(events_topic, out, &headers, &mut stop, &ctx.health).await? {
                Sent::Refused(Refusal { too_large: false, .. }) => {
                    deliverer.send_or_stall(events_topic, out, &headers, &mut stop, &ctx.health).await?;
                    Ok(Sent::Acknowledged)
                }
                sent => Ok(sent),
            }
        }
    });
    let results = futures::future::join_all(sends).await;
    if let Some(refused) = results.iter().find(|r| matches!(r, Ok(Sent::Refused(_)))) {
        return refused.clone();
    }
    if results.contains(&Err(Stopped)) { Err(Stopped) } else { Ok(Sent::Acknowledged) }
}

/// Sends `record` to its dead-letter topic with `dead`'s reason. A copy no retry will write (over
/// the topic's size limit, or refused) is replaced by a reference to the record (its topic,
/// partition and offset, the reason and why the copy was replaced, the key if short; no value,
/// no original headers); a reference the topic refuses stalls the partition, reported with the
/// reason, until it can be written.
async fn dead_letter(
    ctx: &PartitionCtx,
    record: &Record,
    dead: &DeadLetter<'_>,
    stop: &mut Stop,
) -> Result<(), Stopped> {
    let topic = dlq_topic(&ctx.handler_topic);
    let headers = dlq_headers(record, dead);
    let out = Outgoing { key: record.key.as_deref(), value: record.value.as_deref() };
    let deliverer = &ctx.shared.deliverer;
    if let Sent::Refused(refusal) = deliverer.send(&topic, out, &headers, stop, &ctx.health).await? {
        tracing::warn!(record = %At(record), "{}; dead-lettering a reference to the record instead", refusal.reason);
        let (key, headers) = dlq_reference_headers(record, dead, &refusal.reason);
        // An empty value, not a tombstone (which would delete the key's dead letters on a
        // compacted topic, and look like a dead-lettered tombstone).
        let out = Outgoing { key, value: Some(&[]) };
        deliverer.send_or_stall(&topic, out, &headers, stop, &ctx.health).await?;
    }
    let labels = KindLabels { topic: ctx.handler_topic.to_string(), kind: dead.cause.to_string() };
    ctx.shared.metrics.dead_lettered.get_or_create(&labels).inc();
    ctx.counters.dead_lettered.fetch_add(1, AtomicOrdering::Relaxed);
    Ok(())
}

/// Waits until the topic has a handler again, or `Err(Stopped)`.
async fn wait_for_handler(ctx: &PartitionCtx, stop: &mut Stop) -> Result<(), Stopped> {
    let mut topics = ctx.shared.registry.watch_topics();
    let topic = &*ctx.handler_topic;
    let found = stop.unless_stopped(async { topics.wait_for(|t| t.iter().any(|t| t == topic)).await.is_ok() }).await?;
    if !found {
        // The registry is gone: the host is shutting down.
        stop.stopped().await;
        return Err(Stopped);
    }
    Ok(())
}

/// A record's coordinates in log lines: `topic/partition@offset` (the original ones for a
/// redelivery). A field per event rather than a span per record, which would cost every record
/// an allocation whenever info logging is on.
pub(crate) struct At<'a>(pub &'a Record);

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.0.topic, self.0.partition, self.0.offset)
    }
}
