//! One task per assigned partition: takes the partition's records in offset order and runs each
//! to a final outcome ([`flow::handle`]), many at once within the topic's `[concurrency]`: under
//! `key` ordering the records of one key one after another and other keys side by side, under
//! `partition` one record at a time, under `none` in no order; at most `max_in_flight` taken at
//! once ([`Lanes`]). The offset stored is always the first one whose outcome is not final
//! ([`Offsets`]), so a crash repeats at most the records taken since the last commit.
//!
//! A pure batch handler gets consecutive records in one `handle-batch` call, in partition order,
//! once nothing else of the partition is in flight. A retry topic's copy is taken only once its
//! time has come, so the copies behind it wait with it and none is taken early.
//!
//! Told to stop (a revoke, a shutdown), the task takes no more records and lets the records it
//! took finish (those waiting for their key included), so the records after a finished one need
//! not be handled again; a record abandoned (a send cut short) abandons the records of its key
//! behind it. The consumer bounds the drain with `DRAIN_TIMEOUT_MS`.

use super::Shared;
use super::consumer::HostContext;
use super::flow::{self, At, Item, PartitionCtx};
use super::lanes::{Lane, Lanes, Offsets};
use super::stop::{Stop, Stopped};
use crate::config::ConcurrencySettings;
use crate::handlers::HandlerCode;
use crate::metrics::{KindLabels, TopicLabels};
use crate::record::Record;
use crate::runtime::BatchInvocation;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use rdkafka::consumer::base_consumer::PartitionQueue;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The handle the consumer keeps for a partition's task.
#[derive(Debug)]
pub(crate) struct PartitionWorker {
    /// Set to stop taking records and finish those taken.
    pub stop: watch::Sender<bool>,
    /// The task.
    pub join: JoinHandle<()>,
}

/// Starts the task for `topic`/`partition`, reading the partition's own librdkafka queue.
///
/// Backpressure is librdkafka's: the task takes a record only when it has room for one, and
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
    let (stop, stop_rx) = Stop::new();
    let intake = Intake { queue, ready, pending: VecDeque::new() };
    let join = shared.runtime.spawn(run(shared.clone(), topic, partition, intake, stop_rx));
    PartitionWorker { stop, join }
}

/// Where a partition's records come from: its queue, after the records polled and not taken
/// (the rest of a batch, a batch that failed, a record that waits for the records in flight).
struct Intake {
    queue: PartitionQueue<HostContext>,
    ready: Arc<Notify>,
    pending: VecDeque<Record>,
}

impl Intake {
    /// The next record, without waiting. A fetch error (the broker refuses the topic, a record
    /// cannot be decoded) is logged and reported until a record of the partition is final again.
    fn poll(&mut self, ctx: &PartitionCtx) -> Option<Record> {
        if let Some(record) = self.pending.pop_front() {
            return Some(record);
        }
        loop {
            match self.queue.poll(Duration::ZERO)? {
                Ok(message) => return Some(crate::record::from_message(&message)),
                Err(e) => {
                    tracing::warn!("partition queue: {e}");
                    ctx.health.failing(&format!("cannot fetch: {e}"));
                }
            }
        }
    }

    /// Puts records (consecutive, in offset order) back, before what is pending.
    fn put_back(&mut self, records: impl IntoIterator<Item = Record, IntoIter: DoubleEndedIterator>) {
        for record in records.into_iter().rev() {
            self.pending.push_front(record);
        }
    }
}

/// A record's run, as the task learns of its end.
struct Finished {
    offset: i64,
    lane: Lane,
    result: Result<(), Stopped>,
}

/// What a record waiting for its key carries.
struct Waiting {
    item: Item,
    since: Instant,
}

/// Why the task stopped taking records for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// The queue is empty: wait for it.
    Starved,
    /// As many records as allowed are taken: wait for one to finish.
    Full,
    /// A batch waits for the records in flight to finish.
    ForBatch,
    /// A retry copy waits for its time.
    Due,
}

