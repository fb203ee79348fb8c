//! The two business handlers, each outcome, through the real runtime against a stub producer.

mod support;

use host::producer_api::ProducerClient;
use host::record::{Invocation, Outcome, Record};
use host::runtime::{HandlerLimits, Worker};
use support::{StubProducer, TokenMode, engine, handler, load, record};

const USER_ID: &str = "0194f3a2-7b1c-7d3e-9f00-123456789abc";

fn user_json() -> String {
    serde_json::json!({"id": USER_ID, "name": "Ada", "email": "ada@example.com", "created_at": "2026-11-26T13:00:00Z"})
        .to_string()
}

fn token_json(token: &str) -> String {
    serde_json::json!({"user_id": USER_ID, "token": token, "issued_at": "2026-11-26T13:00:00Z", "expires_at": "2026-11-27T13:00:00.250Z"})
        .to_string()
}

async fn run(name: &str, producer: ProducerClient, record: &Record) -> Invocation {
    let engine = engine();
    let module = load(&engine, &handler(name), HandlerLimits::default());
    Worker::new(module, producer).invoke(record).await
}

fn client(stub: &StubProducer) -> ProducerClient {
    ProducerClient::new(&stub.url).expect("stub url")
}

fn assert_reject(inv: &Invocation, needle: &str) {
    match &inv.outcome {
        Outcome::Reject(reason) => assert!(reason.contains(needle), "reason {reason:?} should mention {needle:?}"),
        other => panic!("expected reject mentioning {needle:?}, got {other:?}"),
    }
}

fn assert_retry(inv: &Invocation) {
    assert!(matches!(inv.outcome, Outcome::Retry(_)), "expected retry, got {:?}", inv.outcome);
}

#[tokio::test]
async fn new_user_issues_first_token_and_announces_the_user() {
    let stub = StubProducer::start().await;
    let inv = run("new-user-created", client(&stub), &record("new-user-created", USER_ID, &user_json())).await;
    assert_eq!(inv.outcome, Outcome::Ok);

    let seen = stub.seen();
    assert_eq!(seen.len(), 1, "exactly one producer call: {seen:?}");
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].uri, "/producer-svc/tokens");
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).expect("json body");
    assert_eq!(body, serde_json::json!({"user_id": USER_ID}));
    assert_eq!(
        support::key_without_digest(seen[0].headers["idempotency-key"].to_str().expect("ascii")),
        "new-user-created:3:42:1"
    );
    assert_eq!(seen[0].headers["content-type"], "application/json");

    assert_eq!(inv.events.len(), 1);
    assert_eq!(inv.events[0].kind, "user-created");
    let payload: serde_json::Value = serde_json::from_str(&inv.events[0].payload).expect("json payload");
    assert_eq!(payload["id"], USER_ID);
    assert_eq!(payload["email"], "ada@example.com");
    assert_eq!((inv.events[0].partition, inv.events[0].offset), (3, 42));
}

