//! The data each handler instance's store holds, and the host side of the imports it calls.
//!
//! One [`HostState`] per instance: the WASI context (empty: no files, environment or sockets; a
//! bounded stderr), the memory cap, the instance's limits, the producer client, the deadline of
//! the call in progress, and the [`RecordScope`] of the record being handled: the calls, events
//! and log counts it collects, made anew for each record.

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

/// What the host collects while one record is handled. Made anew for each record.
#[derive(Debug, Default)]
pub struct RecordScope {
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
    /// Digests of the producer requests answered so far (see [`idempotency_key`]).
    pub requests: Vec<u64>,
    /// A producer call was cut short by the deadline: the record's outcome is `timeout`,
    /// whatever the guest answers afterwards.
    pub deadline_hit: bool,
    /// What the guest wrote to its standard error (see [`GuestStderr`]).
    pub stderr: Option<String>,
}

impl RecordScope {
    /// The scope of the record at `topic`/`partition`/`offset`.
    pub fn new(topic: &str, partition: i32, offset: i64) -> Self {
        Self { topic: topic.to_string(), partition, offset, ..Self::default() }
    }
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

    /// Bytes of every memory of the store now, as the cap counts them.
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    /// Elements of every table of the store now, as the cap counts them.
    pub fn table_elements(&self) -> usize {
        self.table_elements
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

/// The most a guest's standard error keeps per record; more is counted, not kept.
pub const MAX_STDERR_BYTES: usize = 16 * 1024;

/// A guest's standard error, kept per record up to [`MAX_STDERR_BYTES`] so that a Python
/// traceback or a JavaScript exception message reaches the handler's author (the host's log,
/// `host invoke`'s output). Writes never fail: past the cap they are counted.
#[derive(Debug, Clone, Default)]
pub struct GuestStderr(Arc<std::sync::Mutex<(Vec<u8>, usize)>>);

impl GuestStderr {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<u8>, usize)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What was written since the last call, as text (`None` when nothing was).
    pub fn take(&self) -> Option<String> {
        let mut kept = self.lock();
        let (bytes, dropped) = std::mem::take(&mut *kept);
        if bytes.is_empty() {
            return None;
        }
        let mut text = String::from_utf8_lossy(&bytes).trim_end().to_string();
        if dropped > 0 {
            text.push_str(&format!("… ({dropped} bytes more)"));
        }
        Some(text)
    }
}

impl wasmtime_wasi::cli::IsTerminal for GuestStderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for GuestStderr {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for GuestStderr {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut kept = self.lock();
        let room = MAX_STDERR_BYTES.saturating_sub(kept.0.len()).min(buf.len());
        kept.0.extend_from_slice(&buf[..room]);
        kept.1 += buf.len() - room;
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The store data of one handler instance.
pub struct HostState {
    wasi: WasiCtx,
    stderr: GuestStderr,
    http: wasmtime_wasi_http::WasiHttpCtx,
    refuse_http: RefuseHttp,
    table: ResourceTable,
    /// Linear-memory cap.
    pub memory: MemoryCap,
    limits: Arc<HandlerLimits>,
    producer: ProducerClient,
    /// When the call in progress must end.
    pub deadline: Deadline,
    /// The record being handled.
    pub scope: RecordScope,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState").field("scope", &self.scope).field("memory", &self.memory).finish_non_exhaustive()
    }
}

impl HostState {
    /// A fresh state with an empty WASI context: no preopened directory, no environment, no
    /// arguments, no stdin, stdout discarded, stderr kept per record, no network.
    pub fn new(limits: Arc<HandlerLimits>, producer: ProducerClient) -> Self {
        let stderr = GuestStderr::default();
        let wasi = WasiCtx::builder()
            .stderr(stderr.clone())
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
        Self {
            wasi,
            stderr,
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            refuse_http: RefuseHttp,
            table,
            memory: MemoryCap::new(max_bytes),
            limits,
            producer,
            deadline: Deadline::default(),
            scope: RecordScope::default(),
        }
    }

    /// Starts a call at `started` on the record at `topic`/`partition`/`offset` (a batch's first):
    /// a new scope, and a deadline one call timeout later (a batch's records share it).
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64, started: std::time::Instant) {
        self.scope = RecordScope::new(topic, partition, offset);
        self.deadline.set(Some(started + self.limits.call_timeout()));
        self.memory.exceeded = false;
    }

    /// Ends the record: what its scope collected, its standard error included.
    pub fn take_scope(&mut self) -> RecordScope {
        let mut scope = std::mem::take(&mut self.scope);
        scope.stderr = self.stderr.take();
        scope
    }