async fn run(shared: Arc<Shared>, topic: String, partition: i32, mut intake: Intake, mut stop: Stop) {
    let ctx = PartitionCtx::new(&shared, &topic, partition);
    let mut lanes: Lanes<Waiting> = Lanes::new(1);
    let mut offsets = Offsets::default();
    let mut stored: Option<i64> = None;
    let mut running = FuturesUnordered::new();
    // A retry copy read but not taken until its time.
    let mut due: Option<(Item, Instant)> = None;
    // Records to handle one by one (after a failed batch) before batching again.
    let mut singles = 0usize;
    let mut stopping = false;
    tracing::debug!(topic, partition, "partition worker started");
    loop {
        let mut held = Held::Full;
        if !stopping {
            let concurrency = ctx.handler().map(|h| h.settings.concurrency.clone()).unwrap_or_default();
            lanes.set_max_in_flight(concurrency.max_in_flight as usize);
            if let Some((item, _)) = due.take_if(|(_, at)| *at <= Instant::now())
                && let Some((item, lane)) = take(&ctx, &concurrency, item, &mut lanes, &mut offsets)
            {
                running.push(run_one(&ctx, item, lane, stop.clone()));
            }
            held = if due.is_some() { Held::Due } else { Held::Full };
            while due.is_none() && lanes.has_room() {
                let Some(record) = intake.poll(&ctx) else {
                    held = Held::Starved;
                    break;
                };
                // A busy partition must not starve the other tasks on its thread (HTTP, other
                // partitions): a handler call often completes without ever yielding.
                tokio::task::consume_budget().await;
                if singles == 0 && !ctx.from_retry_topic && takes_batches(&ctx) {
                    // Batches keep partition order: the records in flight finish first.
                    if !running.is_empty() {
                        intake.put_back([record]);
                        held = Held::ForBatch;
                        break;
                    }
                    match run_batch(&ctx, record, &mut intake, &mut offsets, &mut stored, &stop).await {
                        BatchDone::Handled => continue,
                        BatchDone::Failed(n) => {
                            singles = n;
                            continue;
                        }
                        BatchDone::Stopped => {
                            stopping = true;
                            break;
                        }
                    }
                }
                singles = singles.saturating_sub(1);
                let item = Item::consumed(&ctx, record);
                let wait = item.wait(&ctx);
                if !wait.is_zero() {
                    due = Some((item, Instant::now() + wait));
                    held = Held::Due;
                    break;
                }
                if let Some((item, lane)) = take(&ctx, &concurrency, item, &mut lanes, &mut offsets) {
                    running.push(run_one(&ctx, item, lane, stop.clone()));
                }
            }
        }
        ctx.in_flight.set(lanes.taken() as i64);
        if stopping && running.is_empty() {
            break;
        }
        let due_at = due.as_ref().map(|(_, at)| *at);
        tokio::select! {
            biased;
            Some(Finished { offset, lane, result }) = running.next() => match result {
                Ok(()) => {
                    if let Some(next) = offsets.finish(offset)
                        && stored.is_none_or(|s| next > s)
                    {
                        ctx.store_offset(next);
                        stored = Some(next);
                    }
                    if let Some(Waiting { item, since }) = lanes.finish(&lane) {
                        ctx.key_wait.observe(since.elapsed().as_secs_f64());
                        running.push(run_one(&ctx, item, lane, stop.clone()));
                    }
                }
                // Not final: delivered again, with the records of its key behind it.
                Err(Stopped) => {
                    let _never_started = lanes.abandon(&lane);
                }
            },
            () = stop.stopped(), if !stopping => {
                stopping = true;
                due = None;
            }
            () = tokio::time::sleep_until(due_at.unwrap_or_else(Instant::now)), if held == Held::Due && !stopping => {}
            () = intake.ready.notified(), if held == Held::Starved && !stopping => {}
        }
    }
    ctx.in_flight.set(0);
    tracing::debug!(topic, partition, "partition worker stopped");
}

/// Takes `item`: its offset is open until it is final. Returns it with its lane when it may run
/// now; it waits in its lane while a record of its key runs.
fn take(
    ctx: &PartitionCtx,
    concurrency: &ConcurrencySettings,
    item: Item,
    lanes: &mut Lanes<Waiting>,
    offsets: &mut Offsets,
) -> Option<(Item, Lane)> {
    offsets.take(item.offset);
    ctx.taken(item.offset);
    let lane = Lane::of(concurrency.ordering, item.record.key.as_deref());
    let Waiting { item, .. } = lanes.take(lane.clone(), Waiting { item, since: Instant::now() })?;
    Some((item, lane))
}

/// Runs one record to its end.
async fn run_one(ctx: &PartitionCtx, item: Item, lane: Lane, stop: Stop) -> Finished {
    let offset = item.offset;
    let result = flow::handle(ctx, item, stop, None).await;
    Finished { offset, lane, result }
}

/// Whether the topic's handler takes batches now.
fn takes_batches(ctx: &PartitionCtx) -> bool {
    match ctx.handler().as_deref().map(|h| &h.code) {
        Some(HandlerCode::Wasm(module)) => module.takes_batches(),
        // Native logic (benchmarks) goes through the same batches as a component would.
        #[cfg(feature = "native-handlers")]
        Some(HandlerCode::Native(_)) => true,
        None => false,
    }
}

