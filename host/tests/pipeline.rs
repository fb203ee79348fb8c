//! The consumer pipeline end to end against librdkafka's mock cluster, in-process: order per
//! partition, ok/retry/reject/trap landing on the right topics with the right headers, attempts
//! counting up, at-least-once across a restart and a rebalance, a broker outage.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;
use support::kafka::{
    Events, PARTITIONS, cluster, committed, host_env, metric, produce, producer, read_topic, start_host, uuid_like,
};
use support::{StubProducer, fixture};

fn handlers_dir(topic: &str, settings: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(fixture("hostile"), dir.path().join(format!("{topic}.wasm"))).expect("copy handler");
    if let Some(toml) = settings {
        std::fs::write(dir.path().join(format!("{topic}.toml")), toml).expect("write settings");
    }
    dir
}

fn digest(path: &Path) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(std::fs::read(path).expect("read"))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_handled_in_offset_order_within_each_partition() {
    let mock = cluster(&["orders"]);
    let dir = handlers_dir("orders", None);
    let host = start_host(host_env(&mock, dir.path(), &uuid_like(), &[])).await;
    let mut events = Events::connect(host.addr).await;
    let p = producer(&mock);
    const PER_PARTITION: usize = 50;
    for i in 0..PER_PARTITION {
        for partition in 0..PARTITIONS {
            produce(&p, "orders", partition, "echo", &format!("{partition}-{i}"), &[]).await;
        }
    }
    let seen = events.take(PER_PARTITION * PARTITIONS as usize, Duration::from_secs(30)).await;
    assert_eq!(seen.len(), PER_PARTITION * PARTITIONS as usize);
    let mut by_partition: BTreeMap<i64, Vec<(i64, String)>> = BTreeMap::new();
    for e in &seen {
        let payload = &e["payload"];
        by_partition
            .entry(payload["partition"].as_i64().expect("p"))
            .or_default()
            .push((payload["offset"].as_i64().expect("offset"), payload["value"].as_str().expect("value").to_string()));
    }
    for (partition, handled) in by_partition {
        let expected: Vec<(i64, String)> = (0..PER_PARTITION).map(|i| (i as i64, format!("{partition}-{i}"))).collect();
        assert_eq!(handled, expected, "partition {partition} in offset order, each once");
    }
    assert_eq!(
        metric(host.addr, r#"host_records_total{topic="orders",outcome="ok"}"#).await,
        (PER_PARTITION * 3) as f64
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_record_is_dead_lettered_with_its_data_and_the_reason() {
    let mock = cluster(&["orders"]);
    let dir = handlers_dir("orders", None);
    let host = start_host(host_env(&mock, dir.path(), &uuid_like(), &[])).await;
    produce(&producer(&mock), "orders", 1, "reject", "not an order", &[("trace", "abc")]).await;
    let dlq = read_topic(&mock, "orders.dlq", 1, Duration::from_secs(20));
    assert_eq!(dlq.len(), 1);
    let d = &dlq[0];
    assert_eq!((d.key.as_deref(), d.value.as_deref()), (Some("reject"), Some("not an order")));
    assert_eq!(d.header("trace"), Some("abc"), "original headers kept");
    assert_eq!(d.header("x-dlq-cause"), Some("reject"));
    assert_eq!(d.header("x-dlq-reason"), Some("not an order"));
    assert_eq!(d.header("x-dlq-attempts"), Some("1"));
    assert_eq!(d.header("x-dlq-topic"), Some("orders"));
    assert_eq!(d.header("x-dlq-partition"), Some("1"));
    assert_eq!(d.header("x-dlq-offset"), Some("0"));
    assert_eq!(d.header("x-dlq-handler-digest"), Some(digest(&dir.path().join("orders.wasm")).as_str()));
    assert!(read_topic(&mock, "orders.retry", 1, Duration::from_millis(500)).is_empty(), "a reject is not retried");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_go_in_place_then_through_the_retry_topic_then_to_the_dlq_with_attempts_counting_up() {
    let mock = cluster(&["orders"]);
    let dir = handlers_dir("orders", Some("[retry]\nin_place_attempts = 2\nmax_attempts = 5\n"));
    let host = start_host(host_env(&mock, dir.path(), &uuid_like(), &[])).await;
    produce(&producer(&mock), "orders", 0, "retry", "payment service down", &[("trace", "t1")]).await;

    let dlq = read_topic(&mock, "orders.dlq", 1, Duration::from_secs(30));
    assert_eq!(dlq.len(), 1, "dead-lettered after the last attempt");
    let d = &dlq[0];
    assert_eq!(d.header("x-dlq-cause"), Some("exhausted"));
    assert_eq!(d.header("x-dlq-outcome"), Some("retry"));
    assert_eq!(d.header("x-dlq-attempts"), Some("5"));
    assert_eq!(d.header("x-dlq-reason"), Some("payment service down"));
    assert_eq!(
        (d.header("x-dlq-topic"), d.header("x-dlq-offset")),
        (Some("orders"), Some("0")),
        "original coordinates"
    );
    assert_eq!(d.header("trace"), Some("t1"));
    assert!(d.headers.iter().all(|(k, _)| !k.starts_with("x-retry-")), "retry bookkeeping removed");

    // Attempts 1-2 in place, 3-4 after the first trip, 5 after the second.
    let retries = read_topic(&mock, "orders.retry", 2, Duration::from_secs(5));
    let attempts: Vec<_> = retries.iter().map(|r| r.header("x-retry-attempt").map(str::to_string)).collect();
    assert_eq!(attempts, vec![Some("3".to_string()), Some("5".to_string())]);
    assert_eq!(retries[0].header("x-retry-topic"), Some("orders"));
    assert_eq!(retries[0].header("x-retry-offset"), Some("0"));
    assert_eq!(retries[0].header("x-retry-error"), Some("retry: payment service down"));
    assert!(retries[0].header("x-retry-not-before").and_then(|v| v.parse::<i64>().ok()).is_some());
    assert_eq!(retries[1].header("x-retry-hops"), Some("2"));
    assert_eq!(metric(host.addr, r#"host_records_total{topic="orders",outcome="retry"}"#).await, 5.0);
    assert_eq!(metric(host.addr, r#"host_retries_total{topic="orders",kind="retry_topic"}"#).await, 2.0);
    assert_eq!(metric(host.addr, r#"host_retries_total{topic="orders",kind="in_place"}"#).await, 2.0);
    assert_eq!(metric(host.addr, r#"host_dead_lettered_total{topic="orders",kind="exhausted"}"#).await, 1.0);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_carry_the_attempt_number_and_original_coordinates_to_the_handler() {
    let mock = cluster(&["orders"]);
    let dir = handlers_dir("orders", Some("[retry]\nin_place_attempts = 1\nmax_attempts = 3\n"));
    let host = start_host(host_env(&mock, dir.path(), &uuid_like(), &[])).await;
    // A record that traps goes to the retry topic; the retry record is replayed by hand with
    // key "echo" so the handler reports what it was given.
    produce(&producer(&mock), "orders", 2, "trap", "x", &[]).await;
    let retries = read_topic(&mock, "orders.retry", 1, Duration::from_secs(20));
    assert_eq!(retries.len(), 1);
    assert!(retries[0].header("x-retry-error").is_some_and(|e| e.starts_with("trap:")));
    let mut events = Events::connect(host.addr).await;
    let headers: Vec<(&str, &str)> = retries[0].headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    produce(&producer(&mock), "orders.retry", 0, "echo", "replayed", &headers).await;
    let e = events.next(Duration::from_secs(20)).await.expect("an event");
    let payload = &e["payload"];
    assert_eq!(payload["topic"], "orders", "the original topic, not the retry topic");
    assert_eq!((payload["partition"].as_i64(), payload["offset"].as_i64()), (Some(2), Some(0)));
    assert_eq!(payload["attempt"], 2);
    assert_eq!(payload["headers"], serde_json::json!([]), "x-retry-* headers are not shown to the handler");
    // The trapping record's own retry record is delivered too; it traps until max_attempts.
    let dlq = read_topic(&mock, "orders.dlq", 1, Duration::from_secs(20));
    assert_eq!(dlq[0].header("x-dlq-outcome"), Some("trap"));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_retry_records_are_dead_lettered_with_the_reason() {
    let mock = cluster(&["orders"]);
    let dir = handlers_dir("orders", None);
    let host = start_host(host_env(&mock, dir.path(), &uuid_like(), &[])).await;
    produce(&producer(&mock), "orders.retry", 0, "echo", "no headers", &[]).await;
    let dlq = read_topic(&mock, "orders.dlq", 1, Duration::from_secs(20));
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].header("x-dlq-cause"), Some("malformed"));
    assert!(dlq[0].header("x-dlq-reason").is_some_and(|r| r.contains("x-retry-topic")));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_host_resumes_from_committed_offsets_and_handles_every_record() {
    let mock = cluster(&["orders"]);
    let stub = StubProducer::start().await;
    let dir = handlers_dir("orders", None);
    let group = uuid_like();
    let env = [("PRODUCER_URL", stub.url.as_str())];
    let p = producer(&mock);
    const N: usize = 60;
    for i in 0..N {
        // Each record makes one 20 ms producer call; the stub's log is the record of what ran.
        produce(&p, "orders", (i % PARTITIONS as usize) as i32, "call", r#"["/delay/20"]"#, &[]).await;
    }
    let first = start_host(host_env(&mock, dir.path(), &group, &env)).await;
    wait_until(Duration::from_secs(30), || stub.handled().len() >= 15).await;
    first.shutdown().await;

    let handled_first: BTreeSet<(i32, i64)> = stub.handled().into_iter().collect();
    assert!(handled_first.len() < N, "the first host was stopped mid-stream");
    let commits = committed(&mock, &group, "orders");
    for (partition, next) in commits.iter().enumerate() {
        for offset in 0..*next {
            assert!(
                handled_first.contains(&(partition as i32, offset)),
                "offset {offset} of partition {partition} committed but never handled"
            );
        }
    }

    let second = start_host(host_env(&mock, dir.path(), &group, &env)).await;
    wait_until(Duration::from_secs(60), || stub.handled().into_iter().collect::<BTreeSet<_>>().len() >= N).await;
    second.shutdown().await;
    let handled: BTreeSet<(i32, i64)> = stub.handled().into_iter().collect();
    assert_eq!(handled.len(), N, "every record handled at least once across the restart");
    let duplicates = stub.handled().len() - N;
    assert!(
        duplicates <= PARTITIONS as usize,
        "at most the record in hand per partition is repeated, saw {duplicates}"
    );
    assert_eq!(committed(&mock, &group, "orders").iter().sum::<i64>(), N as i64, "all committed after the second run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_still_retrying_when_the_host_stops_is_not_committed() {
    let mock = cluster(&["orders"]);
    // The second record fails and waits 5 s before each in-place retry: the host stops meanwhile.
    let dir = handlers_dir(
        "orders",
        Some("[retry]\nin_place_attempts = 5\nbackoff_initial_ms = 5000\nbackoff_max_ms = 5000\n"),
    );
    let group = uuid_like();
    let host = start_host(host_env(&mock, dir.path(), &group, &[])).await;
    let p = producer(&mock);
    produce(&p, "orders", 0, "ok", "done at once", &[]).await;
    produce(&p, "orders", 0, "retry", "still failing", &[]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metric(host.addr, r#"host_records_total{topic="orders",outcome="retry"}"#).await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "the second record was not tried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past the auto-commit interval: the commit timer runs while the record waits.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    host.shutdown().await;
    assert_eq!(
        committed(&mock, &group, "orders")[0],
        1,
        "the handled record is committed; the one still retrying is not, so it is redelivered"
    );
}

async fn wait_until(within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "condition not met within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_events_topic_every_event_is_on_it_before_its_record_is_committed() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = cluster(&["orders"]);
    mock.create_topic("handler-events", PARTITIONS, 1).expect("events topic");
    let dir = handlers_dir("orders", None);
    let group = uuid_like();
    let host = start_host(host_env(&mock, dir.path(), &group, &[("EVENTS_TOPIC", "handler-events")])).await;
    let p = producer(&mock);
    produce(&p, "orders", 2, "echo", "first", &[]).await;
    produce(&p, "orders", 2, "reject", "publishes nothing", &[]).await;
    let events = read_topic(&mock, "handler-events", 1, Duration::from_secs(20));
    assert_eq!(events.len(), 1, "one event for the echo record, none for the rejected one");
    let e = &events[0];
    assert_eq!(e.key.as_deref(), Some("echo"), "keyed by the source record's key");
    assert_eq!(e.header("event-kind"), Some("record"));
    let json: serde_json::Value = serde_json::from_str(e.value.as_deref().expect("value")).expect("JSON");
    assert_eq!((json["kind"].as_str(), json["topic"].as_str()), (Some("record"), Some("orders")));
    assert_eq!((json["partition"].as_i64(), json["offset"].as_i64()), (Some(2), Some(0)));
    assert_eq!(json["payload"]["value"], "first", "the payload as the handler published it");

    // A handler that sleeps 2 s, then publishes; meanwhile the broker starts refusing every
    // produce. The record ends `ok` but its event is not acknowledged, so its offset must not be
    // committed, however long that takes.
    produce(&p, "orders", 2, "sleep", "2000", &[]).await;
    mock.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 5000]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metric(host.addr, r#"host_records_total{topic="orders",outcome="ok"}"#).await < 2.0 {
        assert!(std::time::Instant::now() < deadline, "the sleeping record was not handled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Three auto-commit intervals while the event waits for the broker.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(committed(&mock, &group, "orders")[2], 2, "committed up to the record whose event is pending");
    mock.clear_request_errors(RDKafkaApiKey::Produce);
    let events = read_topic(&mock, "handler-events", 2, Duration::from_secs(30));
    assert_eq!(events.len(), 2, "the pending event arrived once the broker took it");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while committed(&mock, &group, "orders")[2] != 3 {
        assert!(std::time::Instant::now() < deadline, "the record was not committed after its event was acknowledged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    host.shutdown().await;
}
