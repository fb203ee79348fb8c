//! The data each handler instance's store holds, and the host side of the imports it calls.
//!
//! One [`HostState`] per instance: the WASI context (empty: no files, environment or sockets), the
//! memory cap, the instance's limits, the producer client, and the per-record [`CallContext`] that
//! collects the calls, events and log counts of the record being handled (and, in a batch, of the
//! records before it, as [`RecordTrace`]s, and the step the guest is in: see the contract's
//! `advance`).

use super::config::HandlerLimits;
use crate::bindings::batch;
use crate::bindings::host_runtime::Level;
use crate::producer_api::{CallBounds, CallError, ProducerClient, Request, Response};
use crate::record::{CallSummary, Event};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// What the host collects while one record is handled.
#[derive(Debug, Default)]
pub struct CallContext {
    /// Record coordinates, for log fields, event tags and idempotency keys.
    pub topic: String,
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
    /// Producer calls made so far.
    pub calls: Vec<CallSummary>,
    /// Events published so far.
    pub events: Vec<Event>,
    /// Log lines written so far.
    pub log_lines: u32,
    /// Log lines, events and producer calls dropped at a cap.
    pub dropped: u32,
    /// Digests of the producer requests made so far (see [`idempotency_key`]).
    pub requests: Vec<u64>,
    /// Bytes of the events the call (a record, or every record of a batch) holds so far.
    pub event_bytes: usize,
    /// A batch's events went past what one record may hold: the batch is to be redone one
    /// record at a time (each with the budget of its own).
    pub events_over_budget: bool,
    /// When the current call's time limit runs out: producer calls get at most what is left,
    /// and the worker cuts off a guest still waiting in a host call then.
    pub deadline: Deadline,
    /// A producer call was cut short by that limit: the call's outcome is `timeout`, whatever
    /// the guest answers afterwards.
    pub deadline_hit: bool,
    /// In a batch, the offsets of its records (empty for a single record).
    pub offsets: Vec<i64>,
    /// In a batch, the index of the current step's first record (the record `next-record` or
    /// `advance` last started).
    pub index: usize,
    /// In a batch, the index the guest may `advance` to at most (one past the last record the
    /// current step may take).
    pub step_end: usize,
    /// In a batch, set when `next-record` or `advance` ended it: the number of records that have
    /// results.
    pub ended_at: Option<usize>,
    /// In a batch, what each record before the current one collected.
    pub finished: Vec<RecordTrace>,
    /// When the current record (in a batch, the current step) started.
    pub record_started: Option<std::time::Instant>,
    /// In a batch, set when the host wants it to end at the next record boundary.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
}

/// A store's current deadline, shared with the worker that runs the store: the guest's own
/// host calls and the epoch callback read it through the store, and the worker reads it while
/// the store is lent to a call in progress, to cut off a guest that waits in a host call (a WASI
/// clock or poll, for instance) past it. Cheap to clone; `None` means no deadline.
#[derive(Debug, Clone)]
pub struct Deadline(Arc<AtomicU64>);

/// The instant deadlines are counted from (nanoseconds after it; `u64::MAX` is none).
fn deadline_origin() -> std::time::Instant {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(std::time::Instant::now)
}

impl Default for Deadline {
    fn default() -> Self {
        Self(Arc::new(AtomicU64::new(u64::MAX)))
    }
}

impl Deadline {
    /// The deadline, if one is set.
    pub fn get(&self) -> Option<std::time::Instant> {
        match self.0.load(Ordering::Acquire) {
            u64::MAX => None,
            nanos => Some(deadline_origin() + std::time::Duration::from_nanos(nanos)),
        }
    }

    /// Sets (or, with `None`, clears) the deadline.
    pub fn set(&self, deadline: Option<std::time::Instant>) {
        let nanos = deadline.map_or(u64::MAX, |d| {
            u64::try_from(d.saturating_duration_since(deadline_origin()).as_nanos()).unwrap_or(u64::MAX - 1)
        });
        self.0.store(nanos, Ordering::Release);
    }
}

