//! Bindings and small helpers for writing `kafka-wasm:handler` components in Rust.
//!
//! A handler implements [`Guest`] and exports itself with [`export!`]; it may call the producer
//! ([`producer_api::call`], [`call_json`]), log ([`log`]) and publish events ([`publish_event`]):
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
//! A pure handler (one that calls nothing) may implement [`pure::PureGuest`] instead and export
//! itself with [`export_pure!`]: the host then hands it batches of records in one call (the
//! contract's `batch-handler` world), which this crate decodes and hands over one at a time.

/// The generated bindings of the `handler` world (kept in a module of their own so the export
/// macro can be public).
#[allow(unsafe_code, missing_docs, clippy::too_many_arguments)] // generated FFI glue
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "handler",
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "handler_sdk::bindings",
    });
}

pub use bindings::kafka_wasm::handler::producer_api;
pub use bindings::kafka_wasm::handler::runtime;
pub use bindings::kafka_wasm::handler::types::{HandlerError, Header, KafkaRecord};
pub use producer_api::{CallError, Method, Request, Response};
pub use runtime::{Level, log, publish_event};

/// A record handler: what a component built with this crate implements.
pub trait Guest {
    /// Handles one record: `Ok(())` when it is done, `Err(retry(..))` for a transient failure,
    /// `Err(reject(..))` for a permanent one. See the contract's `record-handler.handle`.
    fn handle(record: &KafkaRecord) -> Result<(), HandlerError>;
}

/// Exports a [`Guest`] as the component's handler (the contract's `handler` world).
#[macro_export]
macro_rules! export {
    ($guest:ty) => {
        #[doc(hidden)]
        pub struct __HandlerSdkExport;

        impl $crate::bindings::exports::kafka_wasm::handler::record_handler::Guest for __HandlerSdkExport {
            fn handle(record: $crate::KafkaRecord) -> ::core::result::Result<(), $crate::HandlerError> {
                <$guest as $crate::Guest>::handle(&record)
            }
        }

        $crate::bindings::export_bindings!(__HandlerSdkExport with_types_in $crate::bindings);
    };
}

pub mod pure;

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
