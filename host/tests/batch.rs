//! Batches (`handle-packed`, the contract's `packed-batch-handler` world, which the SDK's
//! components target) through the real pipeline on
//! librdkafka's mock cluster: records already waiting go to the handler several at a time, yet
//! each keeps its own outcome, order, producer-call idempotency keys, events and time limit; a
//! batch that traps is redone record by record with nothing counted twice; and components built
//! against older contracts still load: a 0.1.0 one (before batches) runs one record per call, a
//! 0.1.1 one (`batch-handler`, before packed batches) gets its batches through `handle-batch`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;
use support::kafka::{cluster, committed, host_env, metric, produce, producer, read_topic, start_host, uuid_like};
use support::{StubProducer, fixture};

const EVENTS: &str = "handler-events";

fn handlers_dir(settings: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(fixture("hostile"), dir.path().join("orders.wasm")).expect("copy handler");
    if let Some(toml) = settings {
        std::fs::write(dir.path().join("orders.toml"), toml).expect("write settings");
    }
    dir
}

/// The source offsets of the events on the events topic, in the order they were sent, and how
/// many each offset has. Reads until one more than `expect` arrived or 5 s passed, so an extra
/// event shows.
fn events_by_offset(
    mock: &rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    expect: usize,
) -> (Vec<i64>, BTreeMap<i64, usize>) {
    let mut read = read_topic(mock, EVENTS, expect + 1, Duration::from_secs(5));
    read.sort_by_key(|r| (r.partition, r.offset));
    let offsets: Vec<i64> = read
        .iter()
        .map(|r| {
            let json: serde_json::Value = serde_json::from_str(r.value.as_deref().expect("value")).expect("json");
            json["offset"].as_i64().expect("offset")
        })
        .collect();
    let mut counts = BTreeMap::new();
    for o in &offsets {
        *counts.entry(*o).or_default() += 1;
    }
    (offsets, counts)
}

