//! The data each handler instance's store holds, and the host side of the imports it calls.
//!
//! One [`HostState`] per instance: the WASI context (empty: no files, environment or sockets), the
//! memory cap, the instance's limits, the producer client, and the per-record [`CallContext`] that
//! collects the calls, events and log counts of the record being handled (and, in a batch, of the
//! records before it, as [`RecordTrace`]s).

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
    /// In a batch, the index of the current record.
    pub index: usize,
    /// In a batch, what each record before the current one collected.
    pub finished: Vec<RecordTrace>,
    /// When the current record started.
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
    /// record; `next-record` moves on, unless `stop` has turned true.
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
    pub fn take_trace(&mut self, now: std::time::Instant) -> RecordTrace {
        self.ctx.log_lines = 0;
        RecordTrace {
            calls: std::mem::take(&mut self.ctx.calls),
            events: std::mem::take(&mut self.ctx.events),
            dropped: std::mem::take(&mut self.ctx.dropped),
            duration: self.ctx.record_started.map_or_else(Default::default, |s| now - s),
        }
    }
}

impl batch::Host for HostState {
    fn next_record(&mut self) -> wasmtime::Result<bool> {
        let next = self.ctx.index + 1;
        let Some(&offset) = self.ctx.offsets.get(next) else {
            wasmtime::bail!("next-record was called outside a batch or after the batch's last record");
        };
        // One clock read ends this record and starts the next.
        let now = std::time::Instant::now();
        // The record ran out of time in a host call (the epoch only interrupts guest code), or
        // a producer call was cut short by the limit: its outcome is `timeout`, which ends the
        // batch with it.
        if self.ctx.deadline.is_some_and(|deadline| now >= deadline) {
            self.ctx.deadline_hit = true;
        }
        if self.ctx.deadline_hit {
            return Ok(false);
        }
        if self.ctx.stop.as_ref().is_some_and(|stop| *stop.borrow()) {
            // The batch ends with the current record; the rest are delivered again.
            return Ok(false);
        }
        let trace = self.take_trace(now);
        self.ctx.finished.push(trace);
        self.ctx.index = next;
        self.ctx.offset = offset;
        self.ctx.record_started = Some(now);
        self.ctx.deadline = Some(now + self.limits.call_timeout());
        Ok(true)
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
