//! Property tests on the producer's HTTP edge: arbitrary methods, paths, headers and bodies (JSON
//! shaped and not) sent through the real router to a real Kafka-protocol broker (librdkafka's
//! mock cluster). Whatever arrives, the service answers: never a 5xx, never a panic, and every
//! error is a JSON body with an `error` message.

use axum::body::Body;
use axum::http::Request;
use common::env::Env;
use producer::config::ProducerConfig;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rdkafka::mocking::MockCluster;
use std::cell::Cell;
use tower::ServiceExt;

fn method() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        4 => Just("POST"),
        1 => prop::sample::select(vec!["GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
    ]
}

fn path() -> impl Strategy<Value = String> {
    let routes =
        prop::sample::select(vec!["/producer-svc/users", "/producer-svc/tokens", "/producer-svc/tokens/verify"]);
    let odd = prop::sample::select(vec![
        "/producer-svc/",
        "/producer-svc/ping-what",
        "/producer-svc//users",
        "/producer-svc/users/../tokens",
        "/producer-svc/%2e%2e/x",
        "/",
    ]);
    let known = prop_oneof![3 => routes, 1 => odd];
    let tail = prop_oneof![3 => Just(String::new()), 1 => "[a-zA-Z0-9/%._~?=&-]{0,40}"];
    (known, tail).prop_map(|(p, tail)| format!("{p}{tail}"))
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
        ".{0,40}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from("ada@example.com")),
        Just(serde_json::Value::from("0190a1b2-c3d4-7e5f-8a9b-000000000001")),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop::sample::select(vec!["name", "email", "user_id", "token", "id", "x", ""]).prop_map(String::from),
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies shaped like the API's own (a user, a token request, a verification), with odd values.
fn near_valid() -> impl Strategy<Value = serde_json::Value> {
    let text = prop_oneof![".{0,30}", "[a-z]{1,10}@[a-z]{1,10}\\.com", Just(String::new()), "\\PC{0,5}"];
    let uuid = prop_oneof![Just("0190a1b2-c3d4-7e5f-8a9b-000000000001".to_string()), "[0-9a-f-]{0,40}"];
    prop_oneof![
        (text.clone(), text.clone()).prop_map(|(name, email)| serde_json::json!({"name": name, "email": email})),
        uuid.prop_map(|id| serde_json::json!({"user_id": id})),
        text.prop_map(|token| serde_json::json!({"token": token})),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => near_valid().prop_map(|v| serde_json::to_vec(&v).expect("json")),
        1 => json_value().prop_map(|v| serde_json::to_vec(&v).expect("json")),
        1 => prop::collection::vec(any::<u8>(), 0..300),
        1 => ".{0,200}".prop_map(String::into_bytes),
    ]
}

fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop::option::weighted(
        0.9,
        prop::sample::select(vec![
            "application/json",
            "application/json",
            "application/json",
            "application/json; charset=utf-8",
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/json; charset=latin1",
            "multipart/form-data; boundary=x",
        ]),
    )
}

/// One request: its method, path, body, content type and idempotency key.
type Case = (&'static str, String, Vec<u8>, Option<&'static str>, Option<String>);

/// Requests the API accepts (a quarter of the cases), so the success path is exercised too.
fn valid() -> impl Strategy<Value = Case> {
    let user = ("[A-Za-z][A-Za-z ]{0,29}", "[a-z]{1,10}@[a-z]{1,8}\\.com").prop_map(|(name, email)| {
        ("/producer-svc/users".to_string(), serde_json::json!({"name": name, "email": email}))
    });
    let token = "[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
        .prop_map(|id| ("/producer-svc/tokens".to_string(), serde_json::json!({"user_id": id})));
    let verify = "[A-Za-z0-9._-]{1,60}"
        .prop_map(|t| ("/producer-svc/tokens/verify".to_string(), serde_json::json!({"token": t})));
    (prop_oneof![2 => user, 1 => token, 1 => verify], prop::option::of("[A-Za-z0-9-]{8,40}")).prop_map(
        |((path, body), key)| ("POST", path, serde_json::to_vec(&body).expect("json"), Some("application/json"), key),
    )
}

fn arbitrary() -> impl Strategy<Value = Case> {
    (method(), path(), body(), content_type(), prop::option::of("[ -~]{0,80}"))
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
}

/// The producer's router against a mock cluster holding its two topics.
fn app() -> (MockCluster<'static, rdkafka::producer::DefaultProducerContext>, axum::Router) {
    let mock = MockCluster::new(1).expect("mock cluster");
    for topic in ["new-user-created", "issued-token"] {
        mock.create_topic(topic, 8, 1).expect("topic");
    }
    let env = Env::from_pairs([("KAFKA_BROKERS", mock.bootstrap_servers()), ("APP_ENV", "development".into())]);
    let config = ProducerConfig::from_env(&env).expect("config");
    let app = RUNTIME.with(|rt| {
        let _guard = rt.enter();
        producer::api::internal_router(producer::state(&config).expect("state"))
    });
    (mock, app)
}

#[test]
fn any_request_gets_an_answer_below_500_and_errors_are_json() {
    const CASES: u32 = 1000;
    let (_mock, app) = app();
    let (created, accepted, refused) = (Cell::new(0u32), Cell::new(0u32), Cell::new(0u32));
    let mut runner = TestRunner::new(Config { cases: CASES, failure_persistence: None, ..Config::default() });
    let cases = prop_oneof![1 => valid(), 3 => arbitrary()];
    runner
        .run(&cases, |(method, path, body, content_type, idempotency_key)| {
            let mut request = Request::builder().method(method).uri(&path);
            if let Some(ct) = content_type {
                request = request.header("content-type", ct);
            }
            if let Some(key) = &idempotency_key {
                request = request.header("idempotency-key", key.as_str());
            }
            // What the HTTP layer itself refuses to build never reaches the service.
            let Ok(request) = request.body(Body::from(body)) else { return Ok(()) };
            let app = app.clone();
            let (status, bytes) = RUNTIME.with(|rt| {
                rt.block_on(async move {
                    let response = app.oneshot(request).await.expect("infallible");
                    let status = response.status();
                    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
                    (status, bytes)
                })
            });
            let text = String::from_utf8_lossy(&bytes);
            prop_assert!(!status.is_server_error(), "{} {} answered {}: {}", method, path, status, text);
            if status.is_client_error() {
                refused.set(refused.get() + 1);
                if method != "HEAD" {
                    let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                        TestCaseError::fail(format!("{method} {path} -> {status}: not JSON ({e}): {text}"))
                    })?;
                    prop_assert!(
                        json["error"].as_str().is_some_and(|e| !e.is_empty()),
                        "{} without an error message: {}",
                        status,
                        json
                    );
                }
            }
            if status.is_success() {
                accepted.set(accepted.get() + 1);
            }
            if status.is_success() && method == "POST" && path == "/producer-svc/users" {
                let user: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(user["id"].as_str().is_some(), "a created user has an id: {}", user);
                created.set(created.get() + 1);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // The valid arm is a quarter of the cases, half of it users: fewer successes means the
    // generator no longer reaches the service's success path, and the checks above went idle.
    let (created, accepted, refused) = (created.get(), accepted.get(), refused.get());
    eprintln!("{CASES} requests: {accepted} accepted ({created} users created), {refused} refused with a 4xx");
    assert!(created >= CASES / 20, "only {created} of {CASES} requests created a user");
    assert!(accepted >= CASES / 8, "only {accepted} of {CASES} requests were accepted");
    assert!(refused >= CASES / 2, "only {refused} of {CASES} requests were refused");
}
