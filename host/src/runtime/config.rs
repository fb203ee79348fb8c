//! Named, validated configuration of the sandbox: per-handler limits and instance policy, and
//! engine-wide settings.
//!
//! Raw values (a `<topic>.toml` file, environment variables) are parsed into these types once, with
//! unknown keys rejected and every bound checked, so the runtime never sees an invalid value.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How instances of a handler are created and reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InstancePolicy {
    /// One instance per partition worker, reused across records; recycled after a trap or limit
    /// hit, after `recycle_after_records` records, and when the handler file is swapped.
    #[default]
    Reuse,
    /// A fresh instance for every record: strict isolation, several times the cost per record.
    Fresh,
}

/// Limits and policy for one handler. Every field has a safe default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HandlerLimits {
    /// Wall-clock limit for one call: a record, producer calls and anything the guest waits on
    /// included (enforced by epoch deadline in guest code, by capping host calls to the time
    /// left, and by cutting off a call still waiting past it). A batch's records share one.
    pub call_timeout_ms: u64,
    /// Cap on the guest's linear memory, in bytes.
    pub max_memory_bytes: u64,
    /// Producer-API calls allowed while handling one record.
    pub max_producer_calls: u32,
    /// Time limit for one producer-API call.
    pub producer_timeout_ms: u64,
    /// Largest producer-API response body accepted, in bytes.
    pub max_producer_response_bytes: u64,
    /// Largest producer-API request body accepted, in bytes.
    pub max_producer_request_bytes: u64,
    /// Events a handler may publish while handling one record.
    pub max_events_per_record: u32,
    /// Largest event payload, in bytes.
    pub max_event_bytes: u32,
    /// Log lines a handler may write while handling one record.
    pub max_log_lines_per_record: u32,
    /// Longest log line kept, in bytes (longer lines are truncated).
    pub max_log_line_bytes: u32,
    /// Instance policy.
    pub instance_policy: InstancePolicy,
    /// With `reuse`, records handled by one instance before it is replaced.
    pub recycle_after_records: u64,
    /// Most records handed to a pure batch handler in one call (`handle-batch`), when that many
    /// are waiting on the partition (1: never batch). Only under `reuse`.
    pub max_batch_records: u32,
    /// Most bytes of keys, values and headers (with the packed format's lengths and fixed fields)
    /// in one batch, and never more than a quarter of `max_memory_bytes` (a record over it goes
    /// alone).
    pub max_batch_bytes: u64,
}

impl Default for HandlerLimits {
    fn default() -> Self {
        Self {
            call_timeout_ms: 5_000,
            max_memory_bytes: 64 * 1024 * 1024,
            max_producer_calls: 16,
            producer_timeout_ms: 2_000,
            max_producer_response_bytes: 1024 * 1024,
            max_producer_request_bytes: 1024 * 1024,
            max_events_per_record: 64,
            max_event_bytes: 64 * 1024,
            max_log_lines_per_record: 256,
            max_log_line_bytes: 4 * 1024,
            instance_policy: InstancePolicy::Reuse,
            recycle_after_records: 10_000,
            max_batch_records: 64,
            max_batch_bytes: 1024 * 1024,
        }
    }
}

/// A limit that is out of its allowed range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field} = {value} is out of range: {rule}")]
pub struct InvalidLimit {
    /// The offending field.
    pub field: &'static str,
    /// Its value.
    pub value: u64,
    /// The allowed range.
    pub rule: &'static str,
}

