//! Runs a POST under its `Idempotency-Key`, when it has one: a repeat of the same request gets the
//! first response (with `Idempotent-Replayed: true`) and publishes nothing.

use super::AppState;
use super::error::AppError;
use crate::idempotency::{Begin, Stored};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::time::Instant;

/// Longest key accepted.
const MAX_KEY_LEN: usize = 255;

/// Runs `run` once per key; `request` identifies the request (with `route`) for mismatch checks.
pub async fn run<F, Fut>(
    state: &AppState,
    headers: &HeaderMap,
    route: &str,
    request: &impl serde::Serialize,
    run: F,
) -> Result<Response, AppError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(StatusCode, serde_json::Value), AppError>>,
{
    let Some(key) = headers.get("idempotency-key") else {
        return run().await.map(|(status, body)| (status, axum::Json(body)).into_response());
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
    match state.idempotency.begin(key, fingerprint, Instant::now()) {
        Begin::Replay(stored) => {
            state.metrics.idempotent_replays.inc();
            let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
            let mut response = (status, axum::Json(stored.body)).into_response();
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(response)
        }
        Begin::InProgress => Err(AppError::Conflict),
        Begin::Mismatch => Err(AppError::Unprocessable {
            message: "this Idempotency-Key was used for a different request".into(),
            field: None,
        }),
        Begin::New(guard) => {
            let (status, body) = run().await?;
            guard.complete(Stored { status: status.as_u16(), body: body.clone() });
            Ok((status, axum::Json(body)).into_response())
        }
    }
}

fn hex_digest(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
