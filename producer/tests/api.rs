//! The producer through its real routers and a real Kafka-protocol broker (librdkafka's mock
//! cluster): every route, every error, which listener serves what, and what lands on the topics.

use axum::Router;
use axum::body::Body;
use axum::http::{self, Request, StatusCode};
use common::env::Env;
use producer::config::ProducerConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use std::time::{Duration, Instant};
use tower::ServiceExt;

const PARTITIONS: i32 = 8;

/// The operator token of [`harness_with_operator_token`].
const OPERATOR_TOKEN: &str = "operator-token-for-the-api-tests-0123456789";

struct Harness {
    mock: MockCluster<'static, DefaultProducerContext>,
    /// The public listener's router.
    public: Router,
    /// The internal listener's router.
    internal: Router,
}

fn harness(produce_timeout_ms: u64) -> Harness {
    build(produce_timeout_ms, None)
}

fn harness_with_operator_token() -> Harness {
    build(5_000, Some(OPERATOR_TOKEN))
}

fn build(produce_timeout_ms: u64, operator_token: Option<&str>) -> Harness {
    let mock = MockCluster::new(1).expect("mock cluster");
    for topic in ["new-user-created", "issued-token"] {
        mock.create_topic(topic, PARTITIONS, 1).expect("topic");
    }
    let mut pairs = vec![
        ("KAFKA_BROKERS", mock.bootstrap_servers()),
        ("APP_ENV", "development".into()),
        ("PRODUCE_TIMEOUT_MS", produce_timeout_ms.to_string()),
    ];
    pairs.extend(operator_token.map(|t| ("OPERATOR_TOKEN", t.to_string())));
    let config = ProducerConfig::from_env(&Env::from_pairs(pairs)).expect("config");
    let state = producer::state(&config).expect("state");
    Harness {
        mock,
        public: producer::api::public_router(state.clone()),
        internal: producer::api::internal_router(state),
    }
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    json: serde_json::Value,
    elapsed: Duration,
}

async fn send(app: &Router, method: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::builder().method(method).uri(path).header("content-type", "application/json");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let started = Instant::now();
    let response =
        app.clone().oneshot(request.body(Body::from(body.to_string())).expect("request")).await.expect("response");
    let elapsed = started.elapsed();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    Reply { status, headers, json, elapsed }
}

#[derive(Debug)]
struct Consumed {
    key: String,
    partition: i32,
    payload: serde_json::Value,
    headers: Vec<(String, String)>,
}

/// Reads `topic` from the beginning until `expect` records arrived or `within` passed.
fn consume(
    mock: &MockCluster<'static, DefaultProducerContext>,
    topic: &str,
    expect: usize,
    within: Duration,
) -> Vec<Consumed> {
    testkit::read_topic(&mock.bootstrap_servers(), topic, PARTITIONS, expect, within)
        .into_iter()
        .map(|r| Consumed {
            key: r.key.unwrap_or_default(),
            partition: r.partition,
            payload: serde_json::from_str(r.value.as_deref().unwrap_or_default()).expect("json payload"),
            headers: r.headers,
        })
        .collect()
}

/// Kafka's Java-client murmur2, which librdkafka's `murmur2_random` partitioner matches.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

fn java_partition(key: &str) -> i32 {
    ((murmur2(key.as_bytes()) & 0x7fff_ffff) % PARTITIONS as u32) as i32
}

#[test]
fn murmur2_matches_the_java_client() {
    // Reference values from Kafka's own Utils.murmur2 test vectors.
    assert_eq!(murmur2(b"21") as i32, -973_932_308);
    assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
    assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985_981_536);
    assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1_486_304_829);
    assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32, -58_897_971);
    assert_eq!(murmur2(b"abc") as i32, 479_470_107);
}

#[tokio::test]
async fn a_201_user_is_on_new_user_created_keyed_by_id_on_the_java_partition() {
    let h = harness(5_000);
    let reply = send(
        &h.public,
        "POST",
        "/producer-svc/users",
        r#"{"name":"Ada Lovelace","email":"ada@example.com"}"#,
        &[("x-request-id", "req-1")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.json);
    let id = reply.json["id"].as_str().expect("id").to_string();
    assert_eq!(uuid::Uuid::parse_str(&id).expect("uuid").get_version_num(), 7);
    assert_eq!(reply.json["name"], "Ada Lovelace");
    let created_at = reply.json["created_at"].as_str().expect("created_at");
    assert!(chrono::DateTime::parse_from_rfc3339(created_at).is_ok() && created_at.ends_with('Z'), "{created_at}");
    assert_eq!(reply.headers["x-request-id"], "req-1");

    let records = consume(&h.mock, "new-user-created", 1, Duration::from_secs(10));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key, id);
    assert_eq!(records[0].partition, java_partition(&id));
    assert_eq!(records[0].payload, reply.json);
    assert!(records[0].headers.contains(&("content-type".into(), "application/json".into())));
    assert!(records[0].headers.contains(&("request-id".into(), "req-1".into())));
}

