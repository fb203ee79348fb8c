//! The `producer` binary as an operator runs it: configuration failures at start, what each of its
//! two ports serves, and a graceful SIGTERM that drains and exits 0.

use rdkafka::mocking::MockCluster;
use std::time::{Duration, Instant};
use tokio::process::Command;

fn producer() -> Command {
    testkit::service_command(env!("CARGO_BIN_EXE_producer"))
}

/// An operator token for the tests (a real one comes from the secret store).
const OPERATOR_TOKEN: &str = "operator-token-for-the-binary-tests-0123456789";

#[tokio::test]
async fn missing_token_secret_in_production_fails_at_start_with_the_reason() {
    let out = producer()
        .env("KAFKA_BROKERS", "127.0.0.1:1")
        .env("PORT", testkit::free_port().to_string())
        .output()
        .await
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TOKEN_SECRET is required in production"), "{stderr}");
    assert!(stderr.contains("OPERATOR_TOKEN is required in production"), "every problem at once: {stderr}");

    let out = producer().env("APP_ENV", "development").env("KAFKA_BROKER", "typo:1").output().await.expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KAFKA_BROKER is not a known variable"));
}

#[tokio::test]
async fn production_without_operator_token_fails_at_start_naming_it() {
    let out = producer()
        .env("KAFKA_BROKERS", "127.0.0.1:1")
        .env("TOKEN_SECRET", "t".repeat(32))
        .env("PORT", testkit::free_port().to_string())
        .env("INTERNAL_PORT", testkit::free_port().to_string())
        .output()
        .await
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("OPERATOR_TOKEN is required in production"), "{stderr}");
    assert!(!stderr.contains("TOKEN_SECRET"), "only what is missing: {stderr}");
}

/// Waits until `url` answers at all.
async fn wait_until_up(http: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(url).send().await.is_err() {
        assert!(Instant::now() < deadline, "producer did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Status, `WWW-Authenticate` and JSON body (or the text as a JSON string) of a response.
async fn answer(response: reqwest::Response) -> (u16, Option<String>, serde_json::Value) {
    let status = response.status().as_u16();
    let challenge = response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).map(str::to_string);
    let text = response.text().await.expect("body");
    (status, challenge, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

#[tokio::test]
async fn the_public_port_serves_the_public_routes_and_the_internal_port_the_whole_api() {
    let mock = MockCluster::new(1).expect("mock");
    for topic in ["new-user-created", "issued-token"] {
        mock.create_topic(topic, 8, 1).expect("topic");
    }
    let (port, internal_port) = (testkit::free_port(), testkit::free_port());
    let mut child = producer()
        .env("KAFKA_BROKERS", mock.bootstrap_servers())
        .env("TOKEN_SECRET", "t".repeat(32))
        .env("OPERATOR_TOKEN", OPERATOR_TOKEN)
        .env("PORT", port.to_string())
        .env("INTERNAL_PORT", internal_port.to_string())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let public = format!("http://127.0.0.1:{port}/producer-svc");
    let internal = format!("http://127.0.0.1:{internal_port}/producer-svc");
    let http = reqwest::Client::new();
    wait_until_up(&http, &public).await;
    wait_until_up(&http, &internal).await;

    // Public: what clients call, and nothing else.
    assert_eq!(answer(http.get(&public).send().await.expect("health")).await.0, 200);
    assert_eq!(answer(http.get(format!("{public}/ping-what")).send().await.expect("ping")).await.0, 200);
    let user = serde_json::json!({"name": "Ada", "email": "ada@example.com"});
    let (status, _, created) =
        answer(http.post(format!("{public}/users")).json(&user).send().await.expect("post")).await;
    assert_eq!(status, 201, "{created}");
    let token_request = serde_json::json!({"user_id": created["id"]});
    let refused = [
        http.post(format!("{public}/tokens")).json(&token_request),
        http.post(format!("{public}/tokens/verify")).json(&serde_json::json!({"token": "x"})),
        http.get(format!("{public}/metrics")),
        http.get(format!("{public}/metrics")).bearer_auth(OPERATOR_TOKEN),
    ];
    for request in refused {
        let (status, _, body) = answer(request.send().await.expect("send")).await;
        assert_eq!(status, 404, "{body}");
        assert!(body["error"].as_str().is_some_and(|e| e.starts_with("no route for /producer-svc/")), "{body}");
    }

    // Internal: the whole API; metrics only with the operator token.
    let (status, _, issued) =
        answer(http.post(format!("{internal}/tokens")).json(&token_request).send().await.expect("post")).await;
    assert_eq!(status, 201, "{issued}");
    let verify = http.post(format!("{internal}/tokens/verify")).json(&serde_json::json!({"token": issued["token"]}));
    let (status, _, verdict) = answer(verify.send().await.expect("verify")).await;
    assert_eq!((status, &verdict["valid"]), (200, &serde_json::json!(true)), "{verdict}");
    for request in
        [http.get(format!("{internal}/metrics")), http.get(format!("{internal}/metrics")).bearer_auth("wrong")]
    {
        let (status, challenge, body) = answer(request.send().await.expect("metrics")).await;
        assert_eq!(status, 401, "{body}");
        assert!(challenge.is_some_and(|c| c.starts_with("Bearer")));
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    }
    let request = http.get(format!("{internal}/metrics")).bearer_auth(OPERATOR_TOKEN);
    let (status, _, metrics) = answer(request.send().await.expect("metrics")).await;
    assert_eq!(status, 200);
    assert!(metrics.as_str().is_some_and(|m| m.contains("producer_http_requests_total")), "{metrics}");
    child.kill().await.expect("kill");
}

#[tokio::test]
async fn sigterm_stops_accepting_flushes_and_exits_0() {
    let mock = MockCluster::new(1).expect("mock");
    for topic in ["new-user-created", "issued-token"] {
        mock.create_topic(topic, 8, 1).expect("topic");
    }
    let (port, internal_port) = (testkit::free_port(), testkit::free_port());
    let mut child = producer()
        .env("KAFKA_BROKERS", mock.bootstrap_servers())
        .env("APP_ENV", "development")
        .env("PORT", port.to_string())
        .env("INTERNAL_PORT", internal_port.to_string())
        .spawn()
        .expect("spawn");
    let base = format!("http://127.0.0.1:{port}/producer-svc");
    let internal = format!("http://127.0.0.1:{internal_port}/producer-svc");
    let http = reqwest::Client::new();
    wait_until_up(&http, &base).await;
    wait_until_up(&http, &internal).await;
    let created = http
        .post(format!("{base}/users"))
        .json(&serde_json::json!({"name": "Ada", "email": "ada@example.com"}))
        .send()
        .await
        .expect("post");
    assert_eq!(created.status(), 201);

    let pid = child.id().expect("pid").to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill");
    assert!(killed.success());
    let status =
        tokio::time::timeout(Duration::from_secs(15), child.wait()).await.expect("exits within 15 s").expect("wait");
    assert_eq!(status.code(), Some(0), "graceful exit");
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stderr).await.expect("stderr");
    }
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    assert!(stderr.contains("producer stopped"), "{stderr}");
    assert!(stderr.contains("OPERATOR_TOKEN is not set"), "development warns that operator routes are open: {stderr}");
    assert!(http.get(&base).send().await.is_err(), "no longer accepting");
    assert!(http.get(&internal).send().await.is_err(), "the internal port neither");
}
