//! Batches (`batch.handle-batch`, the contract's `batch-handler` world, for pure handlers)
//! through the real pipeline on librdkafka's mock cluster: records already waiting go to a pure
//! handler several at a time, yet each keeps its own outcome, order and events; a batch that
//! traps, runs out of time or breaks the contract is redone record by record with nothing
//! counted twice; a `handler` is never given batches, and a batch handler that imports what a
//! pure one may not is refused. Components built against the 0.1.x contracts (the `handler`
//! world and the three batch worlds) still load and run, one record per call.

mod support;

use host::record::{Outcome, Record};
use host::runtime::{BatchInvocation, HandlerLimits, Worker};
use std::collections::BTreeMap;
use std::time::Duration;
use support::kafka::{cluster, committed, host_env, metric, produce, producer, read_topic, start_host, uuid_like};
use support::{StubProducer, fixture};

const EVENTS: &str = "handler-events";

fn handlers_dir(settings: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(fixture("pure"), dir.path().join("orders.wasm")).expect("copy handler");
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
async fn waiting_records_go_in_batches_each_with_its_own_outcome_and_events() {
    let mock = cluster(&["orders"]);
    mock.create_topic(EVENTS, 1, 1).expect("events topic");
    let p = producer(&mock);
    // All waiting before the host starts, so its first fetch brings many at once. Each publishes
    // one event; the one at offset 20 is rejected.
    const N: i64 = 40;
    for i in 0..N {
        let (key, value) = if i == 20 { ("reject", "not this one".to_string()) } else { ("echo", format!("n{i}")) };
        produce(&p, "orders", 0, key, &value, &[]).await;
    }
    let dir = handlers_dir(None);
    let group = uuid_like();
    let host = start_host(host_env(&mock, dir.path(), &group, &[("EVENTS_TOPIC", EVENTS)])).await;
    wait_committed(&mock, &group, 0, N).await;

    let batched = metric(host.addr, r#"host_batched_records_total{topic="orders"}"#).await;
    let batches = metric(host.addr, r#"host_batches_total{topic="orders",kind="handled"}"#).await;
    assert!(batches >= 1.0 && batched > batches, "records went in batches: {batched} records in {batches} batches");
    assert_eq!(metric(host.addr, r#"host_batches_total{topic="orders",kind="failed"}"#).await, 0.0);

    // One event per ok record, tagged with its own offset, in offset order.
    let (offsets, _) = events_by_offset(&mock, (N - 1) as usize);
    let ok_records: Vec<i64> = (0..N).filter(|&i| i != 20).collect();
    assert_eq!(offsets, ok_records, "events in offset order, one per ok record");

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
    // The records around the panic ran in the failed batch too, but only their single handling
    // counts: one event each, in order.
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

#[tokio::test]
async fn a_batchs_records_share_one_time_limit_and_one_past_it_is_redone_alone() {
    let engine = support::engine();
    let limits = HandlerLimits { call_timeout_ms: 400, ..HandlerLimits::default() };
    let mut worker = Worker::new(
        support::load(&engine, &fixture("pure"), limits),
        host::producer_api::ProducerClient::unconfigured(),
    );
    let records = |ms: &[&str]| -> Vec<Record> {
        ms.iter()
            .enumerate()
            .map(|(i, ms)| Record { offset: i as i64, ..support::record("orders", "sleep", ms) })
            .collect()
    };
    // Three records of 100 ms fit one limit together.
    let BatchInvocation::Handled(invocations) = worker.invoke_batch(&records(&["100", "100", "100"])).await else {
        panic!("the batch failed");
    };
    assert!(invocations.iter().all(|i| i.outcome == Outcome::Ok), "{invocations:?}");
    // Five of 150 ms do not: the batch fails, and each record alone is within the limit.
    let slow = records(&["150", "150", "150", "150", "150"]);
    match worker.invoke_batch(&slow).await {
        BatchInvocation::Failed(reason) => assert!(reason.contains("timeout"), "{reason}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    for record in &slow {
        assert_eq!(worker.invoke(record).await.outcome, Outcome::Ok, "alone, a record has the limit to itself");
    }
}

#[tokio::test]
async fn a_batch_with_another_number_of_results_is_refused_and_the_handler_gets_no_more_batches() {
    let engine = support::engine();
    let module = support::load(&engine, &fixture("pure"), HandlerLimits::default());
    let mut worker = Worker::new(module.clone(), host::producer_api::ProducerClient::unconfigured());
    let records: Vec<Record> = ["echo", "drop-result", "echo"]
        .iter()
        .enumerate()
        .map(|(i, k)| Record { offset: i as i64, ..support::record("orders", k, "v") })
        .collect();
    match worker.invoke_batch(&records).await {
        BatchInvocation::Failed(reason) => assert!(reason.contains("2 results for 3 records"), "{reason}"),
        other => panic!("expected a broken contract, got {other:?}"),
    }
    assert!(!worker.takes_batches(), "no more batches from this load");
    let other = Worker::new(module.clone(), host::producer_api::ProducerClient::unconfigured());
    assert!(!other.takes_batches(), "on any worker: the pipeline leases a new one per batch");
    worker.swap(module.with_limits(HandlerLimits::default()).expect("limits"));
    assert!(worker.takes_batches(), "a swap gives the handler another chance");
}

#[tokio::test]
async fn a_handler_is_never_given_batches_and_an_impure_batch_handler_is_refused() {
    let engine = support::engine();
    let handler = support::load(&engine, &support::handler("new-user-created"), HandlerLimits::default());
    assert_eq!(handler.world(), "handler@0.2");
    let mut worker = Worker::new(handler, host::producer_api::ProducerClient::unconfigured());
    assert!(!worker.takes_batches());
    let records = vec![support::record("orders", "k", "v")];
    assert!(matches!(worker.invoke_batch(&records).await, BatchInvocation::Failed(_)));
    let refused = host::runtime::HandlerModule::load_file(&engine, &fixture("impure-batch"), HandlerLimits::default())
        .expect_err("a batch handler that logs");
    assert!(refused.to_string().contains("must be pure") && refused.to_string().contains("runtime"), "{refused}");
}

/// A component built against an older contract, checked in under `tests/data/`.
fn old_build(engine: &std::sync::Arc<host::runtime::WasmEngine>, file: &str) -> host::runtime::HandlerModule {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(file);
    support::load(engine, &path, HandlerLimits::default())
}

#[tokio::test]
async fn components_built_against_every_0_1_contract_still_load_and_run_one_record_per_call() {
    let engine = support::engine();
    // new-user-created of 0.1.0 (the `handler` world) and 0.1.1 (`batch-handler`): a malformed
    // user is rejected, as today's handler does.
    for file in ["new-user-created-0.1.0.wasm", "new-user-created-0.1.1.wasm"] {
        let module = old_build(&engine, file);
        assert_eq!(module.world(), "handler@0.1", "{file}");
        let mut worker = Worker::new(module, host::producer_api::ProducerClient::unconfigured());
        assert!(!worker.takes_batches(), "{file}: 0.1.x batches are no longer used");
        let invocation = worker.invoke(&support::record("new-user-created", "k", "{not json")).await;
        assert!(
            matches!(&invocation.outcome, Outcome::Reject(r) if r.contains("malformed")),
            "{file}: {:?}",
            invocation.outcome
        );
    }
    // hostile of 0.1.2 and 0.1.3 (the packed batch worlds): events and producer calls through
    // the 0.1 imports, each record its own.
    let stub = StubProducer::start().await;
    for file in ["hostile-0.1.2.wasm", "hostile-0.1.3.wasm"] {
        let module = old_build(&engine, file);
        assert_eq!(module.world(), "handler@0.1", "{file}");
        let client = host::producer_api::ProducerClient::new(&stub.url).expect("client");
        let mut worker = Worker::new(module, client);
        for (i, key) in ["ok", "describe", "reject"].iter().enumerate() {
            let record = Record { offset: 10 + i as i64, ..support::record("orders", key, "v") };
            let invocation = worker.invoke(&record).await;
            let offsets: Vec<i64> = invocation.events.iter().map(|e| e.offset).collect();
            match *key {
                "describe" => assert_eq!(offsets, [record.offset], "{file}: the record's own event"),
                _ => assert!(offsets.is_empty(), "{file}: no event for {key}"),
            }
            assert_eq!(invocation.outcome == Outcome::Ok, *key != "reject", "{file} {key}: {:?}", invocation.outcome);
        }
        let call = worker.invoke(&support::record("orders", "call", r#"["/producer-svc/ping-what"]"#)).await;
        let v: serde_json::Value = serde_json::from_str(&call.events[0].payload).expect("json");
        assert_eq!(v["status"], 200, "{file}: a producer call through the 0.1 import");
    }
}
