//! The consumer pipeline end to end against librdkafka's mock cluster, in-process: order per
//! key and per partition, records side by side within the instance cap, the committed offset
//! never past an unfinished record, ok/retry/reject/trap landing on the right topics with the
//! right headers, attempts counting up, at-least-once across a restart and a rebalance, a
//! broker outage.

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
async fn a_restarted_host_resumes_from_committed_offsets_and_a_graceful_stop_repeats_nothing() {
    let mock = cluster(&["orders"]);
    let stub = StubProducer::start().await;
    // Two records in flight per partition: the first host is stopped with most records left.
    let dir = handlers_dir("orders", Some("[concurrency]\nmax_in_flight = 2\n"));
    let group = uuid_like();
    let env = [("PRODUCER_URL", stub.url.as_str())];
    let p = producer(&mock);
    const N: usize = 400;
    for i in 0..N {
        // Each record makes one 20 ms producer call; the stub's log is the record of what ran.
        produce(&p, "orders", (i % PARTITIONS as usize) as i32, &format!("call/{i}"), r#"["/delay/20"]"#, &[]).await;
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
    assert_eq!(
        stub.handled().len(),
        N,
        "a graceful stop finishes every record it took and commits them: none is handled twice"
    );
    assert_eq!(committed(&mock, &group, "orders").iter().sum::<i64>(), N as i64, "all committed after the second run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_retrying_in_place_when_the_host_stops_goes_on_through_the_retry_topic() {
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
    let stopped_at = chrono::Utc::now().timestamp_millis();
    host.shutdown().await;
    // Its next attempt is handed on, not abandoned: nothing after it need be handled again.
    let retry = read_topic(&mock, "orders.retry", 1, Duration::from_secs(10));
    assert_eq!(retry.len(), 1, "the retrying record's copy is on the retry topic");
    assert_eq!(retry[0].header("x-retry-attempt"), Some("2"));
    let not_before: i64 = retry[0].header("x-retry-not-before").expect("not before").parse().expect("a number");
    assert!(not_before <= stopped_at + 5_000, "it waits no more than what was left of its backoff");
    assert_eq!(committed(&mock, &group, "orders")[0], 2, "both records are final and committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_one_key_run_in_offset_order_while_other_keys_run_side_by_side() {
    let mock = cluster(&["orders"]);
    let stub = StubProducer::start().await;
    let dir = handlers_dir("orders", None);
    let host = start_host(host_env(&mock, dir.path(), &uuid_like(), &[("PRODUCER_URL", stub.url.as_str())])).await;
    let p = producer(&mock);
    const N: i64 = 300;
    // Random keys and random handler latency, all on one partition.
    let mut key_of = BTreeMap::new();
    for offset in 0..N {
        let key = format!("call/k{}", rand::random_range(0..25));
        let delay = rand::random_range(0..25);
        produce(&p, "orders", 0, &key, &format!(r#"["/delay/{delay}"]"#), &[]).await;
        key_of.insert(offset, key);
    }
    wait_until(Duration::from_secs(60), || stub.handled().len() >= N as usize).await;
    host.shutdown().await;
    let handled = stub.handled();
    assert_eq!(handled.len(), N as usize, "each record once");
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    for (partition, offset) in handled {
        assert_eq!(partition, 0);
        let key = key_of[&offset].as_str();
        if let Some(before) = last.insert(key, offset) {
            assert!(before < offset, "{key}: offset {offset} called after {before}: a key's records in offset order");
        }
    }
    let most = stub.max_concurrent();
    assert!(most > 1, "records of different keys ran side by side (at most {most} at once)");
    assert!(most <= 25, "never two records of one key at once: {most} calls at once for 25 keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_ordering_runs_one_record_at_a_time() {
    let mock = cluster(&["orders"]);
    let stub = StubProducer::start().await;
    let dir = handlers_dir("orders", Some("[concurrency]\nordering = \"partition\"\n"));
    let host = start_host(host_env(&mock, dir.path(), &uuid_like(), &[("PRODUCER_URL", stub.url.as_str())])).await;
    let p = producer(&mock);
    for i in 0..40 {
        produce(&p, "orders", 0, &format!("call/{i}"), r#"["/delay/5"]"#, &[]).await;
    }
    wait_until(Duration::from_secs(30), || stub.handled().len() >= 40).await;
    let handlers: serde_json::Value = reqwest::get(format!("http://{}/handlers", host.addr))
        .await
        .expect("GET /handlers")
        .json()
        .await
        .expect("json");
    host.shutdown().await;
    let offsets: Vec<i64> = stub.handled().into_iter().map(|(_, o)| o).collect();
    assert_eq!(offsets, (0..40).collect::<Vec<_>>(), "in offset order");
    assert_eq!(stub.max_concurrent(), 1, "one record at a time");
    let orders = handlers.as_array().expect("array").iter().find(|h| h["topic"] == "orders").expect("orders");
    assert_eq!((orders["ordering"].as_str(), orders["max_in_flight"].as_u64()), (Some("partition"), Some(32)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_committed_offset_never_passes_an_unfinished_record() {
    let mock = cluster(&["orders"]);
    let stub = StubProducer::start().await;
    let dir = handlers_dir("orders", None);
    let group = uuid_like();
    let host = start_host(host_env(&mock, dir.path(), &group, &[("PRODUCER_URL", stub.url.as_str())])).await;
    let p = producer(&mock);
    // The first record waits 4 s for its call; the 30 after it, of other keys, finish at once.
    produce(&p, "orders", 0, "call/slow", r#"["/delay/4000"]"#, &[]).await;
    for i in 0..30 {
        produce(&p, "orders", 0, &format!("call/{i}"), r#"["/delay/1"]"#, &[]).await;
    }
    wait_until(Duration::from_secs(20), || stub.handled().len() >= 31).await;
    // Past the auto-commit interval, while the first record is still in its call.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let in_flight = metric(host.addr, r#"host_partition_in_flight{topic="orders",partition="0"}"#).await;
    let early = committed(&mock, &group, "orders")[0];
    assert!(early <= 0, "nothing committed past the unfinished first record: committed {early}");
    assert_eq!(in_flight, 1.0, "only the slow record is in flight");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while committed(&mock, &group, "orders")[0] != 31 {
        assert!(std::time::Instant::now() < deadline, "all 31 committed once the first finished");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_instance_cap_records_wait_for_a_worker_instead_of_failing() {
    let mock = cluster(&["orders"]);
    let stub = StubProducer::start().await;
    let dir = handlers_dir("orders", None);
    let env = [("PRODUCER_URL", stub.url.as_str()), ("MAX_INSTANCES", "2")];
    let host = start_host(host_env(&mock, dir.path(), &uuid_like(), &env)).await;
    let p = producer(&mock);
    for i in 0..80 {
        produce(&p, "orders", i % PARTITIONS, &format!("call/{i}"), r#"["/delay/10"]"#, &[]).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while metric(host.addr, r#"host_records_total{topic="orders",outcome="ok"}"#).await < 80.0 {
        assert!(std::time::Instant::now() < deadline, "every record ok within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(host.addr, "host_instances_max").await, 2.0);
    for outcome in ["trap", "timeout", "memory", "retry"] {
        let series = format!(r#"host_records_total{{topic="orders",outcome="{outcome}"}}"#);
        assert_eq!(metric(host.addr, &series).await, 0.0, "no record failed waiting for a worker: {outcome}");
    }
    host.shutdown().await;
    assert!(stub.max_concurrent() <= 2, "at most two records in calls at once, saw {}", stub.max_concurrent());
    assert_eq!(stub.handled().len(), 80);
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

/// Waits until `series` on the host's `/metrics` reaches `at_least`.
async fn wait_metric(addr: std::net::SocketAddr, series: &str, at_least: f64, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while metric(addr, series).await < at_least {
        assert!(std::time::Instant::now() < deadline, "{series} did not reach {at_least} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Produces `key`/`value` to `orders` behind a record that holds the partition for 2 s, then has
/// the broker refuse every produce (`TOPIC_AUTHORIZATION_FAILED`) until the test clears it.
async fn refuse_produces_after(
    mock: &rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    partition: i32,
    key: &str,
    value: &str,
) {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let p = producer(mock);
    produce(&p, "orders", partition, "sleep", "2000", &[]).await;
    produce(&p, "orders", partition, key, value, &[]).await;
    mock.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 500]);
}

/// The first stalled partition `/handlers` reports for `orders`, within 30 s.
async fn wait_stalled(addr: std::net::SocketAddr) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = handler_status(addr, "orders").await;
        if let Some(stall) = status["stalled"].as_array().and_then(|s| s.first()).cloned() {
            return stall;
        }
        assert!(std::time::Instant::now() < deadline, "no stall reported: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `/handlers` entry of `topic`.
async fn handler_status(addr: std::net::SocketAddr, topic: &str) -> serde_json::Value {
    let all: Vec<serde_json::Value> =
        reqwest::get(format!("http://{addr}/handlers")).await.expect("handlers").json().await.expect("json");
    all.into_iter().find(|h| h["topic"] == topic).expect("the topic's status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_blocks_forever_times_out_is_dead_lettered_and_the_partition_moves_on() {
    let mock = cluster(&["orders"]);
    let settings = "[limits]\ncall_timeout_ms = 200\n[retry]\nin_place_attempts = 2\nmax_attempts = 2\n";
    let dir = handlers_dir("orders", Some(settings));
    let host = start_host(host_env(&mock, dir.path(), &uuid_like(), &[])).await;
    let mut events = Events::connect(host.addr).await;
    let p = producer(&mock);
    produce(&p, "orders", 0, "block", "forever", &[]).await;
    produce(&p, "orders", 0, "echo", "after", &[]).await;
    let dlq = read_topic(&mock, "orders.dlq", 1, Duration::from_secs(20));
    assert_eq!(dlq.len(), 1);
    assert_eq!((dlq[0].header("x-dlq-outcome"), dlq[0].header("x-dlq-attempts")), (Some("timeout"), Some("2")));
    let after = events.take(1, Duration::from_secs(20)).await;
    assert_eq!(after.first().map(|e| e["payload"]["value"].clone()), Some("after".into()), "the next record ran");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_record_too_large_to_copy_is_dead_lettered_by_reference_and_the_partition_moves_on() {
    let mock = cluster(&["orders"]);
    let dir = handlers_dir("orders", None);
    // librdkafka's default limit: the record fits, its copy with the dead-letter headers does not.
    let env = host_env(&mock, dir.path(), &uuid_like(), &[("KAFKA_OPT_MESSAGE_MAX_BYTES", "1000000")]);
    let host = start_host(env).await;
    let mut events = Events::connect(host.addr).await;
    let p = producer(&mock);
    let value = "x".repeat(999_600);
    produce(&p, "orders", 2, "reject", &value, &[("trace", "abc")]).await;
    produce(&p, "orders", 2, "echo", "after", &[]).await;
    let dlq = read_topic(&mock, "orders.dlq", 1, Duration::from_secs(20));
    assert_eq!(dlq.len(), 1);
    let d = &dlq[0];
    assert_eq!(d.value.as_deref(), Some(""), "the value is left out (empty, not a tombstone)");
    assert_eq!(d.key.as_deref(), Some("reject"), "a short key is kept");
    assert_eq!(d.header("trace"), None, "the original headers are left out");
    assert_eq!(d.header("x-dlq-copy"), Some("reference"));
    assert!(d.header("x-dlq-copy-reason").is_some_and(|r| r.contains("too large")), "{:?}", d.headers);
    assert_eq!(d.header("x-dlq-value-bytes"), Some("999600"));
    assert_eq!(
        (d.header("x-dlq-topic"), d.header("x-dlq-partition"), d.header("x-dlq-offset")),
        (Some("orders"), Some("2"), Some("0"))
    );
    assert!(d.header("x-dlq-reason").is_some_and(|r| r.starts_with("xxxx")), "the handler's reason, cut");
    let after = events.take(1, Duration::from_secs(20)).await;
    assert_eq!(after.first().map(|e| e["payload"]["value"].clone()), Some("after".into()), "the next record ran");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_record_near_the_source_topics_size_limit_is_dead_lettered_whole() {
    let mock = cluster(&["orders"]);
    let dir = handlers_dir("orders", None);
    let host = start_host(host_env(&mock, dir.path(), &uuid_like(), &[])).await;
    let value = "x".repeat(999_600);
    produce(&producer(&mock), "orders", 1, "reject", &value, &[]).await;
    let dlq = read_topic(&mock, "orders.dlq", 1, Duration::from_secs(20));
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].value.as_ref().map(String::len), Some(999_600), "the whole record, headers added");
    assert_eq!(dlq[0].header("x-dlq-copy"), None);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_large_for_the_events_topic_dead_letters_its_record_with_the_reason() {
    let mock = cluster(&["orders"]);
    mock.create_topic("handler-events", PARTITIONS, 1).expect("events topic");
    let dir = handlers_dir("orders", Some("[limits]\nmax_event_bytes = 500000\n"));
    let env = host_env(
        &mock,
        dir.path(),
        &uuid_like(),
        &[("EVENTS_TOPIC", "handler-events"), ("KAFKA_OPT_MESSAGE_MAX_BYTES", "100000")],
    );
    let host = start_host(env).await;
    produce(&producer(&mock), "orders", 0, "big-event", "200000", &[]).await;
    let dlq = read_topic(&mock, "orders.dlq", 1, Duration::from_secs(20));
    assert_eq!(dlq.len(), 1);
    assert_eq!((dlq[0].header("x-dlq-cause"), dlq[0].header("x-dlq-outcome")), (Some("undeliverable"), Some("ok")));
    assert!(
        dlq[0]
            .header("x-dlq-reason")
            .is_some_and(|r| r.contains("events could not be written") && r.contains("handler-events")),
        "{:?}",
        dlq[0].header("x-dlq-reason")
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_whose_dead_letters_the_broker_refuses_shows_as_stalled_until_it_takes_them() {
    use rdkafka::types::RDKafkaApiKey;
    let mock = cluster(&["orders"]);
    let dir = handlers_dir("orders", None);
    let host = start_host(host_env(&mock, dir.path(), &uuid_like(), &[])).await;
    // The host may not write its dead letter.
    refuse_produces_after(&mock, 1, "reject", "nowhere to go").await;
    let stalled = wait_stalled(host.addr).await;
    assert_eq!((stalled["topic"].as_str(), stalled["partition"].as_i64()), (Some("orders"), Some(1)));
    assert!(
        stalled["reason"].as_str().is_some_and(|r| r.contains("orders.dlq") && r.to_lowercase().contains("authoriz")),
        "{stalled}"
    );
    mock.clear_request_errors(RDKafkaApiKey::Produce);
    let dlq = read_topic(&mock, "orders.dlq", 1, Duration::from_secs(30));
    assert_eq!(dlq.len(), 1, "written once the broker takes it");
    assert_eq!(dlq[0].header("x-dlq-reason"), Some("nowhere to go"));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while handler_status(host.addr, "orders").await["stalled"].as_array().is_some_and(|s| !s.is_empty()) {
        assert!(std::time::Instant::now() < deadline, "the stall was not cleared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_written_with_zstd_compression_is_consumed() {
    let mock = cluster(&["orders"]);
    let dir = handlers_dir("orders", None);
    let host = start_host(host_env(&mock, dir.path(), &uuid_like(), &[])).await;
    let mut events = Events::connect(host.addr).await;
    let zstd: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("compression.type", "zstd")
        .set("linger.ms", "5")
        .create()
        .expect("zstd producer");
    for i in 0..5 {
        produce(&zstd, "orders", 0, "echo", &format!("z{i}"), &[]).await;
    }
    let seen = events.take(5, Duration::from_secs(20)).await;
    let values: Vec<_> = seen.iter().map(|e| e["payload"]["value"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(values, (0..5).map(|i| format!("z{i}")).collect::<Vec<_>>());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_metric_counts_a_partition_that_has_not_committed_yet() {
    let mock = cluster(&["orders"]);
    let dir = handlers_dir("orders", Some("[limits]\ncall_timeout_ms = 60000\n"));
    let env = host_env(
        &mock,
        dir.path(),
        &uuid_like(),
        &[("KAFKA_OPT_STATISTICS_INTERVAL_MS", "200"), ("DRAIN_TIMEOUT_MS", "500")],
    );
    let host = start_host(env).await;
    let p = producer(&mock);
    // The first record holds the partition; nothing behind it is final, nothing committed.
    produce(&p, "orders", 0, "block", "30000", &[]).await;
    for i in 0..10 {
        produce(&p, "orders", 0, "echo", &i.to_string(), &[]).await;
    }
    wait_metric(host.addr, r#"host_consumer_lag{topic="orders",partition="0"}"#, 11.0, Duration::from_secs(20)).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_dead_letter_copies_carry_the_time_they_were_written_and_the_original_time_in_a_header() {
    let mock = cluster(&["orders"]);
    let dir = handlers_dir("orders", Some("[retry]\nin_place_attempts = 1\nmax_attempts = 3\n"));
    let host = start_host(host_env(&mock, dir.path(), &uuid_like(), &[])).await;
    let old: i64 = 1_577_836_800_000; // 2020-01-01
    let p = producer(&mock);
    for key in ["retry", "reject"] {
        let record = rdkafka::producer::FutureRecord::to("orders").partition(0).key(key).payload("old").timestamp(old);
        p.send(record, Duration::from_secs(10)).await.expect("produce");
    }
    let written_after = chrono::Utc::now().timestamp_millis() - 60_000;
    let retry = read_topic(&mock, "orders.retry", 1, Duration::from_secs(20));
    let dlq = read_topic(&mock, "orders.dlq", 1, Duration::from_secs(20));
    assert_eq!((retry.len(), dlq.len()), (1, 1));
    for (copy, header) in [(&retry[0], "x-retry-timestamp"), (&dlq[0], "x-dlq-timestamp")] {
        assert!(
            copy.timestamp_ms.is_some_and(|t| t >= written_after),
            "{header}: copy stamped {:?}",
            copy.timestamp_ms
        );
        assert_eq!(copy.header(header), Some(old.to_string().as_str()), "the original time");
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_removed_and_put_back_at_once_keeps_every_partition_read() {
    let mock = cluster(&["orders"]);
    let dir = handlers_dir("orders", None);
    let host = start_host(host_env(&mock, dir.path(), &uuid_like(), &[])).await;
    let mut events = Events::connect(host.addr).await;
    let p = producer(&mock);
    for round in 0..3 {
        let active = host.registry.get("orders").expect("the handler");
        host.registry.remove("orders");
        // Records that find no handler: their tasks must wait for one, not end.
        for partition in 0..PARTITIONS {
            produce(&p, "orders", partition, "echo", &format!("gap-{round}-{partition}"), &[]).await;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        host.registry.install(
            "orders",
            host::handlers::ActiveHandler {
                code: active.code.clone(),
                settings: active.settings.clone(),
                file: active.file.clone(),
                loaded_at: active.loaded_at.clone(),
            },
        );
        for partition in 0..PARTITIONS {
            produce(&p, "orders", partition, "echo", &format!("back-{round}-{partition}"), &[]).await;
        }
        let seen = events.take(2 * PARTITIONS as usize, Duration::from_secs(30)).await;
        let partitions: BTreeSet<i64> = seen.iter().filter_map(|e| e["payload"]["partition"].as_i64()).collect();
        assert_eq!(seen.len(), 2 * PARTITIONS as usize, "round {round}: every record handled: {seen:?}");
        assert_eq!(partitions.len(), PARTITIONS as usize, "round {round}: every partition read");
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_short_by_the_drain_timeout_commits_the_records_it_finished() {
    // Two brokers: the events topic's leader is broker 2, which goes down, so an event's send
    // stays in flight (a send in flight is seen through, not abandoned) past the drain timeout.
    let mock = rdkafka::mocking::MockCluster::new(2).expect("mock cluster");
    for name in ["orders", "orders.retry", "orders.dlq"] {
        mock.create_topic(name, PARTITIONS, 1).expect("topic");
        for partition in 0..PARTITIONS {
            mock.partition_leader(name, partition, Some(1)).expect("leader");
        }
    }
    mock.create_topic("handler-events", 1, 1).expect("events topic");
    mock.partition_leader("handler-events", 0, Some(2)).expect("leader");
    let group = uuid_like();
    mock.coordinator(rdkafka::mocking::MockCoordinator::Group(group.clone()), 1).expect("coordinator");
    let p = producer(&mock);
    // One batch: a record without events, then two whose events cannot be written.
    for key in ["ok", "echo", "echo"] {
        produce(&p, "orders", 0, key, "x", &[]).await;
    }
    mock.broker_down(2).expect("broker 2 down");
    let dir = handlers_dir("orders", None);
    let env = host_env(&mock, dir.path(), &group, &[("EVENTS_TOPIC", "handler-events"), ("DRAIN_TIMEOUT_MS", "1000")]);
    let host = start_host(env).await;
    wait_metric(host.addr, r#"host_records_total{topic="orders",outcome="ok"}"#, 2.0, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    host.shutdown().await;
    assert_eq!(committed(&mock, &group, "orders")[0], 1, "the record finished before the cut is committed, no more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_record_waits_no_longer_than_the_handlers_policy_allows() {
    let mock = cluster(&["orders"]);
    let dir = handlers_dir("orders", Some("[retry]\nretry_topic_delay_ms = 100\nretry_topic_delay_max_ms = 500\n"));
    let host = start_host(host_env(&mock, dir.path(), &uuid_like(), &[])).await;
    let mut events = Events::connect(host.addr).await;
    // A copy written to wait a day (under an older policy, or by a skewed clock).
    let day_later = (chrono::Utc::now().timestamp_millis() + 86_400_000).to_string();
    let headers = [
        ("x-retry-topic", "orders"),
        ("x-retry-partition", "1"),
        ("x-retry-offset", "7"),
        ("x-retry-attempt", "2"),
        ("x-retry-hops", "1"),
        ("x-retry-not-before", day_later.as_str()),
        ("x-retry-error", "retry: earlier"),
    ];
    produce(&producer(&mock), "orders.retry", 0, "echo", "a day early", &headers).await;
    let seen = events.take(1, Duration::from_secs(10)).await;
    assert_eq!(
        seen.first().map(|e| e["payload"]["value"].clone()),
        Some("a day early".into()),
        "handled within the policy's 500 ms"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_topic_the_broker_refuses_stalls_its_partition_instead_of_dead_lettering() {
    use rdkafka::types::RDKafkaApiKey;
    let mock = cluster(&["orders"]);
    let dir = handlers_dir("orders", Some("[retry]\nin_place_attempts = 1\nmax_attempts = 3\n"));
    let host = start_host(host_env(&mock, dir.path(), &uuid_like(), &[])).await;
    refuse_produces_after(&mock, 1, "retry", "needs another try").await;
    let stalled = wait_stalled(host.addr).await;
    assert!(stalled["reason"].as_str().is_some_and(|r| r.contains("orders.retry")), "{stalled}");
    mock.clear_request_errors(RDKafkaApiKey::Produce);
    let retries = read_topic(&mock, "orders.retry", 1, Duration::from_secs(30));
    assert_eq!(retries.len(), 1, "the copy went to the retry topic once the broker took it");
    assert_eq!(retries[0].value.as_deref(), Some("needs another try"));
    let dlq = read_topic(&mock, "orders.dlq", 1, Duration::from_secs(1));
    assert!(
        dlq.is_empty() || dlq[0].header("x-dlq-cause") == Some("exhausted"),
        "not dead-lettered for the refusal: {dlq:?}"
    );
    host.shutdown().await;
}
