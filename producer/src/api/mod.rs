//! The producer's HTTP API, every route under `/producer-svc` (as the load balancer routes it):
//! the router, its shared state, and the request middleware (request ids, metrics).

pub mod error;
pub mod idempotent;
pub mod json;
mod tokens;
mod users;

use crate::idempotency::IdempotencyStore;
use crate::metrics::{Metrics, RequestLabels};
use crate::publisher::{PublishError, Publisher};
use crate::token::TokenSigner;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use error::AppError;
use std::sync::Arc;
use std::time::Instant;

/// The topic new users are published to.
pub const TOPIC_NEW_USER: &str = "new-user-created";
/// The topic issued tokens are published to.
pub const TOPIC_ISSUED_TOKEN: &str = "issued-token";
/// Every route's prefix.
pub const PREFIX: &str = "/producer-svc";

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The Kafka producer.
    pub publisher: Arc<Publisher>,
    /// Token issuing and verification.
    pub tokens: TokenSigner,
    /// Remembered `Idempotency-Key` responses.
    pub idempotency: Arc<IdempotencyStore>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// A request's id: the caller's `X-Request-Id` when it is sane, else a new UUID.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The router.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/", get(health))
        .route("/ping-what", get(ping))
        .route("/metrics", get(metrics))
        .route("/users", post(users::create))
        .route("/tokens", post(tokens::issue))
        .route("/tokens/verify", post(tokens::verify));
    Router::new()
        .nest(PREFIX, api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(json::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn ping() -> impl IntoResponse {
    axum::Json(serde_json::json!({"ok": "Pong!"}))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}

async fn not_found(uri: Uri) -> AppError {
    AppError::NotFound(uri.path().to_string())
}

async fn method_not_allowed(method: Method, uri: Uri) -> AppError {
    AppError::MethodNotAllowed { method: method.to_string(), path: uri.path().to_string() }
}

/// Assigns the request id, counts the request by route and status.
async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
    request.extensions_mut().insert(RequestId(id.clone()));
    let started = Instant::now();
    let mut response = next.run(request).await;
    let status = response.status().as_u16();
    state.metrics.requests.get_or_create(&RequestLabels { route: route.clone(), method: method.clone(), status }).inc();
    tracing::debug!(%route, %method, status, request_id = %id, elapsed_ms = started.elapsed().as_millis() as u64, "request");
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// Publishes `body` to `topic` under `key`, with metrics; a failure is a 503.
pub(crate) async fn publish(
    state: &AppState,
    topic: &str,
    key: &str,
    body: &serde_json::Value,
    request_id: &str,
) -> Result<(), AppError> {
    let payload = serde_json::to_vec(body).unwrap_or_default();
    let started = Instant::now();
    let headers = [("content-type", "application/json"), ("request-id", request_id)];
    match state.publisher.publish(topic, key, &payload, &headers).await {
        Ok(published) => {
            state
                .metrics
                .publish_seconds
                .get_or_create(&crate::metrics::TopicLabels { topic: topic.to_string() })
                .observe(started.elapsed().as_secs_f64());
            tracing::info!(
                topic,
                key,
                partition = published.partition,
                offset = published.offset,
                request_id,
                "published"
            );
            Ok(())
        }
        Err(e) => {
            let reason = match e {
                PublishError::Timeout(_) => "timeout",
                PublishError::Kafka(_) => "kafka",
            };
            state
                .metrics
                .publish_errors
                .get_or_create(&crate::metrics::ErrorLabels { topic: topic.to_string(), reason: reason.to_string() })
                .inc();
            tracing::warn!(topic, key, request_id, "publish failed: {e}");
            Err(AppError::Unavailable { message: format!("could not publish to {topic}: {e}"), retry_after_secs: 1 })
        }
    }
}
