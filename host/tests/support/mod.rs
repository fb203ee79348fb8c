//! Shared test support: compiled components (built once per test binary), an engine, records, and a
//! stub producer service on localhost that records every request it receives.
#![allow(dead_code)]

pub mod kafka;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use host::record::{Header, Record};
use host::runtime::{EngineConfig, HandlerLimits, HandlerModule, WasmEngine};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// `target/handlers/`, built on first use.
pub fn handlers_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| xtask::build_handlers().expect("build the handlers")).clone()
}

/// `target/test-fixtures/`, built on first use.
pub fn fixtures_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| xtask::build_test_fixtures().expect("build the test fixtures")).clone()
}

/// A handler component's path.
pub fn handler(name: &str) -> PathBuf {
    handlers_dir().join(format!("{name}.wasm"))
}

/// A Python handler component's path (`target/handlers/python/<name>.wasm`).
pub fn python_handler(name: &str) -> PathBuf {
    handlers_dir().join("python").join(format!("{name}.wasm"))
}

/// A JavaScript handler component's path (`target/handlers/js/<name>.wasm`).
pub fn js_handler(name: &str) -> PathBuf {
    handlers_dir().join("js").join(format!("{name}.wasm"))
}

/// A Go handler component's path (`target/handlers/go/<name>.wasm`).
pub fn go_handler(name: &str) -> PathBuf {
    handlers_dir().join("go").join(format!("{name}.wasm"))
}

/// A fixture component's path.
pub fn fixture(name: &str) -> PathBuf {
    fixtures_dir().join(format!("{name}.wasm"))
}

/// An engine with a small pool.
pub fn engine() -> Arc<WasmEngine> {
    Arc::new(WasmEngine::new(EngineConfig { max_instances: 16, ..EngineConfig::default() }).expect("engine"))
}

/// `target/test-compile-cache/<name>`: where a test keeps compiled components across runs (a
/// Python or JavaScript component takes seconds to compile, milliseconds to load from there). One
/// per test: processes that share a cache directory delete each other's entries.
pub fn compile_cache_dir(name: &str) -> PathBuf {
    xtask::target_dir().join("test-compile-cache").join(name)
}

/// An engine with a small pool that keeps compiled components in `compile_cache_dir(name)`.
pub fn cached_engine(name: &str) -> Arc<WasmEngine> {
    let cache_dir = Some(compile_cache_dir(name));
    Arc::new(WasmEngine::new(EngineConfig { max_instances: 16, cache_dir, ..EngineConfig::default() }).expect("engine"))
}

/// Loads `path` with `limits`.
pub fn load(engine: &Arc<WasmEngine>, path: &std::path::Path, limits: HandlerLimits) -> HandlerModule {
    HandlerModule::load_file(engine, path, limits).unwrap_or_else(|e| panic!("load {}: {e}", path.display()))
}

/// A first-delivery record.
pub fn record(topic: &str, key: &str, value: &str) -> Record {
    Record {
        topic: topic.into(),
        partition: 3,
        offset: 42,
        timestamp_ms: Some(1_700_000_000_000),
        key: Some(key.as_bytes().to_vec()),
        value: Some(value.as_bytes().to_vec()),
        headers: vec![Header { key: "content-type".into(), value: b"application/json".to_vec() }],
        attempt: 1,
    }
}

/// An `Idempotency-Key` (`topic:partition:offset:request:n`) without its request digest:
/// `topic:partition:offset:n`, for tests that check which record and which repeat a call was.
pub fn key_without_digest(key: &str) -> String {
    let mut parts: Vec<&str> = key.rsplitn(5, ':').collect();
    parts.reverse();
    if parts.len() == 5 {
        parts.remove(3);
    }
    parts.join(":")
}

/// How the stub answers `POST /producer-svc/tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMode {
    /// 201 with a token for the user.
    Created,
    /// 503.
    Unavailable,
    /// 400.
    BadRequest,
    /// 409: a request with the same Idempotency-Key is still in progress.
    InProgress,
}

/// A request the stub received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone)]
struct StubState {
    seen: Arc<Mutex<Vec<Seen>>>,
    mode: Arc<Mutex<TokenMode>>,
    /// Requests being answered now, and the most at once.
    concurrent: Arc<Mutex<(usize, usize)>>,
}

