//! Operating the host: hot reload (swap, invalid file, removal), the HTTP routes, a second host
//! joining mid-stream, and a broker outage, all against librdkafka's mock cluster.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::kafka::{PARTITIONS, cluster, committed, host_env, metric, produce, producer, start_host, uuid_like};
use support::{StubProducer, fixture};

fn handlers_dir(topic: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(fixture("hostile"), dir.path().join(format!("{topic}.wasm"))).expect("copy handler");
    dir
}

/// Moves `bytes` into `dir/name` atomically, as the README tells operators to.
fn move_into_place(dir: &std::path::Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.partial"));
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

async fn handlers(addr: std::net::SocketAddr) -> serde_json::Value {
    reqwest::get(format!("http://{addr}/handlers")).await.expect("handlers").json().await.expect("json")
}

async fn wait_for<F: Future<Output = bool>>(within: Duration, mut check: impl FnMut() -> F) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "condition not met within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

fn sha256(path: &std::path::Path) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(std::fs::read(path).expect("read"))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_swaps_rejects_and_removes_handlers_without_losing_records() {
    let mock = cluster(&["orders"]);
    let dir = handlers_dir("orders");
    let host = start_host(host_env(&mock, dir.path(), &uuid_like(), &[("RELOAD_INTERVAL_MS", "250")])).await;
    let addr = host.addr;
    let p = producer(&mock);
    let ok = r#"host_records_total{topic="orders",outcome="ok"}"#;
    for i in 0..30 {
        produce(&p, "orders", i % PARTITIONS, "echo", "before", &[]).await;
    }

    // Swap in another valid handler while records flow.
    let trivial = std::fs::read(fixture("trivial")).expect("trivial");
    let swapped = tokio::spawn({
        let p = p.clone();
        async move {
            for i in 0..30 {
                produce(&p, "orders", i % PARTITIONS, "echo", "during", &[]).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    move_into_place(dir.path(), "orders.wasm", &trivial);
    let new_digest = sha256(&fixture("trivial"));
    let took =
        wait_for(Duration::from_secs(5), || async { handlers(addr).await[0]["sha256"] == new_digest.as_str() }).await;
    eprintln!("hot reload: swapped in {took:?}");
    assert!(took <= Duration::from_secs(1), "swapped in {took:?}, more than 1 s");
    swapped.await.expect("producer task");
    wait_for(Duration::from_secs(20), || async { metric(addr, ok).await >= 60.0 }).await;

    // An invalid file is rejected; the swapped-in handler keeps running.
    move_into_place(dir.path(), "orders.wasm", b"\0asm\x0d\0\x01\0garbage");
    wait_for(Duration::from_secs(5), || async { handlers(addr).await[0]["last_error"].is_string() }).await;
    let status = handlers(addr).await;
    assert_eq!(status[0]["state"], "active");
    assert_eq!(status[0]["sha256"], new_digest.as_str());
    assert!(status[0]["last_error"].as_str().expect("error").contains("invalid component"), "{status}");
    assert_eq!(metric(addr, r#"host_reloads_total{topic="orders",kind="rejected"}"#).await, 1.0);
    for i in 0..10 {
        produce(&p, "orders", i % PARTITIONS, "echo", "after", &[]).await;
    }
    wait_for(Duration::from_secs(20), || async { metric(addr, ok).await >= 70.0 }).await;
    assert_eq!(metric(addr, ok).await, 70.0, "every record handled once, by a whole handler");

    // Removing the file stops the topic.
    std::fs::remove_file(dir.path().join("orders.wasm")).expect("remove");
    wait_for(Duration::from_secs(5), || async { handlers(addr).await[0]["state"] == "removed" }).await;
    let ready = reqwest::get(format!("http://{addr}/readyz")).await.expect("readyz");
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert!(body["reasons"].to_string().contains("no handler"), "{body}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_documented() {
    let mock = cluster(&["orders"]);
    let stub = StubProducer::start().await;
    let dir = handlers_dir("orders");
    let host = start_host(host_env(&mock, dir.path(), &uuid_like(), &[("PRODUCER_URL", &stub.url)])).await;
    let base = format!("http://{}", host.addr);
    let get = |path: &str| reqwest::get(format!("{base}{path}"));

    assert_eq!(get("/").await.expect("/").status(), 200);
    assert_eq!(get("/healthz").await.expect("healthz").status(), 200);
    let ready = get("/readyz").await.expect("readyz");
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<serde_json::Value>().await.expect("json"), serde_json::json!({"ready": true}));
    let ping = get("/ping").await.expect("ping");
    assert_eq!(ping.status(), 200);
    assert_eq!(ping.json::<serde_json::Value>().await.expect("json"), serde_json::json!({"ok": "Pong!"}));
    let handlers = get("/handlers").await.expect("handlers").json::<serde_json::Value>().await.expect("json");
    assert_eq!(handlers[0]["topic"], "orders");
    assert_eq!(handlers[0]["state"], "active");
    assert_eq!(handlers[0]["sha256"], sha256(&fixture("hostile")).as_str());
    assert!(handlers[0]["loaded_at"].is_string() && handlers[0]["counters"]["ok"].is_u64());
    let metrics = get("/metrics").await.expect("metrics").text().await.expect("text");
    for series in ["host_assigned_partitions", "host_in_flight", "host_reloads_total"] {
        assert!(metrics.contains(series), "{series} missing");
    }
    let missing = get("/nope").await.expect("404");
    assert_eq!(missing.status(), 404);
    assert!(missing.json::<serde_json::Value>().await.expect("json")["error"].is_string());
    let wrong = reqwest::Client::new().post(format!("{base}/healthz")).send().await.expect("405");
    assert_eq!(wrong.status(), 405);
    assert!(wrong.json::<serde_json::Value>().await.expect("json")["error"].is_string());

    // The healthcheck subcommand, as a container runtime runs it.
    let port = host.addr.port().to_string();
    let ok = tokio::process::Command::new(env!("CARGO_BIN_EXE_host"))
        .args(["healthcheck", "--port", &port])
        .status()
        .await
        .expect("run");
    assert!(ok.success());
    host.shutdown().await;
    let down = tokio::process::Command::new(env!("CARGO_BIN_EXE_host"))
        .args(["healthcheck", "--port", &port])
        .status()
        .await
        .expect("run");
    assert!(!down.success(), "healthcheck fails once the host is down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_answers_502_quickly_when_the_producer_is_down() {
    let mock = cluster(&["orders"]);
    let dir = handlers_dir("orders");
    let host = start_host(host_env(&mock, dir.path(), &uuid_like(), &[("PRODUCER_URL", "http://127.0.0.1:9")])).await;
    let started = Instant::now();
    let ping = reqwest::get(format!("http://{}/ping", host.addr)).await.expect("ping");
    assert_eq!(ping.status(), 502);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        ping.json::<serde_json::Value>().await.expect("json")["error"]
            .as_str()
            .is_some_and(|e| e.contains("unreachable"))
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_without_handlers_and_says_why_to_operators_only() {
    let mock = cluster(&["orders"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "an-operator-token-of-at-least-32-bytes";
    let env = host_env(&mock, dir.path(), &uuid_like(), &[("OPERATOR_TOKEN", token)]);
    let host = host::service::start(env).await.expect("start");
    let url = format!("http://{}/readyz", host.addr);
    let ready = reqwest::get(&url).await.expect("readyz");
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert!(!body.to_string().contains("handler"), "no reasons without the token: {body}");
    let ready = reqwest::Client::new().get(&url).bearer_auth(token).send().await.expect("readyz");
    let body: serde_json::Value = ready.json().await.expect("json");
    assert!(body["reasons"].to_string().contains("no handler is loaded"), "{body}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_joining_mid_stream_shares_the_work_and_every_record_is_handled() {
    let mock = cluster(&["orders"]);
    let stub = StubProducer::start().await;
    let dir = handlers_dir("orders");
    let group = uuid_like();
    let env = [("PRODUCER_URL", stub.url.as_str())];
    let p = producer(&mock);
    const N: usize = 90;
    for i in 0..N {
        // 18 s of work per partition: time for a cooperative rebalance's two rounds.
        produce(&p, "orders", (i % PARTITIONS as usize) as i32, "call", r#"["/delay/600"]"#, &[]).await;
    }
    let a = start_host(host_env(&mock, dir.path(), &group, &env)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = start_host(host_env(&mock, dir.path(), &group, &env)).await;
    let handled = || stub.handled().into_iter().collect::<BTreeSet<_>>().len();
    wait_for(Duration::from_secs(60), || async { handled() >= N }).await;
    let b_share = metric(b.addr, r#"host_records_total{topic="orders",outcome="ok"}"#).await;
    a.shutdown().await;
    b.shutdown().await;
    assert_eq!(handled(), N, "every record handled");
    assert!(b_share > 0.0, "the second host took partitions");
    // At-least-once: repeats are allowed (librdkafka's mock broker refuses commits while a
    // rebalance is pending, so records handled then are handled again); losses are not.
    let duplicates = stub.handled().len() - N;
    eprintln!("rebalance: {N} records, {duplicates} handled twice");
    // Nothing is committed that was not handled. (The final commits may be refused while the
    // group rebalances after the first host leaves; those records would be handled again.)
    let handled: BTreeSet<(i32, i64)> = stub.handled().into_iter().collect();
    for (partition, next) in committed(&mock, &group, "orders").into_iter().enumerate() {
        for offset in 0..next {
            assert!(
                handled.contains(&(partition as i32, offset)),
                "partition {partition} offset {offset} committed unhandled"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_rides_out_a_broker_outage() {
    let mock = cluster(&["orders"]);
    let stub = StubProducer::start().await;
    let dir = handlers_dir("orders");
    let group = uuid_like();
    let host = start_host(host_env(&mock, dir.path(), &group, &[("PRODUCER_URL", stub.url.as_str())])).await;
    let p = producer(&mock);
    for i in 0..15 {
        produce(&p, "orders", i % PARTITIONS, "call", r#"["/delay/20"]"#, &[]).await;
    }
    mock.broker_down(1).expect("down");
    tokio::time::sleep(Duration::from_secs(3)).await;
    mock.broker_up(1).expect("up");
    for i in 0..15 {
        produce(&p, "orders", i % PARTITIONS, "call", r#"["/delay/20"]"#, &[]).await;
    }
    let handled = || stub.handled().into_iter().collect::<BTreeSet<_>>().len();
    wait_for(Duration::from_secs(60), || async { handled() >= 30 }).await;
    host.shutdown().await;
    assert_eq!(committed(&mock, &group, "orders").iter().sum::<i64>(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_handlers_dir_is_seeded_and_a_populated_one_is_left_alone() {
    let mock = cluster(&["orders"]);
    let seed = handlers_dir("orders");
    let empty = tempfile::tempdir().expect("tempdir");
    let seed_path = seed.path().display().to_string();
    let host = start_host(host_env(&mock, empty.path(), &uuid_like(), &[("HANDLERS_SEED_DIR", &seed_path)])).await;
    assert!(empty.path().join("orders.wasm").exists(), "seeded");
    assert_eq!(handlers(host.addr).await[0]["state"], "active");
    host.shutdown().await;

    let populated = tempfile::tempdir().expect("tempdir");
    std::fs::copy(fixture("trivial"), populated.path().join("orders.wasm")).expect("copy");
    let host = start_host(host_env(&mock, populated.path(), &uuid_like(), &[("HANDLERS_SEED_DIR", &seed_path)])).await;
    assert_eq!(
        handlers(host.addr).await[0]["sha256"],
        sha256(&fixture("trivial")).as_str(),
        "a directory with handlers is not seeded"
    );
    host.shutdown().await;
}