#[tokio::test]
async fn an_issued_token_is_published_and_verifies() {
    let h = harness(5_000);
    let user = "0194f3a2-7b1c-7d3e-9f00-123456789abc";
    let reply = send(&h.internal, "POST", "/producer-svc/tokens", &format!(r#"{{"user_id":"{user}"}}"#), &[]).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.json);
    let token = reply.json["token"].as_str().expect("token").to_string();
    for field in ["issued_at", "expires_at"] {
        assert!(reply.json[field].as_str().is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()));
    }
    let records = consume(&h.mock, "issued-token", 1, Duration::from_secs(10));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key, user);
    assert_eq!(records[0].partition, java_partition(user));
    assert_eq!(records[0].payload, reply.json);

    let verdict =
        send(&h.internal, "POST", "/producer-svc/tokens/verify", &serde_json::json!({"token": token}).to_string(), &[])
            .await;
    assert_eq!(verdict.status, StatusCode::OK);
    assert_eq!(
        verdict.json,
        serde_json::json!({"valid": true, "user_id": user, "expires_at": reply.json["expires_at"]})
    );

    let tampered = format!("{}x", &token[..token.len() - 1]);
    let verdict = send(
        &h.internal,
        "POST",
        "/producer-svc/tokens/verify",
        &serde_json::json!({"token": tampered}).to_string(),
        &[],
    )
    .await;
    assert_eq!(verdict.json["valid"], false);
    assert!(verdict.json["reason"].is_string());
}

#[tokio::test]
async fn idempotent_repeats_return_the_first_response_and_publish_once() {
    let h = harness(5_000);
    let body = r#"{"name":"Ada","email":"ada@example.com"}"#;
    let first = send(&h.public, "POST", "/producer-svc/users", body, &[("idempotency-key", "abc-1")]).await;
    let second = send(&h.public, "POST", "/producer-svc/users", body, &[("idempotency-key", "abc-1")]).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(second.status, StatusCode::CREATED);
    assert_eq!(first.json, second.json, "the repeat gets the first response");
    assert_eq!(second.headers["idempotent-replayed"], "true");

    let other = send(
        &h.public,
        "POST",
        "/producer-svc/users",
        r#"{"name":"Bob","email":"bob@example.com"}"#,
        &[("idempotency-key", "abc-1")],
    )
    .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY, "same key, different request");

    let records = consume(&h.mock, "new-user-created", 2, Duration::from_secs(5));
    assert_eq!(records.len(), 1, "published once: {records:?}");

    let metrics = send(&h.internal, "GET", "/producer-svc/metrics", "", &[]).await;
    assert!(metrics.json.as_str().expect("text").contains("producer_idempotent_replays_total 1"));
}