/// What one record of a batch collected, once the guest moved on to the next.
#[derive(Debug, Default)]
pub struct RecordTrace {
    /// Producer calls made for it.
    pub calls: Vec<CallSummary>,
    /// Events published for it.
    pub events: Vec<Event>,
    /// Log lines and events dropped at a cap.
    pub dropped: u32,
    /// Time the guest spent on it.
    pub duration: std::time::Duration,
}

/// WASI resources (pollables, streams, …) one instance may hold at once, and component-model
/// handles likewise: a few hundred bytes of host memory each, outside the guest's memory cap.
pub const MAX_HANDLES: usize = 4096;

/// The most bytes one `wasi:random` call may ask for.
pub const MAX_RANDOM_BYTES: u64 = 64 * 1024;

/// Table elements one instance may hold, all its tables together.
pub const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// Enforces the linear-memory cap on an instance as a whole (a component may define several
/// memories and tables: the cap is their sum, not a cap each), and remembers that it was hit, so
/// a failed `memory.grow` can be reported as the `memory` outcome rather than as a generic trap.
#[derive(Debug)]
pub struct MemoryCap {
    max_bytes: usize,
    /// Bytes of every memory of the store so far.
    memory_bytes: usize,
    /// Elements of every table of the store so far.
    table_elements: usize,
    /// Set when the guest asked for more than `max_bytes`.
    pub exceeded: bool,
}

impl MemoryCap {
    fn new(max_bytes: usize) -> Self {
        Self { max_bytes, memory_bytes: 0, table_elements: 0, exceeded: false }
    }
}

/// Moves `total` from `current` to `desired` for one memory or table of the store, if the new total
/// stays within `max`.
fn grow_within(total: &mut usize, current: usize, desired: usize, max: usize) -> bool {
    let grown = total.saturating_sub(current).saturating_add(desired);
    if grown > max {
        return false;
    }
    *total = grown;
    true
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if !grow_within(&mut self.memory_bytes, current, desired, self.max_bytes) {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(grow_within(&mut self.table_elements, current, desired, MAX_TABLE_ELEMENTS))
    }
}

/// The store data of one handler instance.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Linear-memory cap.
    pub memory: MemoryCap,
    limits: Arc<HandlerLimits>,
    producer: ProducerClient,
    /// The record being handled.
    pub ctx: CallContext,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState").field("ctx", &self.ctx).field("memory", &self.memory).finish_non_exhaustive()
    }
}

impl HostState {
    /// A fresh state with an empty WASI context: no preopened directory, no environment, no
    /// arguments, no stdin, stdout/stderr discarded, no network.
    pub fn new(limits: Arc<HandlerLimits>, producer: ProducerClient) -> Self {
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            // A random-bytes call is answered in host memory before the guest gets it.
            .max_random_size(MAX_RANDOM_BYTES)
            .build();
        let mut table = ResourceTable::new();
        // Every WASI handle a guest keeps (a pollable, a stream) is host memory outside its cap.
        table.set_max_capacity(MAX_HANDLES);
        let max_bytes = usize::try_from(limits.max_memory_bytes).unwrap_or(usize::MAX);
        Self { wasi, table, memory: MemoryCap::new(max_bytes), limits, producer, ctx: CallContext::default() }
    }