/// A stub producer on 127.0.0.1.
pub struct StubProducer {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    mode: Arc<Mutex<TokenMode>>,
    concurrent: Arc<Mutex<(usize, usize)>>,
    _server: tokio::task::JoinHandle<()>,
}

impl StubProducer {
    /// Starts the stub on an ephemeral port.
    pub async fn start() -> Self {
        let state = StubState {
            seen: Arc::default(),
            mode: Arc::new(Mutex::new(TokenMode::Created)),
            concurrent: Arc::default(),
        };
        let app = Router::new()
            .route("/producer-svc/ping-what", get(|| async { axum::Json(serde_json::json!({"ok": "Pong!"})) }))
            .route("/producer-svc/tokens", post(issue))
            .route("/producer-svc/tokens/verify", post(verify))
            .route("/big", get(|| async { vec![b'x'; 8 * 1024 * 1024] }))
            .route(
                "/delay/{ms}",
                get(|axum::extract::Path(ms): axum::extract::Path<u64>| async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    "done"
                }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .fallback(|| async { (StatusCode::NOT_FOUND, "no such route") })
            .layer(axum::middleware::from_fn_with_state(state.clone(), record_request))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Self { url, seen: state.seen, mode: state.mode, concurrent: state.concurrent, _server: server }
    }

    /// The most requests the stub was answering at once.
    pub fn max_concurrent(&self) -> usize {
        self.concurrent.lock().expect("lock").1
    }

    /// Changes how token issuance answers.
    pub fn set_mode(&self, mode: TokenMode) {
        *self.mode.lock().expect("lock") = mode;
    }

    /// The records handled so far, as (partition, offset), read from the Idempotency-Key
    /// (`topic:partition:offset:request:n`) of every request, duplicates included.
    pub fn handled(&self) -> Vec<(i32, i64)> {
        self.seen()
            .iter()
            .filter_map(|s| {
                let key = s.headers.get("idempotency-key")?.to_str().ok()?;
                let mut parts = key.rsplitn(5, ':');
                let _n = parts.next()?;
                let _request = parts.next()?;
                let offset = parts.next()?.parse().ok()?;
                let partition = parts.next()?.parse().ok()?;
                Some((partition, offset))
            })
            .collect()
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn record_request(
    State(state): State<StubState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    state.seen.lock().expect("lock").push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    {
        let mut concurrent = state.concurrent.lock().expect("lock");
        concurrent.0 += 1;
        concurrent.1 = concurrent.1.max(concurrent.0);
    }
    let response = next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(body))).await;
    state.concurrent.lock().expect("lock").0 -= 1;
    response
}

async fn issue(State(state): State<StubState>, body: Bytes) -> impl IntoResponse {
    let mode = *state.mode.lock().expect("lock");
    match mode {
        TokenMode::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "broker down".to_string()),
        TokenMode::BadRequest => (StatusCode::BAD_REQUEST, r#"{"error":"bad user_id"}"#.to_string()),
        TokenMode::InProgress => (
            StatusCode::CONFLICT,
            r#"{"error":"a request with this Idempotency-Key is still in progress"}"#.to_string(),
        ),
        TokenMode::Created => {
            let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let user_id = req["user_id"].as_str().unwrap_or_default();
            let body = serde_json::json!({
                "user_id": user_id, "token": format!("valid-{user_id}"),
                "issued_at": "2026-11-26T13:00:00Z", "expires_at": "2026-11-27T13:00:00Z",
            });
            (StatusCode::CREATED, body.to_string())
        }
    }
}

/// Verdicts by token: `valid-<user>` is valid for `<user>`; `expired` is expired; `boom` is a 500.
async fn verify(body: Bytes) -> impl IntoResponse {
    let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let token = req["token"].as_str().unwrap_or_default();
    if token == "boom" {
        return (StatusCode::INTERNAL_SERVER_ERROR, "internal error".to_string());
    }
    let verdict = match token.strip_prefix("valid-") {
        Some(user) => serde_json::json!({"valid": true, "user_id": user, "expires_at": "2026-11-27T13:00:00Z"}),
        None if token == "expired" => serde_json::json!({"valid": false, "reason": "expired"}),
        None => serde_json::json!({"valid": false, "reason": "bad signature"}),
    };
    (StatusCode::OK, verdict.to_string())
}
