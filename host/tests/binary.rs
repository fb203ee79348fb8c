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
    let out = host().env("HANDLERS_DIR", "/nonexistent-dir").output().await.expect("run");
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
    let mut child = host()
        .env("KAFKA_BROKERS", mock.bootstrap_servers())
        .env("KAFKA_GROUP_ID", &group)
        .env("HANDLERS_DIR", dir.path())
        .env("PORT", port.to_string())
        .env("LOG_FORMAT", "json")
        .env("KAFKA_OPT_SESSION_TIMEOUT_MS", "6000")
        .spawn()
        .expect("spawn");
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = match reqwest::get(&metrics).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if text.contains(r#"host_records_total{topic="orders",outcome="ok"} 30"#) {
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
    assert!(lines.iter().any(|l| l["message"] == "SIGTERM received, shutting down"), "{stderr}");
    assert!(lines.iter().any(|l| l["message"] == "host stopped"), "{stderr}");
    assert_eq!(committed(&mock, &group, "orders").iter().sum::<i64>(), 30, "offsets committed at shutdown");
}