    /// Starts a new record at `started`: clears what the previous one collected, and sets its
    /// deadline one call timeout later.
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64, started: std::time::Instant) {
        self.ctx.stop = None;
        self.ctx.offsets.clear();
        self.ctx.index = 0;
        self.ctx.step_end = 1;
        self.ctx.ended_at = None;
        self.ctx.finished.clear();
        self.ctx.record_started = Some(started);
        self.ctx.deadline.set(Some(started + self.limits.call_timeout()));
        self.ctx.deadline_hit = false;
        self.ctx.topic.clear();
        self.ctx.topic.push_str(topic);
        self.ctx.partition = partition;
        self.ctx.offset = offset;
        self.ctx.calls.clear();
        self.ctx.requests.clear();
        self.ctx.events.clear();
        self.ctx.log_lines = 0;
        self.ctx.dropped = 0;
        self.ctx.event_bytes = 0;
        self.ctx.events_over_budget = false;
        self.memory.exceeded = false;
    }

    /// Starts a batch of `offsets` (consecutive records of `topic`/`partition`) at its first
    /// record; `next-record` and `advance` move on, unless `stop` has turned true.
    pub fn begin_batch(
        &mut self,
        topic: &str,
        partition: i32,
        offsets: impl IntoIterator<Item = i64>,
        stop: Option<tokio::sync::watch::Receiver<bool>>,
    ) {
        self.begin(topic, partition, 0, std::time::Instant::now());
        self.ctx.stop = stop;
        self.ctx.offsets.extend(offsets);
        self.ctx.offset = self.ctx.offsets.first().copied().unwrap_or_default();
    }

    /// Ends the current record at `now`: what it collected, and resets the per-record counts.
    fn take_trace(&mut self, now: std::time::Instant) -> RecordTrace {
        self.ctx.log_lines = 0;
        self.ctx.requests.clear();
        RecordTrace {
            calls: std::mem::take(&mut self.ctx.calls),
            events: std::mem::take(&mut self.ctx.events),
            dropped: std::mem::take(&mut self.ctx.dropped),
            duration: self.ctx.record_started.map_or_else(Default::default, |s| now - s),
        }
    }

    /// Ends the current step at `now`, as records `index..end` of the batch: its first record
    /// gets what the step collected, and each an equal part of its time, which is returned.
    fn end_step(&mut self, end: usize, now: std::time::Instant) -> std::time::Duration {
        let records = end.saturating_sub(self.ctx.index).max(1);
        let mut first = self.take_trace(now);
        let share = first.duration / u32::try_from(records).unwrap_or(u32::MAX);
        first.duration = share;
        self.ctx.finished.push(first);
        for _ in 1..records {
            self.ctx.finished.push(RecordTrace { duration: share, ..RecordTrace::default() });
        }
        share
    }

    /// After the guest returned `results` results: one [`RecordTrace`] per record with a
    /// result, in order, or `None` when that many results break the batch contract (more than
    /// the steps allowed, fewer than the records begun, or not the records before the index at
    /// which the host ended the batch).
    pub fn finish_batch(&mut self, results: usize, now: std::time::Instant) -> Option<Vec<RecordTrace>> {
        let allowed = match self.ctx.ended_at {
            Some(end) => results == end,
            None => results > self.ctx.index && results <= self.ctx.step_end,
        };
        if !allowed {
            return None;
        }
        if results > self.ctx.index {
            self.end_step(results, now);
        }
        Some(std::mem::take(&mut self.ctx.finished))
    }

    /// A producer-api or runtime import was called: in a batch, the current step ends with its
    /// first record (what the step did is attributed to it). `false` once the host has ended
    /// the batch: the guest is in a record that will not count, and the import must do nothing.
    fn import_used(&mut self) -> bool {
        self.ctx.step_end = self.ctx.step_end.min(self.ctx.index + 1);
        self.ctx.ended_at.is_none()
    }

    /// `advance(index)` with `index` as a position in the batch.
    fn advance_to(&mut self, index: usize) -> wasmtime::Result<usize> {
        let count = self.ctx.offsets.len();
        if self.ctx.ended_at.is_some() || index <= self.ctx.index || index >= count || index > self.ctx.step_end {
            wasmtime::bail!(
                "advance to record {index} (of {count}) is outside the batch, not after record {} or past record {} \
                 that the last step allowed",
                self.ctx.index,
                self.ctx.step_end
            );
        }
        // One clock read ends this step and starts the next.
        let now = std::time::Instant::now();
        // The step ran past its time limit before the epoch interrupted it (or in a host call,
        // which the epoch does not interrupt). A step of several records fails the batch, as an
        // interrupt would: its records are redone one by one, each with its own limit. A step
        // of one record, or one whose producer call was cut short by the limit (a record that
        // calls ends its step, so it is the step's only one), ends the batch with that record's
        // outcome `timeout`.
        if self.ctx.deadline.get().is_some_and(|deadline| now >= deadline) {
            if !self.ctx.deadline_hit && index - self.ctx.index > 1 {
                return Err(wasmtime::Trap::Interrupt.into());
            }
            self.ctx.deadline_hit = true;
        }
        let stopping = self.ctx.stop.as_ref().is_some_and(|stop| *stop.borrow());
        if self.ctx.deadline_hit || stopping {
            // The batch ends before `index`; the rest are delivered again.
            self.ctx.ended_at = Some(index);
            return Ok(0);
        }
        let per_record = self.end_step(index, now);
        self.ctx.index = index;
        self.ctx.offset = self.ctx.offsets[index];
        self.ctx.record_started = Some(now);
        self.ctx.deadline.set(Some(now + self.limits.call_timeout()));
        // Steps of about STEP_TIME at the pace so far (a quarter of the time limit if less),
        // so that a step stays well inside its limit and a stop is seen soon.
        let target = STEP_TIME.min(self.limits.call_timeout() / 4);
        let stride = if per_record.is_zero() {
            count
        } else {
            usize::try_from(target.as_nanos() / per_record.as_nanos()).unwrap_or(usize::MAX)
        };
        let stride = stride.clamp(1, count - index);
        self.ctx.step_end = index + stride;
        Ok(stride)
    }
}

