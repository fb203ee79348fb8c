//! The `producer` binary as an operator runs it: configuration failures at start, and a graceful
//! SIGTERM that drains and exits 0.

use rdkafka::mocking::MockCluster;
use std::time::{Duration, Instant};
use tokio::process::Command;

fn producer() -> Command {
    testkit::service_command(env!("CARGO_BIN_EXE_producer"))
}

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

    let out = producer().env("APP_ENV", "development").env("KAFKA_BROKER", "typo:1").output().await.expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KAFKA_BROKER is not a known variable"));
}

#[tokio::test]
async fn sigterm_stops_accepting_flushes_and_exits_0() {
    let mock = MockCluster::new(1).expect("mock");
    for topic in ["new-user-created", "issued-token"] {
        mock.create_topic(topic, 8, 1).expect("topic");
    }
    let port = testkit::free_port();
    let mut child = producer()
        .env("KAFKA_BROKERS", mock.bootstrap_servers())
        .env("APP_ENV", "development")
        .env("PORT", port.to_string())
        .spawn()
        .expect("spawn");
    let base = format!("http://127.0.0.1:{port}/producer-svc");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(&base).send().await.is_err() {
        assert!(Instant::now() < deadline, "producer did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    assert!(http.get(&base).send().await.is_err(), "no longer accepting");
}
