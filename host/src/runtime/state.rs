//! The data each handler instance's store holds, and the host side of the imports it calls.
//!
//! One [`HostState`] per instance: the WASI context (empty: no files, environment or sockets), the
//! memory cap, the instance's limits, the producer client, and the per-record [`CallContext`] that
//! collects the calls, events and log counts of the record being handled (and, in a batch, of the
//! records before it, as [`RecordTrace`]s, and the step the guest is in: see the contract's
//! `advance`).

use super::config::HandlerLimits;
use crate::bindings::batch;
use crate::bindings::host_runtime::{self, Level};
use crate::bindings::producer_api::{self, CallError as WitCallError};
use crate::producer_api::{CallBounds, CallError, Method, ProducerClient, Request};
use crate::record::{CallSummary, Event};
use std::sync::Arc;
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
    /// Log lines and events dropped at a cap.
    pub dropped: u32,
    /// When the current call's time limit runs out: producer calls get at most what is left.
    pub deadline: Option<std::time::Instant>,
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

/// Enforces the linear-memory cap and remembers that it was hit, so a failed `memory.grow` can be
/// reported as the `memory` outcome rather than as a generic trap.
#[derive(Debug)]
pub struct MemoryCap {
    max_bytes: usize,
    /// Set when the guest asked for more than `max_bytes`.
    pub exceeded: bool,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
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
        let wasi = WasiCtx::builder().allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false).build();
        let max_bytes = usize::try_from(limits.max_memory_bytes).unwrap_or(usize::MAX);
        Self {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryCap { max_bytes, exceeded: false },
            limits,
            producer,
            ctx: CallContext::default(),
        }
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
        self.ctx.deadline = Some(started + self.limits.call_timeout());
        self.ctx.deadline_hit = false;
        self.ctx.topic.clear();
        self.ctx.topic.push_str(topic);
        self.ctx.partition = partition;
        self.ctx.offset = offset;
        self.ctx.calls.clear();
        self.ctx.events.clear();
        self.ctx.log_lines = 0;
        self.ctx.dropped = 0;
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
        if self.ctx.deadline.is_some_and(|deadline| now >= deadline) {
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
        self.ctx.deadline = Some(now + self.limits.call_timeout());
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

impl From<producer_api::Method> for Method {
    fn from(m: producer_api::Method) -> Self {
        match m {
            producer_api::Method::Get => Method::Get,
            producer_api::Method::Post => Method::Post,
            producer_api::Method::Put => Method::Put,
            producer_api::Method::Patch => Method::Patch,
            producer_api::Method::Delete => Method::Delete,
        }
    }
}

impl From<CallError> for WitCallError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Unreachable(m) => WitCallError::Unreachable(m),
            CallError::Timeout => WitCallError::Timeout,
            CallError::Denied(m) => WitCallError::Denied(m),
            CallError::TooLarge(n) => WitCallError::TooLarge(n),
        }
    }
}

impl producer_api::Host for HostState {
    async fn call(&mut self, request: producer_api::Request) -> Result<producer_api::Response, WitCallError> {
        if !self.import_used() {
            return Err(WitCallError::Denied("the host ended the batch before this record".into()));
        }
        let request =
            Request { method: request.method.into(), path: request.path, headers: request.headers, body: request.body };
        let mut summary = CallSummary {
            method: request.method.as_str().to_string(),
            path: request.path.clone(),
            status: None,
            error: None,
        };
        let left = self.ctx.deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        let capped = left.is_some_and(|l| l < self.limits.producer_timeout());
        let result = if left.is_some_and(|l| l.is_zero()) {
            self.ctx.deadline_hit = true;
            Err(CallError::Timeout)
        } else if self.ctx.calls.len() >= self.limits.max_producer_calls as usize {
            Err(CallError::Denied(format!(
                "the limit of {} producer calls per record is reached",
                self.limits.max_producer_calls
            )))
        } else {
            let key =
                format!("{}:{}:{}:{}", self.ctx.topic, self.ctx.partition, self.ctx.offset, self.ctx.calls.len() + 1);
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
        match &result {
            Ok(r) => summary.status = Some(r.status),
            Err(e) => summary.error = Some(e.to_string()),
        }
        self.ctx.calls.push(summary);
        result
            .map(|r| producer_api::Response { status: r.status, headers: r.headers, body: r.body })
            .map_err(Into::into)
    }
}

impl host_runtime::Host for HostState {
    fn log(&mut self, level: Level, mut message: String) {
        if !self.import_used() {
            return;
        }
        if self.ctx.log_lines >= self.limits.max_log_lines_per_record {
            self.ctx.dropped += 1;
            return;
        }
        self.ctx.log_lines += 1;
        let max = self.limits.max_log_line_bytes as usize;
        if message.len() > max {
            let cut = (0..=max).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
            message.truncate(cut);
            message.push('…');
        }
        let (topic, partition, offset) = (self.ctx.topic.as_str(), self.ctx.partition, self.ctx.offset);
        match level {
            Level::Trace => tracing::trace!(target: "handler", topic, partition, offset, "{message}"),
            Level::Debug => tracing::debug!(target: "handler", topic, partition, offset, "{message}"),
            Level::Info => tracing::info!(target: "handler", topic, partition, offset, "{message}"),
            Level::Warn => tracing::warn!(target: "handler", topic, partition, offset, "{message}"),
            Level::Error => tracing::error!(target: "handler", topic, partition, offset, "{message}"),
        }
    }

    fn publish_event(&mut self, kind: String, payload: String) {
        if !self.import_used() {
            return;
        }
        let too_many = self.ctx.events.len() >= self.limits.max_events_per_record as usize;
        let too_big = payload.len() > self.limits.max_event_bytes as usize;
        let bad_kind = kind.is_empty() || kind.len() > 128 || kind.chars().any(char::is_control);
        if too_many || too_big || bad_kind {
            self.ctx.dropped += 1;
            return;
        }
        self.ctx.events.push(Event {
            kind,
            payload,
            topic: self.ctx.topic.clone(),
            partition: self.ctx.partition,
            offset: self.ctx.offset,
        });
    }
}

impl crate::bindings::types::Host for HostState {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::batch::Host as _;
    use crate::bindings::host_runtime::Host as _;
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
        state.publish_event("kind".into(), "{}".into());
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
        state.ctx.deadline = Some(Instant::now() - Duration::from_millis(1));
        let error = state.advance(3).expect_err("two records past the limit");
        assert_eq!(error.downcast_ref::<wasmtime::Trap>(), Some(&wasmtime::Trap::Interrupt));
        let mut state = batch_of(8);
        state.advance(1).expect("advance");
        state.ctx.deadline = Some(Instant::now() - Duration::from_millis(1));
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
        state.publish_event("kind".into(), "{}".into());
        state.log(Level::Info, "line".into());
        let call = producer_api::Host::call(
            &mut state,
            producer_api::Request {
                method: producer_api::Method::Get,
                path: "/producer-svc/ping".into(),
                headers: vec![],
                body: vec![],
            },
        )
        .await;
        assert!(matches!(call, Err(WitCallError::Denied(_))), "{call:?}");
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
}