/// How long a step of a batch (records between two `advance` calls) is meant to take.
const STEP_TIME: std::time::Duration = std::time::Duration::from_millis(10);

impl batch::Host for HostState {
    fn next_record(&mut self) -> wasmtime::Result<bool> {
        let next = self.ctx.index + 1;
        // Outside a batch, or after its last record, this traps as `advance` does.
        let stride = self.advance_to(next)?;
        // A guest that steps with `next-record` takes one record per step.
        self.ctx.step_end = next + 1;
        Ok(stride > 0)
    }

    fn advance(&mut self, index: u32) -> wasmtime::Result<u32> {
        let stride = self.advance_to(usize::try_from(index).unwrap_or(usize::MAX))?;
        Ok(u32::try_from(stride).unwrap_or(u32::MAX))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// The host side of `producer-api` and `runtime` (see [`super::imports`], which reads their
/// arguments out of guest memory once these allow it).
impl HostState {
    /// The handler's limits.
    pub fn limits(&self) -> &HandlerLimits {
        &self.limits
    }

    /// Whether the current record may make another producer call; the denial otherwise (the
    /// host ended the batch, or the per-record limit is reached: such a call is counted as
    /// dropped, not recorded, so a guest calling in a loop costs the host nothing per call).
    pub(super) fn producer_call_allowed(&mut self) -> Result<(), CallError> {
        if !self.import_used() {
            return Err(CallError::Denied("the host ended the batch before this record".into()));
        }
        if self.ctx.calls.len() >= self.limits.max_producer_calls as usize {
            self.ctx.dropped = self.ctx.dropped.saturating_add(1);
            return Err(CallError::Denied(format!(
                "the limit of {} producer calls per record is reached",
                self.limits.max_producer_calls
            )));
        }
        Ok(())
    }

    /// Records a call refused before it was read whole (over a size limit): it counts as one
    /// of the record's calls.
    pub(super) fn refuse_call(&mut self, denied: CallError) -> CallError {
        self.ctx.calls.push(CallSummary {
            method: String::new(),
            path: String::new(),
            status: None,
            error: Some(denied.to_string()),
        });
        denied
    }

    /// Sends `request` to the producer within what is left of the record's time limit, with an
    /// `Idempotency-Key` derived from the record and the request itself (see [`idempotency_key`]).
    pub(super) async fn call_producer(&mut self, request: Request) -> Result<Response, CallError> {
        let mut summary = CallSummary {
            method: request.method.as_str().to_string(),
            path: request.path.clone(),
            status: None,
            error: None,
        };
        let left = self.ctx.deadline.get().map(|d| d.saturating_duration_since(std::time::Instant::now()));
        let capped = left.is_some_and(|l| l < self.limits.producer_timeout());
        let digest = request_digest(&request);
        let result = if left.is_some_and(|l| l.is_zero()) {
            self.ctx.deadline_hit = true;
            Err(CallError::Timeout)
        } else {
            let key = self.key_for(digest);
            let bounds = CallBounds {
                // A producer call never outlives the handler call's own time limit.
                timeout: left.map_or(self.limits.producer_timeout(), |l| l.min(self.limits.producer_timeout())),
                max_request_bytes: self.limits.max_producer_request_bytes,
                max_response_bytes: self.limits.max_producer_response_bytes,
            };
            self.producer.call(&request, Some(&key), bounds).await
        };
        if capped && result == Err(CallError::Timeout) {
            self.ctx.deadline_hit = true;
        }
        self.answered(digest, &result);
        match &result {
            Ok(r) => summary.status = Some(r.status),
            Err(e) => summary.error = Some(e.to_string()),
        }
        self.ctx.calls.push(summary);
        result
    }

    /// The idempotency key of the current record's next call with request `digest`: the same
    /// request again gets the same key until one of its calls had a definite answer.
    fn key_for(&self, digest: u64) -> String {
        let repeat = 1 + self.ctx.requests.iter().filter(|d| **d == digest).count();
        idempotency_key(&self.ctx.topic, self.ctx.partition, self.ctx.offset, digest, repeat)
    }

    /// Counts a call with request `digest` as answered when its answer is definite: a response
    /// other than 5xx or 409. A call that timed out, found no producer, or was answered 5xx or
    /// 409 (the producer may still be working on it) may be tried again under the same key.
    fn answered(&mut self, digest: u64, result: &Result<Response, CallError>) {
        if let Ok(response) = result
            && response.status < 500
            && response.status != 409
        {
            self.ctx.requests.push(digest);
        }
    }

    /// Whether the current record may write another log line: the longest line kept, in bytes;
    /// `None` past the per-record cap (the line is counted as dropped) or after the host ended
    /// the batch.
    pub(super) fn log_line_allowed(&mut self) -> Option<usize> {
        if !self.import_used() {
            return None;
        }
        if self.ctx.log_lines >= self.limits.max_log_lines_per_record {
            self.ctx.dropped = self.ctx.dropped.saturating_add(1);
            return None;
        }
        self.ctx.log_lines += 1;
        Some(self.limits.max_log_line_bytes as usize)
    }

    /// Writes a handler's log line, tagged with the record.
    pub(super) fn write_log(&self, level: Level, message: String) {
        let (topic, partition, offset) = (self.ctx.topic.as_str(), self.ctx.partition, self.ctx.offset);
        match level {
            Level::Trace => tracing::trace!(target: "handler", topic, partition, offset, "{message}"),
            Level::Debug => tracing::debug!(target: "handler", topic, partition, offset, "{message}"),
            Level::Info => tracing::info!(target: "handler", topic, partition, offset, "{message}"),
            Level::Warn => tracing::warn!(target: "handler", topic, partition, offset, "{message}"),
            Level::Error => tracing::error!(target: "handler", topic, partition, offset, "{message}"),
        }
    }

    /// Whether the current record may publish another event: the largest payload accepted, in
    /// bytes; `None` past the per-record cap (the event is counted as dropped) or after the
    /// host ended the batch.
    pub(super) fn event_allowed(&mut self) -> Option<usize> {
        if !self.import_used() {
            return None;
        }
        if self.ctx.events.len() >= self.limits.max_events_per_record as usize {
            self.ctx.dropped = self.ctx.dropped.saturating_add(1);
            return None;
        }
        Some(self.limits.max_event_bytes as usize)
    }

    /// Keeps an event `(kind, payload)` for the current record; `None` (an event over a limit)
    /// is counted as dropped.
    pub(super) fn push_event(&mut self, event: Option<(String, String)>) {
        let Some((kind, payload)) = event else {
            self.ctx.dropped = self.ctx.dropped.saturating_add(1);
            return;
        };
        // What one call holds until its records' outcomes are sent: one record's caps (count
        // times size), however many records a batch has.
        let budget = (self.limits.max_events_per_record as usize).saturating_mul(self.limits.max_event_bytes as usize);
        let bytes = kind.len() + payload.len();
        if self.ctx.event_bytes + bytes > budget {
            self.ctx.events_over_budget = true;
            self.ctx.dropped = self.ctx.dropped.saturating_add(1);
            return;
        }
        self.ctx.event_bytes += bytes;
        self.ctx.events.push(Event {
            kind,
            payload,
            topic: self.ctx.topic.clone(),
            partition: self.ctx.partition,
            offset: self.ctx.offset,
        });
    }
}

/// A request's identity for its idempotency key: its method, path and body (not its headers,
/// which the producer does not compare either). A JSON body counts by its value (keys sorted,
/// no whitespace), as the producer compares it: a handler version that serialises the same JSON
/// otherwise sends the same request.
fn request_digest(request: &Request) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(request.method.as_str());
    hasher.update([0]);
    hasher.update(request.path.as_bytes());
    hasher.update([0]);
    match serde_json::from_slice::<serde_json::Value>(&request.body) {
        Ok(json) => hasher.update(json.to_string()),
        Err(_) => hasher.update(&request.body),
    }
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().unwrap_or_default())
}