    /// Keeps the events a batch handler returned for the current record, under the same caps
    /// as `publish-event`.
    pub(super) fn push_events(&mut self, events: Vec<batch::Event>) {
        for event in events {
            if self.event_allowed().is_some_and(|max| event.payload.len() <= max) && valid_event_kind(&event.kind) {
                self.push_event(Some((event.kind, event.payload)));
            } else if self.scope.events.len() < self.limits.max_events_per_record as usize {
                // Over a size limit, not the count (which `event_allowed` counted already).
                self.push_event(None);
            }
        }
    }
}

/// An event kind is 1 to 128 bytes without control characters.
pub(super) fn valid_event_kind(kind: &str) -> bool {
    !kind.is_empty() && kind.len() <= 128 && !kind.chars().any(char::is_control)
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// `wasi:http`, linked so that toolchains whose output imports it (a default ComponentizeJS
/// build) instantiate: every outgoing request is refused. The producer API is a handler's one
/// way out.
#[derive(Debug, Default)]
struct RefuseHttp;

impl wasmtime_wasi_http::WasiHttpHooks for RefuseHttp {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                )>,
            > + Send,
    > {
        Box::new(std::future::ready(Err(wasmtime_wasi_http::Error::HttpRequestDenied)))
    }
}

impl wasmtime_wasi_http::WasiHttpView for HostState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            hooks: &mut self.refuse_http,
            table: &mut self.table,
            ctx: &mut self.http,
        }
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
    /// per-record limit is reached: such a call is counted as dropped, not recorded, so a guest
    /// calling in a loop costs the host nothing per call).
    pub(super) fn producer_call_allowed(&mut self) -> Result<(), CallError> {
        if self.scope.calls.len() >= self.limits.max_producer_calls as usize {
            self.scope.dropped = self.scope.dropped.saturating_add(1);
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
        self.scope.calls.push(CallSummary {
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
        let left = self.deadline.get().map(|d| d.saturating_duration_since(std::time::Instant::now()));
        let capped = left.is_some_and(|l| l < self.limits.producer_timeout());
        let digest = request_digest(&request);
        let result = if left.is_some_and(|l| l.is_zero()) {
            self.scope.deadline_hit = true;
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
            self.scope.deadline_hit = true;
        }
        self.answered(digest, &result);
        match &result {
            Ok(r) => summary.status = Some(r.status),
            Err(e) => summary.error = Some(e.to_string()),
        }
        self.scope.calls.push(summary);
        result
    }

    /// The idempotency key of the current record's next call with request `digest`: the same
    /// request again gets the same key until one of its calls had a definite answer.
    fn key_for(&self, digest: u64) -> String {
        let repeat = 1 + self.scope.requests.iter().filter(|d| **d == digest).count();
        idempotency_key(&self.scope.topic, self.scope.partition, self.scope.offset, digest, repeat)
    }

    /// Counts a call with request `digest` as answered when its answer is definite: a response
    /// other than 5xx or 409. A call that timed out, found no producer, or was answered 5xx or
    /// 409 (the producer may still be working on it) may be tried again under the same key.
    fn answered(&mut self, digest: u64, result: &Result<Response, CallError>) {
        if let Ok(response) = result
            && response.status < 500
            && response.status != 409
        {
            self.scope.requests.push(digest);
        }
    }

    /// Whether the current record may write another log line: the longest line kept, in bytes;
    /// `None` past the per-record cap (the line is counted as dropped).
    pub(super) fn log_line_allowed(&mut self) -> Option<usize> {
        if self.scope.log_lines >= self.limits.max_log_lines_per_record {
            self.scope.dropped = self.scope.dropped.saturating_add(1);
            return None;
        }
        self.scope.log_lines += 1;
        Some(self.limits.max_log_line_bytes as usize)
    }

    /// Writes a handler's log line, tagged with the record.
    pub(super) fn write_log(&self, level: Level, message: String) {
        let (topic, partition, offset) = (self.scope.topic.as_str(), self.scope.partition, self.scope.offset);
        match level {
            Level::Trace => tracing::trace!(target: "handler", topic, partition, offset, "{message}"),
            Level::Debug => tracing::debug!(target: "handler", topic, partition, offset, "{message}"),
            Level::Info => tracing::info!(target: "handler", topic, partition, offset, "{message}"),
            Level::Warn => tracing::warn!(target: "handler", topic, partition, offset, "{message}"),
            Level::Error => tracing::error!(target: "handler", topic, partition, offset, "{message}"),
        }
    }

    /// Whether the current record may publish another event: the largest payload accepted, in
    /// bytes; `None` past the per-record cap (the event is counted as dropped).
    pub(super) fn event_allowed(&mut self) -> Option<usize> {
        if self.scope.events.len() >= self.limits.max_events_per_record as usize {
            self.scope.dropped = self.scope.dropped.saturating_add(1);
            return None;
        }
        Some(self.limits.max_event_bytes as usize)
    }

    /// Keeps an event `(kind, payload)` for the current record; `None` (an event over a limit)
    /// is counted as dropped.
    pub(super) fn push_event(&mut self, event: Option<(String, String)>) {
        let Some((kind, payload)) = event else {
            self.scope.dropped = self.scope.dropped.saturating_add(1);
            return;
        };
        self.scope.events.push(Event {
            kind,
            payload,
            topic: self.scope.topic.clone(),
            partition: self.scope.partition,
            offset: self.scope.offset,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

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
        assert_eq!(state.scope.calls.len(), 2, "refused calls count, calls past the cap are not kept");
        assert_eq!(state.scope.dropped, 10_000);
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