#[tokio::test]
async fn new_user_rejects_malformed_and_incomplete_users_without_calling_the_producer() {
    let stub = StubProducer::start().await;
    let cases = [
        ("{not json", "malformed value"),
        (r#"{"id":"0194f3a2-7b1c-7d3e-9f00-123456789abc","name":"Ada","created_at":"2026-11-26T13:00:00Z"}"#, "email"),
        (r#"{"id":"42","name":"Ada","email":"a@b.c","created_at":"2026-11-26T13:00:00Z"}"#, "not a UUID"),
        (
            r#"{"id":"0194f3a2-7b1c-7d3e-9f00-123456789abc","name":" ","email":"a@b.c","created_at":"2026-11-26T13:00:00Z"}"#,
            "name is empty",
        ),
        (
            r#"{"id":"0194f3a2-7b1c-7d3e-9f00-123456789abc","name":"Ada","email":"nope","created_at":"2026-11-26T13:00:00Z"}"#,
            "email",
        ),
        (
            r#"{"id":"0194f3a2-7b1c-7d3e-9f00-123456789abc","name":"Ada","email":"a@b.c","created_at":"yesterday"}"#,
            "created_at",
        ),
    ];
    for (value, needle) in cases {
        let inv = run("new-user-created", client(&stub), &record("new-user-created", "k", value)).await;
        assert_reject(&inv, needle);
        assert!(inv.events.is_empty());
    }
    let mut tombstone = record("new-user-created", "k", "");
    tombstone.value = None;
    assert_reject(&run("new-user-created", client(&stub), &tombstone).await, "tombstone");
    assert!(stub.seen().is_empty(), "no producer call for a rejected record");
}

#[tokio::test]
async fn new_user_retries_when_the_producer_fails_or_is_busy_and_rejects_when_it_refuses() {
    let stub = StubProducer::start().await;
    stub.set_mode(TokenMode::Unavailable);
    let inv = run("new-user-created", client(&stub), &record("new-user-created", "k", &user_json())).await;
    assert_retry(&inv);
    assert!(inv.events.is_empty(), "no event for a failed attempt");
    assert_eq!(inv.calls[0].status, Some(503));

    // The producer still works on an earlier attempt with the same Idempotency-Key (its
    // publish outlived the handler's call timeout): a 409 that passes.
    stub.set_mode(TokenMode::InProgress);
    let inv = run("new-user-created", client(&stub), &record("new-user-created", "k", &user_json())).await;
    assert_retry(&inv);
    assert_eq!(inv.calls[0].status, Some(409));

    stub.set_mode(TokenMode::BadRequest);
    let inv = run("new-user-created", client(&stub), &record("new-user-created", "k", &user_json())).await;
    assert_reject(&inv, "400");

    let inv =
        run("new-user-created", ProducerClient::unconfigured(), &record("new-user-created", "k", &user_json())).await;
    assert_retry(&inv);

    // A port nobody listens on: connection refused.
    let closed = ProducerClient::new("http://127.0.0.1:9").expect("url");
    let inv = run("new-user-created", closed, &record("new-user-created", "k", &user_json())).await;
    assert_retry(&inv);
}

#[tokio::test]
async fn issued_token_verifies_and_announces_valid_tokens() {
    let stub = StubProducer::start().await;
    let inv =
        run("issued-token", client(&stub), &record("issued-token", USER_ID, &token_json(&format!("valid-{USER_ID}"))))
            .await;
    assert_eq!(inv.outcome, Outcome::Ok);
    let seen = stub.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/producer-svc/tokens/verify");
    assert_eq!(
        support::key_without_digest(seen[0].headers["idempotency-key"].to_str().expect("ascii")),
        "issued-token:3:42:1"
    );
    assert_eq!(inv.events.len(), 1);
    assert_eq!(inv.events[0].kind, "token-verified");
    let payload: serde_json::Value = serde_json::from_str(&inv.events[0].payload).expect("json");
    assert_eq!(payload["user_id"], USER_ID);
}

#[tokio::test]
async fn issued_token_rejects_invalid_expired_and_foreign_tokens() {
    let stub = StubProducer::start().await;
    for (token, needle) in [
        ("expired", "expired"),
        ("forged", "bad signature"),
        ("valid-0194f3a2-0000-7000-8000-000000000000", "belongs to user"),
    ] {
        let inv = run("issued-token", client(&stub), &record("issued-token", USER_ID, &token_json(token))).await;
        assert_reject(&inv, needle);
        assert!(inv.events.is_empty());
    }
    let inv = run("issued-token", client(&stub), &record("issued-token", USER_ID, r#"{"user_id":"x"}"#)).await;
    assert_reject(&inv, "malformed value");
}

#[tokio::test]
async fn issued_token_retries_on_producer_trouble() {
    let stub = StubProducer::start().await;
    let inv = run("issued-token", client(&stub), &record("issued-token", USER_ID, &token_json("boom"))).await;
    assert_retry(&inv);
    assert_eq!(inv.calls[0].status, Some(500));
    let inv =
        run("issued-token", ProducerClient::unconfigured(), &record("issued-token", USER_ID, &token_json("x"))).await;
    assert_retry(&inv);
}