/// Longest idempotency key sent (the producer accepts up to 255 bytes).
const MAX_KEY_BYTES: usize = 200;

/// The `Idempotency-Key` of a producer call: the record (`topic:partition:offset`), the request's
/// digest, and which repeat of that same request within the record this is (1 for the first).
/// A redelivered record, whichever handler version runs it, sends the same request under the
/// same key (so the producer answers it from its window); a different request never shares a
/// key (so a new version that calls differently is not refused as a conflict). A topic too long
/// for the key is replaced by its digest.
pub fn idempotency_key(topic: &str, partition: i32, offset: i64, request: u64, repeat: usize) -> String {
    let key = format!("{topic}:{partition}:{offset}:{request:016x}:{repeat}");
    if key.len() <= MAX_KEY_BYTES {
        return key;
    }
    let topic = hex::encode(&Sha256::digest(topic.as_bytes())[..16]);
    format!("sha256-{topic}:{partition}:{offset}:{request:016x}:{repeat}")
}

impl crate::bindings::types::Host for HostState {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::batch::Host as _;
    use std::time::{Duration, Instant};

    fn batch_of(records: i64) -> HostState {
        let mut state = HostState::new(Arc::new(HandlerLimits::default()), ProducerClient::unconfigured());
        state.begin_batch("orders", 0, 100..100 + records, None);
        state
    }

