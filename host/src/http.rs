//! The host's HTTP API (axum): health (`/`, `/healthz`, `/readyz`) and the inter-service `/ping`
//! for anyone; the operator routes, Prometheus `/metrics`, `/handlers` status and the `/events`
//! Server-Sent Events stream (every handled user's data), only with
//! `Authorization: Bearer <OPERATOR_TOKEN>` (open in development when no token is set).

use crate::events::EventHub;
use crate::handlers::Registry;
use crate::metrics::Metrics;
use crate::pipeline::{Health, STALL_REPORTED_AFTER};
use crate::producer_api::{CallBounds, Method, ProducerClient, Request};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// How long `/ping` waits for the producer.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What the routes share.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The handler set.
    pub registry: Arc<Registry>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Event stream.
    pub events: EventHub,
    /// Producer client (for `/ping`).
    pub producer: ProducerClient,
    /// Readiness flags.
    pub health: Arc<Health>,
    /// Turns true at shutdown: open event streams end so the server can stop.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The operator routes' credential (`None`: open).
    pub operator_token: Option<common::auth::OperatorToken>,
}

/// The router.
pub fn router(state: ApiState) -> Router {
    let operator =
        Router::new().route("/metrics", get(metrics)).route("/handlers", get(handlers)).route("/events", get(events));
    let operator = common::auth::protect(operator, state.operator_token.clone());
    Router::new()
        .route("/", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({"status": "alive"})) }))
        .route("/readyz", get(readyz))
        .route("/ping", get(ping))
        .merge(operator)
        .fallback(|uri: Uri| async move { error(StatusCode::NOT_FOUND, format!("no route for {}", uri.path())) })
        .method_not_allowed_fallback(|| async { error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into()) })
        .with_state(state)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({"error": message}))).into_response()
}

async fn readyz(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let mut reasons = Vec::new();
    if s.registry.active_topics().is_empty() {
        reasons.push("no handler is loaded".to_string());
    }
    if !s.health.joined.load(Ordering::Relaxed) {
        reasons.push("the consumer has not joined its group yet".into());
    }
    if s.health.brokers_down.load(Ordering::Relaxed) {
        reasons.push("all brokers are down".into());
    }
    for stall in s.health.stalled().into_iter().filter(|s| s.seconds >= STALL_REPORTED_AFTER.as_secs()) {
        reasons.push(format!(
            "partition {}/{} has not moved on for {} s: {}",
            stall.topic, stall.partition, stall.seconds, stall.reason
        ));
    }
    if reasons.is_empty() {
        return axum::Json(serde_json::json!({"ready": true})).into_response();
    }
    // The route is public (load balancers ask it); why the host is not ready (topic names,
    // broker errors) is for operators only.
    let body = if common::auth::check(s.operator_token.as_ref(), &headers).is_ok() {
        serde_json::json!({"ready": false, "reasons": reasons})
    } else {
        serde_json::json!({"ready": false, "reasons": "send the operator token to see them"})
    };
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

async fn ping(State(s): State<ApiState>) -> Response {
    let request =
        Request { method: Method::Get, path: "/producer-svc/ping-what".into(), headers: Vec::new(), body: Vec::new() };
    let bounds = CallBounds { timeout: PING_TIMEOUT, max_request_bytes: 0, max_response_bytes: 64 * 1024 };
    match s.producer.call(&request, None, bounds).await {
        Ok(r) if r.status == 200 => match serde_json::from_slice::<serde_json::Value>(&r.body) {
            Ok(body) => axum::Json(body).into_response(),
            Err(e) => error(StatusCode::BAD_GATEWAY, format!("the producer answered with invalid JSON: {e}")),
        },
        Ok(r) => error(StatusCode::BAD_GATEWAY, format!("the producer answered {}", r.status)),
        Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

async fn metrics(State(s): State<ApiState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render())
}

async fn handlers(State(s): State<ApiState>) -> impl IntoResponse {
    let stalled = s.health.stalled();
    let mut statuses = s.registry.statuses();
    for status in &mut statuses {
        let retry = crate::handlers::retry_topic(&status.topic);
        status.stalled = stalled.iter().filter(|st| st.topic == status.topic || st.topic == retry).cloned().collect();
    }
    axum::Json(statuses)
}

async fn events(State(s): State<ApiState>) -> Sse<impl Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let metrics = s.metrics.clone();
    let stream = futures::stream::unfold(s.events.subscribe(), move |mut rx| {
        let metrics = metrics.clone();
        async move {
            match rx.recv().await {
                Ok(event) => {
                    let data = event.to_json().to_string();
                    Some((Ok(SseEvent::default().event(event.kind).data(data)), rx))
                }
                Err(RecvError::Lagged(n)) => {
                    // A subscriber that cannot keep up is dropped rather than slowing consumption.
                    metrics.dropped.get_or_create(&crate::metrics::TopicLabels { topic: "events".into() }).inc_by(n);
                    None
                }
                Err(RecvError::Closed) => None,
            }
        }
    });
    let mut shutdown = s.shutdown.clone();
    let stream = futures::StreamExt::take_until(stream, async move {
        let _ = shutdown.wait_for(|s| *s).await;
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
