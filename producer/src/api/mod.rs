//! The producer's HTTP API, every route under `/producer-svc` (as the load balancer routes it),
//! served on two listeners. The public router ([`public_router`], on `PORT`, behind the load
//! balancer) holds only what clients call: [`Route::PUBLIC`] (health, ping, creating users).
//! The internal router ([`internal_router`], on `INTERNAL_PORT`, which only the environment's
//! services reach, through Service Connect) holds the whole API, [`Route::ALL`], with the operator
//! routes (metrics) behind `OPERATOR_TOKEN` ([`common::auth`]). Anything else is a 404 with a JSON
//! body. Also here: the state the handlers share, and the request middleware (request ids,
//! metrics).

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
use axum::routing::{MethodRouter, get, post};
use common::auth::OperatorToken;
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
    /// What the operator routes require (`None`: open, development only).
    pub operator_token: Option<OperatorToken>,
}

/// A request's id: the caller's `X-Request-Id` when it is sane, else a new UUID.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// A route of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /producer-svc`: health.
    Health,
    /// `GET /producer-svc/ping-what`.
    Ping,
    /// `POST /producer-svc/users`.
    CreateUser,
    /// `POST /producer-svc/tokens`.
    IssueToken,
    /// `POST /producer-svc/tokens/verify`.
    VerifyToken,
    /// `GET /producer-svc/metrics`, an operator route.
    Metrics,
}

impl Route {
    /// Every route: what the internal listener serves.
    pub const ALL: [Self; 6] =
        [Self::Health, Self::Ping, Self::CreateUser, Self::IssueToken, Self::VerifyToken, Self::Metrics];
    /// What the public listener serves: what the service's users call.
    pub const PUBLIC: [Self; 3] = [Self::Health, Self::Ping, Self::CreateUser];

    /// Its method.
    pub fn method(self) -> Method {
        match self {
            Self::Health | Self::Ping | Self::Metrics => Method::GET,
            Self::CreateUser | Self::IssueToken | Self::VerifyToken => Method::POST,
        }
    }

    /// Its path, [`PREFIX`] included.
    pub fn path(self) -> &'static str {
        match self {
            Self::Health => "/producer-svc",
            Self::Ping => "/producer-svc/ping-what",
            Self::CreateUser => "/producer-svc/users",
            Self::IssueToken => "/producer-svc/tokens",
            Self::VerifyToken => "/producer-svc/tokens/verify",
            Self::Metrics => "/producer-svc/metrics",
        }
    }

    /// Whether it requires the operator token.
    pub fn operator_only(self) -> bool {
        matches!(self, Self::Metrics)
    }

    fn handler(self) -> MethodRouter<AppState> {
        match self {
            Self::Health => get(health),
            Self::Ping => get(ping),
            Self::CreateUser => post(users::create),
            Self::IssueToken => post(tokens::issue),
            Self::VerifyToken => post(tokens::verify),
            Self::Metrics => get(metrics),
        }
    }
}

/// The router of the public listener: [`Route::PUBLIC`] only.
pub fn public_router(state: AppState) -> Router {
    router(state, &Route::PUBLIC)
}

/// The router of the internal listener: [`Route::ALL`], operator routes behind the token.
pub fn internal_router(state: AppState) -> Router {
    router(state, &Route::ALL)
}

fn router(state: AppState, routes: &[Route]) -> Router {
    let mut router = Router::new();
    for &route in routes {
        let mut handler = route.handler();
        if route.operator_only() {
            handler = handler.route_layer(axum::middleware::from_fn_with_state(
                state.operator_token.clone(),
                common::auth::require_operator,
            ));
        }
        router = router.route(route.path(), handler);
    }
    router
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_under_the_prefix_and_no_operator_route_is_public() {
        for route in Route::ALL {
            assert!(route.path() == PREFIX || route.path().starts_with(&format!("{PREFIX}/")), "{route:?}");
        }
        for route in Route::PUBLIC {
            assert!(Route::ALL.contains(&route) && !route.operator_only(), "{route:?}");
        }
    }
}