    #[test]
    fn a_batch_starts_with_a_step_of_one_record_and_quick_records_get_long_steps() {
        let mut state = batch_of(64);
        assert!(state.advance(2).is_err(), "record 0 is a step of its own");
        let stride = state.advance(1).expect("advance");
        assert!(stride > 1 && stride <= 63, "quick records: a long step ({stride})");
        assert_eq!(state.ctx.offset, 101);
        assert!(state.advance(1).is_err(), "not after the current step's first record");
        assert!(state.advance(64).is_err(), "past the batch");
    }

    #[test]
    fn slow_records_get_steps_of_one_and_an_import_ends_a_step_with_its_first_record() {
        let mut state = batch_of(8);
        // Record 0 took 20 ms: more than a step's worth.
        state.ctx.record_started = Some(Instant::now() - Duration::from_millis(20));
        assert_eq!(state.advance(1).expect("advance"), 1);
        assert!(state.advance(3).is_err(), "past what the step allowed");
        assert!(state.advance(2).expect("advance") > 1, "quick again: a longer step");
        assert!(state.event_allowed().is_some());
        state.push_event(Some(("kind".into(), "{}".into())));
        assert!(state.advance(4).is_err(), "the event ended the step at record 2");
        assert!(state.advance(3).expect("advance") >= 1);
        let traces = state.finish_batch(4, Instant::now()).expect("four results");
        assert_eq!(traces.len(), 4);
        assert_eq!(traces[2].events.len(), 1, "the event is record 2's");
        assert!(traces.iter().enumerate().all(|(i, t)| i == 2 || t.events.is_empty()));
    }