/// What became of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchDone {
    /// Its handled records are final (offsets stored); the rest are pending again.
    Handled,
    /// It failed as a whole; its records are pending again, this many to go one by one.
    Failed(usize),
    /// Told to stop.
    Stopped,
}

/// Runs the batch that starts with `record` (more of the records pending or waiting in the
/// queue, never waiting for one, within the handler's batch limits) through the handler in one
/// call. Each handled record then goes the way a single record's first attempt goes (the same
/// accounting, events, retries and dead letters), in offset order, its offset marked once final
/// and handed to librdkafka once for the batch. The records after the last handled one, or all
/// of them when the batch failed, are pending again.
async fn run_batch(
    ctx: &PartitionCtx,
    record: Record,
    intake: &mut Intake,
    offsets: &mut Offsets,
    stored: &mut Option<i64>,
    stop: &Stop,
) -> BatchDone {
    let Some(handler) = ctx.handler() else {
        intake.put_back([record]);
        return BatchDone::Failed(1);
    };
    let limits = match &handler.code {
        HandlerCode::Wasm(module) => module.limits().as_ref(),
        #[cfg(feature = "native-handlers")]
        HandlerCode::Native(_) => &handler.settings.limits,
    };
    let batch = gather(ctx, limits, record, intake);
    let n = batch.len();
    if n == 1 {
        intake.put_back(batch);
        return BatchDone::Failed(1);
    }
    let metrics = &ctx.shared.metrics;
    let result = match &handler.code {
        HandlerCode::Wasm(module) => {
            let mut lease = ctx.shared.instances.lease(module).await;
            metrics.in_flight.inc_by(n as i64);
            let result = lease.worker().invoke_batch(&batch).await;
            metrics.in_flight.dec_by(n as i64);
            result
        }
        #[cfg(feature = "native-handlers")]
        HandlerCode::Native(native) => BatchInvocation::Handled(native.invoke_batch(&batch)),
    };
    let kind = |kind: &str| KindLabels { topic: ctx.handler_topic.to_string(), kind: kind.to_string() };
    let invocations = match result {
        BatchInvocation::Failed(reason) => {
            metrics.batches.get_or_create(&kind("failed")).inc();
            tracing::warn!(record = %At(&batch[0]), records = n, "a batch failed ({reason}); handling its records one by one");
            intake.put_back(batch);
            return BatchDone::Failed(n);
        }
        BatchInvocation::Handled(invocations) => invocations,
    };
    metrics.batches.get_or_create(&kind("handled")).inc();
    let label = TopicLabels { topic: ctx.handler_topic.to_string() };
    metrics.batched_records.get_or_create(&label).inc_by(invocations.len() as u64);
    let mut records = batch.into_iter();
    let mut done = BatchDone::Handled;
    let mut last = None;
    for invocation in invocations {
        let Some(record) = records.next() else { break };
        let item = Item::consumed(ctx, record);
        let offset = item.offset;
        offsets.take(offset);
        ctx.taken(offset);
        if flow::handle(ctx, item, stop.clone(), Some((invocation, &handler.code))).await.is_err() {
            done = BatchDone::Stopped;
            break;
        }
        // Marked at once: a stop or revoke that cuts the batch short commits every record
        // finished so far.
        if let Some(next) = offsets.finish(offset) {
            ctx.mark_final(next);
            last = Some(next);
        }
    }
    if let Some(next) = last {
        ctx.store_offset(next);
        *stored = Some(next);
    }
    intake.put_back(records);
    done
}

/// The batch that starts with `record`: more of the records pending, then of those waiting in
/// the partition's queue (never waiting for one), within the handler's batch limits.
fn gather(
    ctx: &PartitionCtx,
    limits: &crate::runtime::HandlerLimits,
    record: Record,
    intake: &mut Intake,
) -> Vec<Record> {
    // A batch is copied into the guest whole: keep it well inside the guest's memory cap.
    let max_bytes = limits.max_batch_bytes.min(limits.max_memory_bytes / 4);
    let max_records = limits.max_batch_records as usize;
    let size = crate::runtime::packed::encoded_len;
    let mut bytes = size(&record);
    let mut batch = vec![record];
    while batch.len() < max_records {
        let Some(next) = intake.poll(ctx) else { break };
        let next_bytes = size(&next);
        if bytes + next_bytes > max_bytes {
            intake.put_back([next]);
            break;
        }
        bytes += next_bytes;
        batch.push(next);
    }
    batch
}
