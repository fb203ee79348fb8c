//! Bindings and small helpers for writing `kafka-wasm:handler` components in Rust.
//!
//! A handler implements [`Guest`] and exports itself with [`export!`]:
//!
//! ```ignore
//! struct MyHandler;
//! impl handler_sdk::Guest for MyHandler {
//!     fn handle(record: &handler_sdk::KafkaRecord) -> Result<(), handler_sdk::HandlerError> {
//!         let user: MyUser = handler_sdk::json_value(record)?;
//!         Ok(())
//!     }
//! }
//! handler_sdk::export!(MyHandler);
//! ```
//!
//! The component targets the contract's `packed-batch-handler` world: besides `handle`, it
//! exports `handle-packed`, which this crate implements by decoding the packed records one at a
//! time (into the buffers of the record before, so a batch allocates only where a record has
//! a field or header the one before lacked) and calling
//! [`Guest::handle`] for each in turn (telling the host where it is only when it must: see the
//! contract's `advance`), stopping at the first
//! that does not end `ok`. A handler written with this crate gets batches
//! for free and needs no state of its own for them.

/// The generated bindings (kept in a module of their own so the export macro can be public).
/// Call the imports through [`producer_api`] and [`runtime`], not through these: in a batch,
/// the wrappers give a record its own step before its first import, as the contract's
/// `advance` requires (a batch that skips this is redone record by record).
#[allow(unsafe_code, missing_docs, clippy::too_many_arguments)] // generated FFI glue
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "packed-batch-handler",
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "handler_sdk::bindings",
    });
}

pub use bindings::kafka_wasm::handler::types::{Header, PackedRecords};
pub use bindings::{HandlerError, KafkaRecord};
pub use producer_api::{CallError, Method, Request, Response};
pub use runtime::{Level, log, publish_event};

/// The contract's `producer-api`: calls to the producer service.
pub mod producer_api {
    pub use crate::bindings::kafka_wasm::handler::producer_api::{CallError, Method, Request, Response};

    /// Sends one request to the producer service and waits for its response (the contract's
    /// `call`). In a batch, the record gets a step of its own first (see the contract's
    /// `advance`); if the host ends the batch there instead, nothing is sent, and the record's
    /// result will not count.
    pub fn call(request: &Request) -> Result<Response, CallError> {
        if !crate::steps::before_import() {
            return Err(CallError::Denied("the host ended the batch before this record".into()));
        }
        crate::bindings::kafka_wasm::handler::producer_api::call(request)
    }
}

/// The contract's `runtime`: logging and the live event stream.
pub mod runtime {
    use crate::bindings::kafka_wasm::handler::runtime as host;
    pub use crate::bindings::kafka_wasm::handler::runtime::Level;

    /// Writes a log line (the contract's `log`); in a batch, as for
    /// [`producer_api::call`](crate::producer_api::call).
    pub fn log(level: Level, message: &str) {
        if crate::steps::before_import() {
            host::log(level, message);
        }
    }

    /// Publishes an event (the contract's `publish-event`); in a batch, as for
    /// [`producer_api::call`](crate::producer_api::call).
    pub fn publish_event(kind: &str, payload: &str) {
        if crate::steps::before_import() {
            host::publish_event(kind, payload);
        }
    }
}

/// A record handler: what a component built with this crate implements.
pub trait Guest {
    /// Handles one record: `Ok(())` when it is done, `Err(retry(..))` for a transient failure,
    /// `Err(reject(..))` for a permanent one. See the contract's `handle`. The record is lent:
    /// in a batch, the SDK decodes each record into the buffers of the one before.
    fn handle(record: &KafkaRecord) -> Result<(), HandlerError>;
}

/// Handles packed records with `G`: each record in turn, decoded just before it is handled,
/// `advance` when the host's step is used up or a record used an import, stopping at the first that does not end `ok` (its error is the
/// last result) or when the host ends the batch. See the contract's `handle-packed`. Records
/// that do not decode are the host's bug: this panics (the call traps, and the host handles the
/// batch's records one by one with `handle`).
pub fn handle_packed<G: Guest>(records: PackedRecords) -> Vec<Result<(), HandlerError>> {
    let count = records.count as usize;
    // Never trust the count with an allocation: no record takes less than 17 bytes.
    let mut results = Vec::with_capacity(count.min(records.data.len() / packed::MIN_RECORD_BYTES));
    let mut decoder = packed::Decoder::new(records);
    let mut record = decoder.blank();
    let batch = steps::Batch::begin();
    for i in 0..count {
        // Tells the host when the step is used up or the record before used an import; the
        // host may end the batch there (it is stopping).
        if !batch.start(u32::try_from(i).unwrap_or(u32::MAX)) {
            break;
        }
        if let Err(e) = decoder.read_into(&mut record) {
            panic!("undecodable packed records: {e}");
        }
        let result = G::handle(&record);
        if batch.abandoned() {
            // The host ended the batch before this record, at its first import call.
            break;
        }
        let last = result.is_err();
        results.push(result);
        if last {
            break;
        }
    }
    // A batch the host ran to its end must have used the buffer up exactly.
    if results.len() == count
        && let Err(e) = decoder.finish()
    {
        panic!("undecodable packed records: {e}");
    }
    results
}