    #[test]
    fn next_record_steps_one_record_at_a_time() {
        let mut state = batch_of(8);
        assert!(state.next_record().expect("next"));
        assert!(state.advance(3).is_err(), "next-record allowed record 1 only");
        assert!(state.finish_batch(3, Instant::now()).is_none(), "three results for two records begun");
        assert_eq!(state.finish_batch(2, Instant::now()).map(|t| t.len()), Some(2));
    }

    #[test]
    fn a_step_of_several_records_past_its_limit_fails_the_batch_and_one_record_times_out() {
        let mut state = batch_of(8);
        state.advance(1).expect("advance");
        state.ctx.deadline.set(Some(Instant::now() - Duration::from_millis(1)));
        let error = state.advance(3).expect_err("two records past the limit");
        assert_eq!(error.downcast_ref::<wasmtime::Trap>(), Some(&wasmtime::Trap::Interrupt));
        let mut state = batch_of(8);
        state.advance(1).expect("advance");
        state.ctx.deadline.set(Some(Instant::now() - Duration::from_millis(1)));
        assert_eq!(state.advance(2).expect("advance"), 0, "one record past the limit ends the batch");
        assert!(state.ctx.deadline_hit, "its outcome is timeout");
        assert_eq!(state.finish_batch(2, Instant::now()).map(|t| t.len()), Some(2));
    }

    #[tokio::test]
    async fn imports_do_nothing_once_the_host_ended_the_batch() {
        let (_stop, stopped) = tokio::sync::watch::channel(true);
        let mut state = HostState::new(Arc::new(HandlerLimits::default()), ProducerClient::unconfigured());
        state.begin_batch("orders", 0, 0..8, Some(stopped));
        assert_eq!(state.advance(1).expect("advance"), 0);
        assert_eq!(state.event_allowed(), None, "no event");
        assert_eq!(state.log_line_allowed(), None, "no log line");
        let call = state.producer_call_allowed();
        assert!(matches!(call, Err(CallError::Denied(_))), "{call:?}");
        let traces = state.finish_batch(1, Instant::now()).expect("one result");
        assert!(traces[0].events.is_empty() && traces[0].calls.is_empty() && traces[0].dropped == 0);
    }

    #[test]
    fn the_results_must_match_the_steps() {
        let mut state = batch_of(8);
        assert!(state.finish_batch(2, Instant::now()).is_none(), "two results for a step of one");
        let mut state = batch_of(8);
        assert_eq!(state.finish_batch(1, Instant::now()).map(|t| t.len()), Some(1));
        let mut state = batch_of(8);
        state.advance(1).expect("advance");
        state.advance(3).expect("advance");
        assert!(state.finish_batch(3, Instant::now()).is_none(), "fewer results than records begun");
        let mut state = batch_of(8);
        state.advance(1).expect("advance");
        assert!(state.finish_batch(8, Instant::now()).is_some(), "up to the end of the step");
    }

    #[test]
    fn a_stop_ends_the_batch_before_the_record_asked_for() {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut state = HostState::new(Arc::new(HandlerLimits::default()), ProducerClient::unconfigured());
        state.begin_batch("orders", 0, 0..8, Some(stopped));
        assert!(state.advance(1).expect("advance") > 1);
        stop.send_replace(true);
        assert_eq!(state.advance(5).expect("advance"), 0, "ended before record 5");
        assert!(state.advance(6).is_err(), "the batch is over");
        assert!(state.finish_batch(6, Instant::now()).is_none(), "record 5 was never started");
        assert_eq!(state.finish_batch(5, Instant::now()).map(|t| t.len()), Some(5), "records 0-4 have results");
        let mut state = HostState::new(Arc::new(HandlerLimits::default()), ProducerClient::unconfigured());
        let (_stop, stopped) = tokio::sync::watch::channel(true);
        state.begin_batch("orders", 0, 0..8, Some(stopped));
        assert_eq!(state.advance(1).expect("advance"), 0);
        assert_eq!(state.finish_batch(1, Instant::now()).map(|t| t.len()), Some(1));
    }