impl HandlerLimits {
    /// Checks every bound; the runtime only accepts validated limits.
    pub fn validate(&self, max_memory_ceiling: u64) -> Result<(), InvalidLimit> {
        fn check(field: &'static str, value: u64, ok: bool, rule: &'static str) -> Result<(), InvalidLimit> {
            if ok { Ok(()) } else { Err(InvalidLimit { field, value, rule }) }
        }
        let l = self;
        check("call_timeout_ms", l.call_timeout_ms, (1..=600_000).contains(&l.call_timeout_ms), "1..=600000")?;
        check(
            "max_memory_bytes",
            l.max_memory_bytes,
            l.max_memory_bytes >= 64 * 1024 && l.max_memory_bytes <= max_memory_ceiling,
            "64 KiB up to the engine's WASM_MAX_MEMORY_BYTES",
        )?;
        check("max_producer_calls", l.max_producer_calls.into(), l.max_producer_calls <= 10_000, "0..=10000")?;
        check(
            "producer_timeout_ms",
            l.producer_timeout_ms,
            (1..=600_000).contains(&l.producer_timeout_ms),
            "1..=600000",
        )?;
        check(
            "max_producer_response_bytes",
            l.max_producer_response_bytes,
            (1..=64 * 1024 * 1024).contains(&l.max_producer_response_bytes),
            "1..=64 MiB",
        )?;
        check(
            "max_producer_request_bytes",
            l.max_producer_request_bytes,
            (1..=64 * 1024 * 1024).contains(&l.max_producer_request_bytes),
            "1..=64 MiB",
        )?;
        check(
            "max_events_per_record",
            l.max_events_per_record.into(),
            l.max_events_per_record <= 100_000,
            "0..=100000",
        )?;
        check(
            "max_event_bytes",
            l.max_event_bytes.into(),
            (1..=16 * 1024 * 1024).contains(&l.max_event_bytes),
            "1..=16 MiB",
        )?;
        check(
            "max_log_lines_per_record",
            l.max_log_lines_per_record.into(),
            l.max_log_lines_per_record <= 100_000,
            "0..=100000",
        )?;
        // Log shippers split longer lines (Docker at 16 KiB), and text after a split would start
        // a line of its own.
        check(
            "max_log_line_bytes",
            l.max_log_line_bytes.into(),
            (1..=16 * 1024).contains(&l.max_log_line_bytes),
            "1..=16 KiB",
        )?;
        check("recycle_after_records", l.recycle_after_records, l.recycle_after_records >= 1, ">= 1")?;
        check(
            "max_batch_records",
            l.max_batch_records.into(),
            (1..=10_000).contains(&l.max_batch_records),
            "1..=10000",
        )?;
        check("max_batch_bytes", l.max_batch_bytes, (1..=64 * 1024 * 1024).contains(&l.max_batch_bytes), "1..=64 MiB")?;
        Ok(())
    }

    /// The most bytes one call may pass from the guest to the host (an import's arguments, an
    /// export's results, as wasmtime counts them when it lifts them): the largest argument the
    /// limits let through (a request body with its path and headers, an event payload, a log
    /// line), plus [`HOSTCALL_MARGIN`]. A call that passes more traps, before the host copies any
    /// of it. wasmtime's own default is 128 MiB per call, far more than any handler needs.
    pub fn hostcall_bytes(&self) -> usize {
        let request = self.max_producer_request_bytes
            + crate::producer_api::validate::MAX_HEADER_BYTES as u64
            + crate::producer_api::validate::MAX_PATH_LEN as u64;
        let largest = request.max(self.max_event_bytes.into()).max(self.max_log_line_bytes.into());
        usize::try_from(largest + HOSTCALL_MARGIN).unwrap_or(usize::MAX)
    }

    /// The call's wall-clock limit.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }

    /// One producer call's limit.
    pub fn producer_timeout(&self) -> Duration {
        Duration::from_millis(self.producer_timeout_ms)
    }
}

/// What one guest-to-host call may pass beyond the largest argument the limits let through:
/// room for the other arguments and results (a batch's results with their reasons) and for the
/// log lines and reasons a handler writes longer than the host keeps.
pub const HOSTCALL_MARGIN: u64 = 1 << 20;

/// The compilation cache's directory when `CACHE_DIR` is not set: one per user, in the system's
/// temporary directory.
pub fn default_cache_dir() -> std::path::PathBuf {
    let euid = rustix::process::geteuid().as_raw();
    std::env::temp_dir().join(format!("kafka-wasm-host-cache-{euid}"))
}

/// Engine-wide settings, fixed for the life of the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Instances the pooling allocator can hold at once (all handlers, all partitions).
    pub max_instances: u32,
    /// Ceiling on any handler's `max_memory_bytes`; the pool reserves slots of this size.
    pub max_memory_bytes: u64,
    /// Epoch tick: the granularity of the time limit.
    pub epoch_tick: Duration,
    /// Largest `.wasm` file accepted.
    pub max_component_bytes: u64,
    /// Where compiled components are kept (see `runtime::cache`); `None`: compiled at each load.
    pub cache_dir: Option<std::path::PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_instances: 256,
            max_memory_bytes: 256 * 1024 * 1024,
            epoch_tick: Duration::from_millis(5),
            max_component_bytes: 64 * 1024 * 1024,
            cache_dir: None,
        }
    }
}