/// Exports a [`Guest`] as the component's handler (`handle` and `handle-packed`).
#[macro_export]
macro_rules! export {
    ($guest:ty) => {
        #[doc(hidden)]
        pub struct __HandlerSdkExport;

        impl $crate::bindings::Guest for __HandlerSdkExport {
            fn handle(record: $crate::KafkaRecord) -> ::core::result::Result<(), $crate::HandlerError> {
                <$guest as $crate::Guest>::handle(&record)
            }

            fn handle_packed(
                records: $crate::PackedRecords,
            ) -> ::std::vec::Vec<::core::result::Result<(), $crate::HandlerError>> {
                $crate::handle_packed::<$guest>(records)
            }
        }

        $crate::bindings::export_bindings!(__HandlerSdkExport with_types_in $crate::bindings);
    };
}

pub mod packed;
mod steps;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A transient failure: the host will deliver the record again later.
pub fn retry(reason: impl Into<String>) -> HandlerError {
    HandlerError::Retry(reason.into())
}

/// A permanent failure: the host dead-letters the record.
pub fn reject(reason: impl Into<String>) -> HandlerError {
    HandlerError::Reject(reason.into())
}

/// Parses the record's value as JSON of type `T`; a tombstone or malformed JSON is a `reject`
/// whose reason says what is wrong.
pub fn json_value<T: DeserializeOwned>(record: &KafkaRecord) -> Result<T, HandlerError> {
    let value = record.value.as_deref().ok_or_else(|| reject("the record has no value (tombstone)"))?;
    serde_json::from_slice(value).map_err(|e| reject(format!("malformed value: {e}")))
}

/// Sends `body` as JSON to the producer service at `path` with `method`.
pub fn call_json<B: Serialize>(method: Method, path: &str, body: &B) -> Result<Response, CallError> {
    let body = serde_json::to_vec(body).map_err(|e| CallError::Denied(format!("cannot encode the body: {e}")))?;
    producer_api::call(&Request {
        method,
        path: path.to_string(),
        headers: vec![("content-type".to_string(), "application/json".to_string())],
        body,
    })
}

/// The disposition a failed producer call implies: a `retry` when the producer may recover
/// (unreachable, timed out), a `reject` when a retry cannot help (the host denied the call, the
/// answer is too large).
pub fn call_failed(what: &str, error: CallError) -> HandlerError {
    match error {
        CallError::Unreachable(m) => retry(format!("{what}: producer unreachable: {m}")),
        CallError::Timeout => retry(format!("{what}: producer timed out")),
        CallError::Denied(m) => reject(format!("{what}: call denied by the host: {m}")),
        CallError::TooLarge(n) => reject(format!("{what}: producer answer over {n} bytes")),
    }
}

/// The disposition an unexpected HTTP status implies: a `retry` for 5xx, 408, 429 and 409 (the
/// producer may recover; its 409 means an earlier attempt with the same `Idempotency-Key` is
/// still in progress, as when its publish outlived this handler's call timeout), a `reject` for
/// any other status (the request itself is wrong).
pub fn status_failed(what: &str, response: &Response) -> HandlerError {
    let body = String::from_utf8_lossy(&response.body);
    let body: String = body.chars().take(200).collect();
    let reason = format!("{what}: producer answered {}: {body}", response.status);
    if response.status >= 500 || matches!(response.status, 408 | 409 | 429) { retry(reason) } else { reject(reason) }
}

/// Publishes an event whose payload is `payload` as JSON.
pub fn publish_json<P: Serialize>(kind: &str, payload: &P) {
    match serde_json::to_string(payload) {
        Ok(text) => publish_event(kind, &text),
        Err(e) => log(Level::Error, &format!("cannot encode the {kind} event: {e}")),
    }
}

/// Whether `s` looks like an RFC 3339 UTC timestamp (`2026-11-26T13:52:00Z`, fractional seconds
/// allowed). A syntactic check: the producer is the authority on the instant itself.
pub fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let fixed = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && matches!(b[10], b'T' | b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !fixed {
        return false;
    }
    let rest = &s[19..];
    let rest = match rest.strip_prefix('.') {
        Some(frac) => frac.trim_start_matches(|c: char| c.is_ascii_digit()),
        None => rest,
    };
    matches!(rest, "Z" | "z" | "+00:00")
}

/// Whether `s` is a UUID in its hyphenated text form.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}