    #[test]
    fn idempotency_keys_name_the_record_and_the_request_and_stay_short() {
        let key = idempotency_key("orders", 3, 42, 0xab, 1);
        assert_eq!(key, "orders:3:42:00000000000000ab:1");
        assert_ne!(key, idempotency_key("orders", 3, 42, 0xab, 2), "a repeat of the same request");
        assert_ne!(key, idempotency_key("orders", 3, 42, 0xac, 1), "another request");
        let long = idempotency_key(&"t".repeat(249), i32::MAX, i64::MAX, u64::MAX, 10_000);
        assert!(long.len() <= MAX_KEY_BYTES, "{} bytes", long.len());
        assert_ne!(long, idempotency_key(&"u".repeat(249), i32::MAX, i64::MAX, u64::MAX, 10_000));
    }

    #[test]
    fn calls_past_the_per_record_cap_are_counted_not_kept() {
        let limits = HandlerLimits { max_producer_calls: 2, ..HandlerLimits::default() };
        let mut state = HostState::new(Arc::new(limits), ProducerClient::unconfigured());
        state.begin("orders", 0, 7, Instant::now());
        for _ in 0..2 {
            assert!(state.producer_call_allowed().is_ok());
            let _ = state.refuse_call(CallError::Denied("too big".into()));
        }
        for _ in 0..10_000 {
            assert!(state.producer_call_allowed().is_err());
        }
        assert_eq!(state.ctx.calls.len(), 2, "refused calls count, calls past the cap are not kept");
        assert_eq!(state.ctx.dropped, 10_000);
    }

    #[test]
    fn memory_and_tables_are_capped_per_instance_not_per_memory() {
        use wasmtime::ResourceLimiter as _;
        let mut cap = MemoryCap::new(64 << 20);
        assert!(cap.memory_growing(0, 40 << 20, None).expect("grow"), "a first memory of 40 MiB");
        assert!(!cap.memory_growing(0, 40 << 20, None).expect("grow"), "a second 40 MiB memory is over the cap");
        assert!(cap.exceeded);
        assert!(cap.memory_growing(0, 24 << 20, None).expect("grow"), "24 MiB more fit");
        assert!(!cap.memory_growing(40 << 20, (40 << 20) + 1, None).expect("grow"), "not one byte more");
        assert!(cap.table_growing(0, MAX_TABLE_ELEMENTS / 2, None).expect("grow"));
        assert!(!cap.table_growing(0, MAX_TABLE_ELEMENTS, None).expect("grow"), "tables share one cap");
    }

    #[test]
    fn the_same_json_request_has_one_digest_however_it_is_written() {
        let request = |body: &str| Request {
            method: crate::producer_api::Method::Post,
            path: "/producer-svc/tokens".into(),
            headers: vec![],
            body: body.as_bytes().to_vec(),
        };
        assert_eq!(request_digest(&request(r#"{"a":1,"b":2}"#)), request_digest(&request("{ \"b\": 2, \"a\": 1 }")));
        assert_ne!(request_digest(&request(r#"{"a":1}"#)), request_digest(&request(r#"{"a":2}"#)));
        assert_ne!(request_digest(&request("not json")), request_digest(&request("not json ")));
    }

    #[test]
    fn a_request_keeps_its_key_until_it_has_a_definite_answer() {
        let mut state = HostState::new(Arc::new(HandlerLimits::default()), ProducerClient::unconfigured());
        state.begin("orders", 1, 5, Instant::now());
        let response = |status| Ok(Response { status, headers: vec![], body: vec![] });
        let first = state.key_for(7);
        for unanswered in
            [Err(CallError::Timeout), Err(CallError::Unreachable("down".into())), response(503), response(409)]
        {
            state.answered(7, &unanswered);
            assert_eq!(state.key_for(7), first, "tried again under the same key after {unanswered:?}");
        }
        state.answered(7, &response(201));
        assert_ne!(state.key_for(7), first, "a second request after an answer is a repeat of its own");
        assert_eq!(state.key_for(8), idempotency_key("orders", 1, 5, 8, 1), "another request");
    }
}