async fn wait_committed(
    mock: &rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    group: &str,
    partition: usize,
    offset: i64,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while committed(mock, group, "orders")[partition] != offset {
        assert!(std::time::Instant::now() < deadline, "partition {partition} not committed up to {offset}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_records_go_in_batches_each_with_its_own_outcome_calls_and_events() {
    let mock = cluster(&["orders"]);
    mock.create_topic(EVENTS, 1, 1).expect("events topic");
    let stub = StubProducer::start().await;
    let p = producer(&mock);
    // All waiting before the host starts, so its first fetch brings many at once. Each makes one
    // producer call and publishes one event; the one at offset 20 is rejected.
    const N: i64 = 40;
    for i in 0..N {
        let (key, value) =
            if i == 20 { ("reject", "not this one") } else { ("call", r#"["/producer-svc/ping-what"]"#) };
        produce(&p, "orders", 0, key, value, &[]).await;
    }
    let dir = handlers_dir(None);
    let group = uuid_like();
    let host = start_host(host_env(
        &mock,
        dir.path(),
        &group,
        &[("EVENTS_TOPIC", EVENTS), ("PRODUCER_URL", stub.url.as_str())],
    ))
    .await;
    wait_committed(&mock, &group, 0, N).await;

    let batched = metric(host.addr, r#"host_batched_records_total{topic="orders"}"#).await;
    let batches = metric(host.addr, r#"host_batches_total{topic="orders",kind="handled"}"#).await;
    assert!(batches >= 1.0 && batched > batches, "records went in batches: {batched} records in {batches} batches");
    assert_eq!(metric(host.addr, r#"host_batches_total{topic="orders",kind="failed"}"#).await, 0.0);

    // One call per record, with that record's own key: `topic:partition:offset:1`.
    let mut keys: Vec<String> = stub
        .seen()
        .iter()
        .filter_map(|s| s.headers.get("idempotency-key").and_then(|k| k.to_str().ok()).map(support::key_without_digest))
        .collect();
    keys.sort_by_key(|k| k.split(':').nth(2).and_then(|o| o.parse::<i64>().ok()));
    let expected: Vec<String> = (0..N).filter(|&i| i != 20).map(|i| format!("orders:0:{i}:1")).collect();
    assert_eq!(keys, expected, "each record's call carries its own idempotency key, once");

    // One event per ok record, tagged with its own offset, in offset order.
    let (offsets, _) = events_by_offset(&mock, (N - 1) as usize);
    let calls_per_record: Vec<i64> = (0..N).filter(|&i| i != 20).collect();
    assert_eq!(offsets, calls_per_record, "events in offset order, one per ok record");

    let dlq = read_topic(&mock, "orders.dlq", 1, Duration::from_secs(10));
    assert_eq!(dlq.len(), 1);
    assert_eq!((dlq[0].header("x-dlq-offset"), dlq[0].header("x-dlq-reason")), (Some("20"), Some("not this one")));
    assert_eq!(metric(host.addr, r#"host_records_total{topic="orders",outcome="ok"}"#).await, (N - 1) as f64);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_traps_is_redone_record_by_record_and_counts_each_record_once() {
    let mock = cluster(&["orders"]);
    mock.create_topic(EVENTS, 1, 1).expect("events topic");
    let p = producer(&mock);
    const N: i64 = 12;
    for i in 0..N {
        let key = if i == 6 { "panic" } else { "echo" };
        produce(&p, "orders", 1, key, &format!("n{i}"), &[]).await;
    }
    let dir = handlers_dir(Some("[retry]\nin_place_attempts = 2\nmax_attempts = 2\n"));
    let group = uuid_like();
    let host = start_host(host_env(&mock, dir.path(), &group, &[("EVENTS_TOPIC", EVENTS)])).await;
    wait_committed(&mock, &group, 1, N).await;

    assert!(
        metric(host.addr, r#"host_batches_total{topic="orders",kind="failed"}"#).await >= 1.0,
        "the panic ended a batch"
    );
    // The records before the panic ran in the failed batch too, but only their second, single
    // handling counts: one event each, in order.
    let (offsets, counts) = events_by_offset(&mock, (N - 1) as usize);
    let expected: Vec<i64> = (0..N).filter(|&i| i != 6).collect();
    assert_eq!(offsets, expected, "each ok record's event once, in offset order: {counts:?}");
    let dlq = read_topic(&mock, "orders.dlq", 1, Duration::from_secs(10));
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].header("x-dlq-offset"), Some("6"));
    assert_eq!(dlq[0].header("x-dlq-attempts"), Some("2"), "the batch's attempt is not counted against the record");
    assert_eq!(metric(host.addr, r#"host_records_total{topic="orders",outcome="ok"}"#).await, (N - 1) as f64);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_limit_restarts_with_each_record_of_a_batch() {
    let mock = cluster(&["orders"]);
    let p = producer(&mock);
    // Five records of 250 ms each waiting, under a 400 ms limit: any batch of two or more would
    // run past the limit unless it restarts with each record.
    for _ in 0..5 {
        produce(&p, "orders", 2, "sleep", "250", &[]).await;
    }
    let dir = handlers_dir(Some("[limits]\ncall_timeout_ms = 400\n[retry]\nin_place_attempts = 1\nmax_attempts = 1\n"));
    let group = uuid_like();
    let host = start_host(host_env(&mock, dir.path(), &group, &[])).await;
    wait_committed(&mock, &group, 2, 5).await;
    let failed = r#"host_batches_total{topic="orders",kind="failed"}"#;
    assert_eq!(metric(host.addr, r#"host_records_total{topic="orders",outcome="ok"}"#).await, 5.0);
    assert!(
        metric(host.addr, r#"host_batched_records_total{topic="orders"}"#).await >= 2.0,
        "the records were batched"
    );
    assert_eq!(metric(host.addr, failed).await, 0.0, "no batch ran into the limit: it restarts per record");

    // A record over the limit in a batch still times out: with the host stopped, a 700 ms record
    // waits between 150 ms ones, and they go in a batch when it starts again.
    host.shutdown().await;
    for ms in ["150", "150", "700", "150", "150"] {
        produce(&p, "orders", 2, "sleep", ms, &[]).await;
    }
    let host = start_host(host_env(&mock, dir.path(), &group, &[])).await;
    wait_committed(&mock, &group, 2, 10).await;
    assert_eq!(metric(host.addr, failed).await, 1.0, "the batch with the 700 ms record hit the limit");
    assert_eq!(metric(host.addr, r#"host_records_total{topic="orders",outcome="ok"}"#).await, 4.0);
    assert_eq!(metric(host.addr, r#"host_records_total{topic="orders",outcome="timeout"}"#).await, 1.0);
    let dlq = read_topic(&mock, "orders.dlq", 1, Duration::from_secs(10));
    assert_eq!((dlq.len(), dlq[0].header("x-dlq-offset")), (1, Some("7")), "only the 700 ms record timed out");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_stopping_mid_batch_ends_it_at_a_record_boundary_and_commits_what_was_handled() {
    let mock = cluster(&["orders"]);
    let p = producer(&mock);
    // Ten records of 200 ms waiting: one batch of 2 s, stopped well before its end.
    const N: i64 = 10;
    for _ in 0..N {
        produce(&p, "orders", 0, "sleep", "200", &[]).await;
    }
    let dir = handlers_dir(None);
    let group = uuid_like();
    let ok = r#"host_records_total{topic="orders",outcome="ok"}"#;
    let host = start_host(host_env(&mock, dir.path(), &group, &[])).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metric(host.addr, r#"host_batches_total{topic="orders",kind="handled"}"#).await < 1.0
        && metric(host.addr, ok).await < 1.0
    {
        assert!(std::time::Instant::now() < deadline, "nothing was handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // What was handled just before the stop must be committed by it; the batch must end at the
    // record in hand, not run on to its end (2 s).
    let handled_first = metric(host.addr, ok).await;
    host.shutdown().await;
    let committed_first = committed(&mock, &group, "orders")[0];
    assert!(committed_first < N, "the stop cut the batch short (committed {committed_first} of {N})");
    assert!(
        committed_first as f64 >= handled_first,
        "every record handled before the stop is committed ({handled_first} handled, {committed_first} committed)"
    );

    let host = start_host(host_env(&mock, dir.path(), &group, &[])).await;
    wait_committed(&mock, &group, 0, N).await;
    let handled_second = metric(host.addr, ok).await;
    assert_eq!(handled_second, (N - committed_first) as f64, "the second host handled what the first did not commit");
    host.shutdown().await;
}

/// A component built against an older contract, checked in under `tests/data/`.
fn old_build(engine: &std::sync::Arc<host::runtime::WasmEngine>, file: &str) -> host::runtime::HandlerModule {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(file);
    support::load(engine, &path, host::runtime::HandlerLimits::default())
}

#[tokio::test]
async fn a_component_built_against_the_0_1_0_contract_still_loads_and_runs_one_record_per_call() {
    let engine = support::engine();
    let module = old_build(&engine, "new-user-created-0.1.0.wasm");
    assert!(!module.supports_batches(), "built before batches, it targets the handler world");
    assert_eq!(module.world(), "handler");
    let current =
        support::load(&engine, &support::handler("new-user-created"), host::runtime::HandlerLimits::default());
    assert_eq!(current.world(), "packed-batch-handler", "the SDK's handlers take packed batches");
    let stub = StubProducer::start().await;
    let client = host::producer_api::ProducerClient::new(&stub.url).expect("client");
    let mut worker = host::runtime::Worker::new(module, client);
    let invocation = worker.invoke(&support::record("new-user-created", "k", "{not json")).await;
    assert!(
        matches!(&invocation.outcome, host::record::Outcome::Reject(r) if r.contains("malformed")),
        "{:?}",
        invocation.outcome
    );
    assert!(!worker.takes_batches());
}

#[tokio::test]
async fn a_component_built_against_the_0_1_1_contract_gets_its_batches_through_handle_batch() {
    let engine = support::engine();
    let module = old_build(&engine, "new-user-created-0.1.1.wasm");
    assert_eq!(module.world(), "batch-handler", "built before packed batches");
    let stub = StubProducer::start().await;
    let client = host::producer_api::ProducerClient::new(&stub.url).expect("client");
    let mut worker = host::runtime::Worker::new(module, client);
    assert!(worker.takes_batches());
    // Both malformed: the batch stops at the first record that does not end `ok`.
    let records: Vec<_> = (0..2)
        .map(|i| host::record::Record { offset: i, ..support::record("new-user-created", "k", "{not json") })
        .collect();
    let host::runtime::BatchInvocation::Handled(invocations) = worker.invoke_batch(&records, None).await else {
        panic!("the batch failed")
    };
    assert_eq!(invocations.len(), 1, "one result: the batch ends at the first rejection");
    assert!(
        matches!(&invocations[0].outcome, host::record::Outcome::Reject(r) if r.contains("malformed")),
        "{:?}",
        invocations[0].outcome
    );
}

#[tokio::test]
async fn a_component_built_against_the_0_1_2_contract_steps_record_by_record_with_next_record() {
    let engine = support::engine();
    let module = old_build(&engine, "hostile-0.1.2.wasm");
    assert_eq!(module.world(), "packed-batch-handler", "built before `advance`, it calls `next-record`");
    let mut worker = host::runtime::Worker::new(module, host::producer_api::ProducerClient::unconfigured());
    // Quick records with and without events, and a rejection that ends the batch.
    let keys = ["ok", "describe", "ok", "ok", "describe", "reject", "ok"];
    let records: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| host::record::Record { offset: 10 + i as i64, ..support::record("orders", key, "v") })
        .collect();
    let host::runtime::BatchInvocation::Handled(invocations) = worker.invoke_batch(&records, None).await else {
        panic!("the batch failed")
    };
    assert_eq!(invocations.len(), 6, "the batch ends at the rejection");
    for (i, invocation) in invocations.iter().enumerate() {
        let offsets: Vec<i64> = invocation.events.iter().map(|e| e.offset).collect();
        match keys[i] {
            "describe" => assert_eq!(offsets, [10 + i as i64], "record {i}'s own event"),
            _ => assert!(offsets.is_empty(), "record {i}: no event"),
        }
        let ok = keys[i] != "reject";
        assert_eq!(invocation.outcome == host::record::Outcome::Ok, ok, "record {i}: {:?}", invocation.outcome);
    }
}
