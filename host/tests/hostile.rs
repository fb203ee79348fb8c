//! Hostile input and hostile neighbours, through the whole pipeline against librdkafka's mock
//! cluster: malformed records on a topic (invalid UTF-8, a value near the broker's size limit,
//! empty and missing keys, tombstones, a thousand headers, JSON nested past any parser's depth)
//! each end handled or dead-lettered with a reason, and the host keeps going; a handler stuck in a
//! loop on one topic does not stop another topic; broken `.wasm` files dropped into
//! `HANDLERS_DIR` are rejected one by one while the loaded handler keeps running.

mod support;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use std::time::{Duration, Instant};
use support::kafka::{Events, cluster, host_env, metric, produce, producer, read_topic, start_host, uuid_like};
use support::{StubProducer, fixture, handler};

/// Produces a record with raw key, value and headers (any of them absent) to partition 0.
async fn produce_raw(
    p: &rdkafka::producer::FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: Option<OwnedHeaders>,
) {
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).partition(0);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(value) = value {
        record = record.payload(value);
    }
    if let Some(headers) = headers {
        record = record.headers(headers);
    }
    p.send(record, Duration::from_secs(10)).await.expect("produce");
}

/// One hostile record: what it is, then its raw key, value and headers.
type Hostile = (&'static str, Option<Vec<u8>>, Option<Vec<u8>>, Option<OwnedHeaders>);

fn valid_user(n: u32) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": format!("0190a1b2-c3d4-7e5f-8a9b-{n:012x}"),
        "name": "Ada",
        "email": "ada@example.com",
        "created_at": "2026-11-26T13:00:00.000Z",
    }))
    .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_are_dead_lettered_with_a_reason_and_the_host_keeps_going() {
    const TOPIC: &str = "new-user-created";
    let mock = cluster(&[TOPIC]);
    let stub = StubProducer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(handler("new-user-created"), dir.path().join(format!("{TOPIC}.wasm"))).expect("copy");
    let host = start_host(host_env(&mock, dir.path(), &uuid_like(), &[("PRODUCER_URL", &stub.url)])).await;
    let p = producer(&mock);

    let many_headers = (0..1000)
        .fold(OwnedHeaders::new(), |h, i| h.insert(Header { key: &format!("h{i}"), value: Some(b"v".as_slice()) }));
    let deep_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let big = vec![b'{'; 900 * 1024];
    let hostile: Vec<Hostile> = vec![
        ("invalid UTF-8", Some(b"k1".to_vec()), Some(vec![0xff, 0xfe, 0xc3, 0x28, 0xa0]), None),
        ("900 KiB value", Some(b"k2".to_vec()), Some(big), None),
        ("empty key", Some(Vec::new()), Some(b"{\"id\":1}".to_vec()), None),
        ("no key", None, Some(b"not json".to_vec()), None),
        ("tombstone", Some(b"k5".to_vec()), None, None),
        ("1000 headers", Some(b"k6".to_vec()), Some(b"[]".to_vec()), Some(many_headers)),
        ("JSON nested 100000 deep", Some(b"k7".to_vec()), Some(deep_json.into_bytes()), None),
        ("empty value", Some(b"k8".to_vec()), Some(Vec::new()), None),
    ];
    let count = hostile.len();
    for (_, key, value, headers) in hostile {
        produce_raw(&p, TOPIC, key.as_deref(), value.as_deref(), headers).await;
    }
    // After them, a valid user on the same partition: it must still be handled, in order.
    produce_raw(&p, TOPIC, Some(b"good"), Some(&valid_user(1)), None).await;

    let mut dlq = read_topic(&mock, &format!("{TOPIC}.dlq"), count, Duration::from_secs(60));
    assert_eq!(dlq.len(), count, "every malformed record is dead-lettered");
    // Dead letters are keyed like the originals, so they spread over partitions: sort them back.
    dlq.sort_by_key(|d| d.header("x-dlq-offset").and_then(|o| o.parse::<i64>().ok()));
    for (i, d) in dlq.iter().enumerate() {
        assert_eq!(d.header("x-dlq-offset"), Some(i.to_string().as_str()), "one dead letter per record");
        assert_eq!(d.header("x-dlq-cause"), Some("reject"), "record {i} rejected by the handler");
        let reason = d.header("x-dlq-reason").unwrap_or_default();
        assert!(!reason.is_empty(), "record {i} has a reason");
    }
    assert!(
        dlq[0].header("x-dlq-reason").unwrap_or_default().contains("malformed"),
        "invalid UTF-8 is called malformed: {:?}",
        dlq[0].header("x-dlq-reason")
    );
    assert_eq!(dlq[1].value.as_ref().map(String::len), Some(900 * 1024), "the big value is kept whole");
    assert!(dlq[5].header("h999").is_some(), "all 1000 headers kept on the dead letter");

    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(host.addr, &format!(r#"host_records_total{{topic="{TOPIC}",outcome="ok"}}"#)).await < 1.0 {
        assert!(Instant::now() < deadline, "the valid record after the hostile ones was not handled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        metric(host.addr, &format!(r#"host_records_total{{topic="{TOPIC}",outcome="reject"}}"#)).await,
        count as f64
    );
    assert_eq!(stub.seen().len(), 1, "only the valid user reached the producer");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_stuck_in_a_loop_does_not_stop_another_topic() {
    let mock = cluster(&["stuck", "flowing"]);
    let dir = tempfile::tempdir().expect("tempdir");
    for topic in ["stuck", "flowing"] {
        std::fs::copy(fixture("hostile"), dir.path().join(format!("{topic}.wasm"))).expect("copy");
    }
    // Every call on `stuck` runs into its 300 ms limit, again and again (nine attempts each).
    std::fs::write(dir.path().join("stuck.toml"), "[limits]\ncall_timeout_ms = 300\n").expect("settings");
    let host = start_host(host_env(&mock, dir.path(), &uuid_like(), &[])).await;
    let mut events = Events::connect(host.addr).await;
    let p = producer(&mock);
    for partition in 0..3 {
        produce(&p, "stuck", partition, "loop", "forever", &[]).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    for i in 0..60 {
        produce(&p, "flowing", i % 3, "echo", &format!("n{i}"), &[]).await;
    }
    let seen = events.take(60, Duration::from_secs(20)).await;
    let took = started.elapsed();
    assert_eq!(seen.len(), 60, "every record of the other topic was handled");
    // Not a timing bound but an order: the other topic finished while the loops were still being
    // fought (three records, nine timed-out attempts each before they are dead-lettered).
    let timeouts = metric(host.addr, r#"host_records_total{topic="stuck",outcome="timeout"}"#).await;
    assert!(
        timeouts < 27.0,
        "the flowing topic took {took:?}, until the loops were all given up ({timeouts} timeouts)"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(host.addr, r#"host_records_total{topic="stuck",outcome="timeout"}"#).await < 3.0 {
        assert!(Instant::now() < deadline, "the loops were not stopped by the time limit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_wasm_files_are_rejected_one_by_one_and_the_loaded_handler_keeps_running() {
    let mock = cluster(&["orders"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let good = std::fs::read(fixture("hostile")).expect("read");
    std::fs::write(dir.path().join("orders.wasm"), &good).expect("write");
    let host = start_host(host_env(&mock, dir.path(), &uuid_like(), &[])).await;
    let mut events = Events::connect(host.addr).await;
    let p = producer(&mock);
    let mut random = vec![0u8; 4096];
    for (i, b) in random.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3];
    }
    let broken: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("random bytes", random),
        ("a core module, not a component", b"\0asm\x01\0\0\0".to_vec()),
        ("wrong world", std::fs::read(fixture("no-handle")).expect("read")),
        ("extra import", std::fs::read(fixture("extra-import")).expect("read")),
    ];
    for (n, (what, bytes)) in broken.iter().enumerate() {
        let tmp = dir.path().join(".orders.wasm.tmp");
        std::fs::write(&tmp, bytes).expect("write");
        std::fs::rename(&tmp, dir.path().join("orders.wasm")).expect("rename");
        let deadline = Instant::now() + Duration::from_secs(20);
        while metric(host.addr, r#"host_reloads_total{topic="orders",kind="rejected"}"#).await < (n + 1) as f64 {
            assert!(Instant::now() < deadline, "the {what} file was not rejected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        produce(&p, "orders", 0, "echo", what, &[]).await;
        let seen = events.take(1, Duration::from_secs(10)).await;
        assert_eq!(seen.len(), 1, "the loaded handler still runs after the {what} file");
        assert_eq!(seen[0]["payload"]["value"], *what);
    }
    let status: serde_json::Value =
        reqwest::get(format!("http://{}/handlers", host.addr)).await.expect("get").json().await.expect("json");
    let orders = status.as_array().and_then(|a| a.iter().find(|h| h["topic"] == "orders")).cloned().expect("orders");
    assert!(orders["last_error"].as_str().is_some_and(|e| !e.is_empty()), "the last rejection is shown: {orders}");

    // Files the loader must refuse without reading them: a link to a device that never ends,
    // and a (sparse) file of 1 GiB, far over the 64 MiB limit.
    let rejected = broken.len();
    let tmp = dir.path().join(".orders.wasm.tmp");
    std::os::unix::fs::symlink("/dev/zero", &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.path().join("orders.wasm")).expect("rename");
    let error = wait_rejected(host.addr, rejected + 1).await;
    assert!(error.contains("not a regular file"), "{error}");
    let file = std::fs::File::create(&tmp).expect("create");
    file.set_len(1 << 30).expect("a sparse 1 GiB file");
    std::fs::rename(&tmp, dir.path().join("orders.wasm")).expect("rename");
    let error = wait_rejected(host.addr, rejected + 2).await;
    assert!(error.contains("1073741824 bytes, over the limit"), "{error}");
    produce(&p, "orders", 0, "echo", "still running", &[]).await;
    assert_eq!(events.take(1, Duration::from_secs(10)).await.len(), 1, "the loaded handler still runs");
    host.shutdown().await;
}

/// Waits until `n` loads of `orders` were rejected; the last rejection's reason.
async fn wait_rejected(addr: std::net::SocketAddr, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(addr, r#"host_reloads_total{topic="orders",kind="rejected"}"#).await < n as f64 {
        assert!(Instant::now() < deadline, "rejection {n} did not come");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status: serde_json::Value =
        reqwest::get(format!("http://{addr}/handlers")).await.expect("get").json().await.expect("json");
    let orders = status.as_array().and_then(|a| a.iter().find(|h| h["topic"] == "orders")).cloned().expect("orders");
    orders["last_error"].as_str().unwrap_or_default().to_string()
}