#[tokio::test]
async fn bad_input_gets_a_clear_json_error() {
    let h = harness(5_000);
    let big = format!(r#"{{"name":"{}","email":"a@b.co"}}"#, "x".repeat(70 * 1024));
    let cases: Vec<(&str, &str, String, StatusCode, Option<&str>)> = vec![
        ("POST", "/producer-svc/users", "{not json".into(), StatusCode::BAD_REQUEST, None),
        ("POST", "/producer-svc/users", r#"{"name":"Ada"}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, Some("email")),
        (
            "POST",
            "/producer-svc/users",
            r#"{"name":"Ada","email":"a@b.co","admin":true}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("admin"),
        ),
        (
            "POST",
            "/producer-svc/users",
            r#"{"name":"Ada","email":"not-an-email"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("email"),
        ),
        (
            "POST",
            "/producer-svc/users",
            r#"{"name":"  ","email":"a@b.co"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("name"),
        ),
        (
            "POST",
            "/producer-svc/users",
            r#"{"name":7,"email":"a@b.co"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("name"),
        ),
        ("POST", "/producer-svc/users", big, StatusCode::PAYLOAD_TOO_LARGE, None),
        (
            "POST",
            "/producer-svc/tokens",
            r#"{"user_id":"42"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("user_id"),
        ),
        (
            "POST",
            "/producer-svc/tokens/verify",
            r#"{"token":""}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("token"),
        ),
        ("GET", "/producer-svc/users", String::new(), StatusCode::METHOD_NOT_ALLOWED, None),
        ("DELETE", "/producer-svc/tokens", String::new(), StatusCode::METHOD_NOT_ALLOWED, None),
        ("GET", "/producer-svc/nope", String::new(), StatusCode::NOT_FOUND, None),
        ("GET", "/elsewhere", String::new(), StatusCode::NOT_FOUND, None),
        ("POST", "/producer-svc/users", r#"{"name":"Ada","email":"a@b.co"}"#.into(), StatusCode::BAD_REQUEST, None),
    ];
    for (i, (method, path, body, status, field)) in cases.into_iter().enumerate() {
        // The last case carries an invalid Idempotency-Key.
        let headers: &[(&str, &str)] = if i == 13 { &[("idempotency-key", "")] } else { &[] };
        let reply = send(&h.internal, method, path, &body, headers).await;
        assert_eq!(reply.status, status, "{method} {path} {}: {:?}", &body[..body.len().min(60)], reply.json);
        assert!(
            reply.json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: JSON error body, got {:?}",
            reply.json
        );
        assert_eq!(reply.headers["content-type"], "application/json", "{method} {path}");
        assert_eq!(reply.json["field"].as_str(), field, "{method} {path}");
    }
    assert!(consume(&h.mock, "new-user-created", 1, Duration::from_secs(2)).is_empty(), "bad input publishes nothing");
}

#[tokio::test]
async fn a_down_broker_gives_503_with_retry_after_in_bounded_time_and_recovers() {
    let h = harness(1_500);
    let body = r#"{"name":"Ada","email":"ada@example.com"}"#;
    assert_eq!(send(&h.public, "POST", "/producer-svc/users", body, &[]).await.status, StatusCode::CREATED);

    h.mock.broker_down(1).expect("broker down");
    let reply = send(&h.public, "POST", "/producer-svc/users", body, &[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", reply.json);
    assert_eq!(reply.headers["retry-after"], "1");
    assert!(reply.json["error"].as_str().is_some_and(|e| e.contains("new-user-created")));
    assert!(reply.elapsed < Duration::from_millis(1_500 + 1_500), "answered in {:?}", reply.elapsed);

    h.mock.broker_up(1).expect("broker up");
    let deadline = Instant::now() + Duration::from_secs(20);
    let recovered = loop {
        let reply = send(&h.public, "POST", "/producer-svc/users", body, &[]).await;
        if reply.status == StatusCode::CREATED || Instant::now() > deadline {
            break reply;
        }
    };
    assert_eq!(recovered.status, StatusCode::CREATED, "recovers once the broker is back");
    let ids: Vec<String> =
        consume(&h.mock, "new-user-created", 3, Duration::from_secs(5)).into_iter().map(|c| c.key).collect();
    assert!(ids.contains(&recovered.json["id"].as_str().expect("id").to_string()));
    let metrics = send(&h.internal, "GET", "/producer-svc/metrics", "", &[]).await;
    assert!(
        metrics
            .json
            .as_str()
            .expect("text")
            .contains(r#"producer_publish_errors_total{topic="new-user-created",reason="timeout"}"#),
        "{}",
        metrics.json
    );
}

#[tokio::test]
async fn health_ping_and_metrics_answer() {
    let h = harness(5_000);
    for app in [&h.public, &h.internal] {
        let health = send(app, "GET", "/producer-svc", "", &[]).await;
        assert_eq!(health.status, StatusCode::OK);
        let ping = send(app, "GET", "/producer-svc/ping-what", "", &[]).await;
        assert_eq!((ping.status, ping.json), (StatusCode::OK, serde_json::json!({"ok": "Pong!"})));
    }
    let metrics = send(&h.internal, "GET", "/producer-svc/metrics", "", &[]).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = metrics.json.as_str().expect("prometheus text");
    assert!(
        text.contains(r#"producer_http_requests_total{route="/producer-svc/ping-what",method="GET",status="200"} 2"#),
        "{text}"
    );
}

/// A request to `route` that never publishes: an empty JSON object for a POST (a 422 where the
/// route exists).
async fn probe(app: &Router, route: producer::api::Route) -> Reply {
    let body = if route.method() == http::Method::POST { "{}" } else { "" };
    send(app, route.method().as_str(), route.path(), body, &[]).await
}

#[tokio::test]
async fn the_public_router_serves_only_the_public_routes_and_the_internal_router_every_route() {
    use producer::api::Route;
    let h = harness(5_000);
    for route in Route::ALL {
        let public = probe(&h.public, route).await;
        if Route::PUBLIC.contains(&route) {
            assert_ne!(public.status, StatusCode::NOT_FOUND, "{route:?} is public: {:?}", public.json);
        } else {
            assert_eq!(public.status, StatusCode::NOT_FOUND, "{route:?} is not public: {:?}", public.json);
            assert!(public.json["error"].as_str().is_some_and(|e| e.contains(route.path())), "{:?}", public.json);
            assert_eq!(public.headers["content-type"], "application/json");
        }
        let internal = probe(&h.internal, route).await;
        assert!(
            matches!(internal.status, StatusCode::OK | StatusCode::UNPROCESSABLE_ENTITY),
            "{route:?} on the internal router: {} {:?}",
            internal.status,
            internal.json
        );
    }
    assert_eq!(
        Route::PUBLIC.map(|r| (r.method().to_string(), r.path())),
        [
            ("GET".to_string(), "/producer-svc"),
            ("GET".to_string(), "/producer-svc/ping-what"),
            ("POST".to_string(), "/producer-svc/users"),
        ],
        "what the seed's users call, nothing more"
    );
    let token =
        send(&h.public, "POST", "/producer-svc/tokens", r#"{"user_id":"0194f3a2-7b1c-7d3e-9f00-123456789abc"}"#, &[])
            .await;
    assert_eq!(token.status, StatusCode::NOT_FOUND, "no token for anyone who asks the public listener");
    assert!(consume(&h.mock, "issued-token", 1, Duration::from_secs(2)).is_empty(), "and nothing published");
}

#[tokio::test]
async fn metrics_on_the_internal_router_need_the_operator_token() {
    let h = harness_with_operator_token();
    let wrong = format!("Bearer {OPERATOR_TOKEN}x");
    for headers in [&[][..], &[("authorization", wrong.as_str())][..], &[("authorization", "Basic b3A6b3A=")][..]] {
        let reply = send(&h.internal, "GET", "/producer-svc/metrics", "", headers).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{headers:?}: {:?}", reply.json);
        assert!(reply.headers["www-authenticate"].to_str().is_ok_and(|v| v.starts_with("Bearer")));
        assert_eq!(reply.headers["content-type"], "application/json");
        assert!(reply.json["error"].as_str().is_some_and(|e| !e.is_empty()), "{:?}", reply.json);
    }
    let right = format!("Bearer {OPERATOR_TOKEN}");
    let reply = send(&h.internal, "GET", "/producer-svc/metrics", "", &[("authorization", &right)]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let text = reply.json.as_str().expect("prometheus text");
    assert!(text.contains(r#"route="/producer-svc/metrics",method="GET",status="401"} 3"#), "{text}");

    // The token guards the operator routes only: the host's handlers call the rest without it.
    let ping = send(&h.internal, "GET", "/producer-svc/ping-what", "", &[]).await;
    assert_eq!(ping.status, StatusCode::OK);
    let verify = send(&h.internal, "POST", "/producer-svc/tokens/verify", r#"{"token":"x.y.z"}"#, &[]).await;
    assert_eq!((verify.status, &verify.json["valid"]), (StatusCode::OK, &serde_json::json!(false)));
    let public = send(&h.public, "GET", "/producer-svc/metrics", "", &[("authorization", &right)]).await;
    assert_eq!(public.status, StatusCode::NOT_FOUND, "not on the public listener, token or not");
}

#[tokio::test]
async fn a_retry_after_a_503_publishes_the_record_of_the_first_attempt_again() {
    let h = harness(1_500);
    // Warm up (metadata, producer id), so that the keyed attempt's record is sent at once.
    let warm = send(&h.public, "POST", "/producer-svc/users", r#"{"name":"Warm","email":"warm@example.com"}"#, &[]);
    assert_eq!(warm.await.status, StatusCode::CREATED);

    // The broker writes the record but answers too late: the producer answers 503.
    h.mock.broker_round_trip_time(1, Duration::from_secs(4)).expect("slow broker");
    let body = r#"{"name":"Ada","email":"ada@example.com"}"#;
    let key = [("idempotency-key", "create-ada-1")];
    let first = send(&h.public, "POST", "/producer-svc/users", body, &key).await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", first.json);
    assert_eq!(first.headers["retry-after"], "1");
    h.mock.broker_round_trip_time(1, Duration::ZERO).expect("quick broker");

    // The client retries with the same key until it gets an answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    let created = loop {
        let reply = send(&h.public, "POST", "/producer-svc/users", body, &key).await;
        if reply.status == StatusCode::CREATED || Instant::now() > deadline {
            break reply;
        }
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", reply.json);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json);
    let id = created.json["id"].as_str().expect("id").to_string();

    // On the topic: the first attempt's record and the retry's, identical (key and value).
    let records = consume(&h.mock, "new-user-created", 4, Duration::from_secs(10));
    let ada: Vec<&Consumed> = records.iter().filter(|r| r.payload["name"] == "Ada").collect();
    assert!(ada.len() >= 2, "the first attempt's record was written as well: {records:?}");
    for record in &ada {
        assert_eq!((&record.key, &record.payload), (&id, &created.json), "{records:?}");
    }

    // Once answered, the key replays and publishes nothing more.
    let again = send(&h.public, "POST", "/producer-svc/users", body, &key).await;
    assert_eq!((again.status, &again.json), (StatusCode::CREATED, &created.json));
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let after = consume(&h.mock, "new-user-created", records.len() + 1, Duration::from_secs(3));
    assert_eq!(after.len(), records.len(), "the replay published nothing");
}
