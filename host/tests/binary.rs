//! The `host` binary as an operator runs it: bad configuration fails at start naming the
//! variable; SIGTERM drains, commits and exits 0.

mod support;

use std::time::{Duration, Instant};
use support::fixture;
use support::kafka::{cluster, committed, produce, producer, uuid_like};
use tokio::process::Command;

fn host() -> Command {
    testkit::service_command(env!("CARGO_BIN_EXE_host"))
}

#[tokio::test]
async fn bad_configuration_fails_at_start_naming_every_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = host()
        .env("HANDLERS_DIR", dir.path())
        .env("PORT", "nope")
        .env("HANDLER_INSTANCE_POLICY", "sometimes")
        .env("KAFKA_GRUOP_ID", "typo")
        .output()
        .await
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in ["PORT", "HANDLER_INSTANCE_POLICY", "KAFKA_GRUOP_ID is not a known variable"] {
        assert!(stderr.contains(needle), "{needle} missing from {stderr}");
    }
    let out = host().env("HANDLERS_DIR", "/nonexistent-dir").env("APP_ENV", "development").output().await.expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a directory"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_commits_leaves_and_exits_0() {
    let mock = cluster(&["orders"]);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(fixture("hostile"), dir.path().join("orders.wasm")).expect("copy");
    let group = uuid_like();
    let port = testkit::free_port();
    let p = producer(&mock);
    for i in 0..30 {
        produce(&p, "orders", i % 3, "echo", "x", &[]).await;
    }
    produce(&p, "orders", 0, "forge", FORGED, &[]).await;
    let mut child = host()
        .env("KAFKA_BROKERS", mock.bootstrap_servers())
        .env("KAFKA_GROUP_ID", &group)
        .env("HANDLERS_DIR", dir.path())
        .env("PORT", port.to_string())
        .env("LOG_FORMAT", "json")
        .env("OPERATOR_TOKEN", OPERATOR_TOKEN)
        .env("KAFKA_OPT_SESSION_TIMEOUT_MS", "6000")
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = metrics(port).await;
        if text.contains(r#"host_records_total{topic="orders",outcome="ok"} 30"#)
            && text.contains(r#"host_records_total{topic="orders",outcome="reject"} 1"#)
        {
            break;
        }
        assert!(Instant::now() < deadline, "records not handled: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = child.id().expect("pid").to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill").success());
    let status =
        tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("exits in time").expect("wait");
    assert_eq!(status.code(), Some(0));
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stderr).await.expect("stderr");
    }
    let lines: Vec<serde_json::Value> = stderr.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(!lines.is_empty(), "LOG_FORMAT=json logs JSON lines: {stderr}");
    assert_no_forged_line(&stderr);
    assert!(
        lines.iter().any(|l| l["message"].as_str().is_some_and(|m| m.contains("FORGED"))),
        "the guest's text is logged, as data"
    );
    assert!(lines.iter().any(|l| l["message"] == "SIGTERM received, shutting down"), "{stderr}");
    assert!(lines.iter().any(|l| l["message"] == "host stopped"), "{stderr}");
    assert_eq!(committed(&mock, &group, "orders").iter().sum::<i64>(), 31, "offsets committed at shutdown");
}

/// The operator token the tests run the host with.
const OPERATOR_TOKEN: &str = "test-operator-token-of-at-least-32-bytes";

/// A guest's log line and reject reason made to pass for two lines of the host's own.
const FORGED: &str = "all good\n2099-01-01T00:00:00.000000Z  INFO host::service: FORGED host stopped\r\n\
                      {\"timestamp\":\"2099-01-01T00:00:00Z\",\"level\":\"INFO\",\"message\":\"FORGED\"}";

/// No line of `log` starts with the forged text: it stayed inside the line that logged it.
fn assert_no_forged_line(log: &str) {
    for line in log.lines() {
        assert!(
            !line.starts_with("2099-") && !line.starts_with("{\"timestamp\":\"2099"),
            "a forged log line: {line}\n{log}"
        );
    }
}

/// The host's `/metrics`, read with the operator token.
async fn metrics(port: u16) -> String {
    let request =
        reqwest::Client::new().get(format!("http://127.0.0.1:{port}/metrics")).bearer_auth(OPERATOR_TOKEN).send();
    match request.await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_routes_need_the_operator_token_public_ones_do_not_and_guest_text_cannot_forge_log_lines() {
    let mock = cluster(&["orders"]);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(fixture("hostile"), dir.path().join("orders.wasm")).expect("copy");
    let port = testkit::free_port();
    produce(&producer(&mock), "orders", 0, "forge", FORGED, &[]).await;
    let mut child = host()
        .env("KAFKA_BROKERS", mock.bootstrap_servers())
        .env("KAFKA_GROUP_ID", uuid_like())
        .env("HANDLERS_DIR", dir.path())
        .env("PORT", port.to_string())
        .env("LOG_FORMAT", "text")
        .env("OPERATOR_TOKEN", OPERATOR_TOKEN)
        .env("KAFKA_OPT_SESSION_TIMEOUT_MS", "6000")
        .spawn()
        .expect("spawn");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(Instant::now() < deadline, "not ready without a token");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for path in ["/", "/healthz"] {
        assert_eq!(client.get(format!("{base}{path}")).send().await.expect("get").status(), 200, "{path} is public");
    }
    for path in ["/metrics", "/handlers", "/events"] {
        for token in [None, Some("not-the-operator-token-but-32-bytes-long")] {
            let mut request = client.get(format!("{base}{path}"));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.expect("get");
            assert_eq!(response.status(), 401, "{path} with {token:?}");
            assert!(response.headers().get("www-authenticate").is_some_and(|v| v.as_bytes().starts_with(b"Bearer")));
            let body: serde_json::Value = response.json().await.expect("a JSON body");
            assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{path}: {body}");
        }
    }
    let handlers = client.get(format!("{base}/handlers")).bearer_auth(OPERATOR_TOKEN).send().await.expect("get");
    assert_eq!(handlers.status(), 200);
    while !metrics(port).await.contains(r#"host_records_total{topic="orders",outcome="reject"} 1"#) {
        assert!(Instant::now() < deadline, "the forging record was not handled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = child.id().expect("pid").to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill").success());
    tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("exits in time").expect("wait");
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stderr).await.expect("stderr");
    }
    assert_no_forged_line(&stderr);
    let logged: Vec<&str> = stderr.lines().filter(|l| l.contains("FORGED")).collect();
    assert!(logged.len() >= 2, "the guest's log line and its reason are logged: {stderr}");
    assert!(logged.iter().all(|l| l.contains("all good\\n2099-")), "escaped in place: {logged:?}");
}
