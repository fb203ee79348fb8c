//! Runs a POST that publishes one record, under its `Idempotency-Key` when it has one.
//!
//! What a client may assume when it sends a key (any 1 to 255 visible ASCII characters):
//!
//! - **201**: the record is on the topic. A repeat of the same request with the same key within
//!   the window gets the same 201 and body again, with `Idempotent-Replayed: true`, and publishes
//!   nothing.
//! - **409**: the first request with this key is still running. Retry later.
//! - **422** without a `field`: the key was used for a different request (another route or body).
//! - **503** from a publish: the record may or may not have been written. A retry with the same
//!   key and request publishes the identical record (same id, token and timestamps), never a
//!   different one, so at worst the topic holds two identical copies, which consumers see as an
//!   ordinary at-least-once repeat. The same holds when the client gave up while the record was
//!   being published.
//! - **503** "too many requests with an Idempotency-Key are in progress": nothing was published.
//!   Retry later.
//! - A key is remembered for `IDEMPOTENCY_WINDOW_SECS` after the 201 or 503 that ended its latest
//!   attempt (replays do not extend it); after that it is new. The store is per instance and
//!   bounded (see [`crate::idempotency`]).
//!
//! Without a key every request is new: a retry after a 503 may publish a second, different record.

use super::error::AppError;
use super::{AppState, publish};
use crate::idempotency::{Begin, Stored};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::time::Instant;

/// Longest key accepted.
const MAX_KEY_LEN: usize = 255;

/// A record a POST publishes: its JSON is both the record's value and the 201 body.
pub trait Publish: Serialize + DeserializeOwned {
    /// The topic it goes to.
    const TOPIC: &'static str;
    /// Its Kafka key.
    fn key(&self) -> &str;
}

/// Publishes the record `make` builds and answers 201 with it, once per key: `request` (with
/// `route`) identifies the request for mismatch checks. When an earlier attempt with the same key
/// failed, its record is published again and `make` is not called.
pub async fn run<T: Publish>(
    state: &AppState,
    headers: &HeaderMap,
    request_id: &str,
    route: &str,
    request: &impl Serialize,
    make: impl FnOnce() -> T,
) -> Result<Response, AppError> {
    let Some(key) = headers.get("idempotency-key") else {
        let record = make();
        let body = serde_json::to_value(&record).unwrap_or_default();
        publish(state, T::TOPIC, record.key(), &body, request_id).await?;
        return Ok(created(body));
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN && k.chars().all(|c| c.is_ascii_graphic()))
        .ok_or_else(|| {
            AppError::BadRequest(format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"))
        })?;
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update(serde_json::to_vec(request).unwrap_or_default());
    let fingerprint = hex_digest(&hasher.finalize());
    let mut guard = match state.idempotency.begin(key, fingerprint, Instant::now()) {
        Begin::New(guard) => guard,
        Begin::Replay(stored) => {
            state.metrics.idempotent_replays.inc();
            let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
            let mut response = (status, axum::Json(stored.body)).into_response();
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(response);
        }
        Begin::InProgress => return Err(AppError::Conflict),
        Begin::Mismatch => {
            return Err(AppError::Unprocessable {
                message: "this Idempotency-Key was used for a different request".into(),
                field: None,
            });
        }
        Begin::Full => {
            return Err(AppError::Unavailable {
                message: "too many requests with an Idempotency-Key are in progress; nothing was published".into(),
                retry_after_secs: 1,
            });
        }
    };
    let (record, body) = match guard.body() {
        Some(earlier) => {
            // Our own serialisation read back: it cannot fail, and if it did the guard would keep
            // the earlier body for the next retry (a 503 says: retry).
            let record = serde_json::from_value::<T>(earlier.clone()).map_err(|e| AppError::Unavailable {
                message: format!("cannot read back the record of an earlier attempt: {e}"),
                retry_after_secs: 1,
            })?;
            tracing::info!(idempotency_key = key, request_id, "publishing the record of a failed attempt again");
            (record, earlier.clone())
        }
        None => {
            let record = make();
            let body = serde_json::to_value(&record).unwrap_or_default();
            (record, body)
        }
    };
    guard.publishing(body.clone());
    match publish(state, T::TOPIC, record.key(), &body, request_id).await {
        Ok(()) => {
            guard.complete(Stored { status: StatusCode::CREATED.as_u16(), body: body.clone() }, Instant::now());
            Ok(created(body))
        }
        Err(e) => {
            guard.fail(Instant::now());
            Err(e)
        }
    }
}

fn created(body: serde_json::Value) -> Response {
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

fn hex_digest(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
