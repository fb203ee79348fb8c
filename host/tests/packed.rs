//! The packed batch (`handle-packed`, the contract's `packed-batch-handler` world) through the
//! WIT contract: every field of every record in a batch reaches the guest exactly as it does
//! when the record is handed over alone with `handle`, for arbitrary records (no key, tombstones,
//! empty and binary values, repeated and non-ASCII header keys, binary header values, any
//! timestamp, any attempt). The guest is the hostile fixture, whose `describe` misdeed (keys
//! starting with `describe`, and records with no key or an empty one) publishes every field it
//! received as an event, and whose `ok` records use no import: the SDK steps over those
//! (`advance`), so the events must still reach the host as the right record's.

mod support;

use host::record::{Header, Outcome, Record};
use host::runtime::{BatchInvocation, HandlerLimits, Worker};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use support::{StubProducer, fixture};

/// What the fixture should report for `record`: the same JSON shape its `describe` builds.
fn described(record: &Record) -> serde_json::Value {
    serde_json::json!({
        "topic": record.topic, "partition": record.partition, "offset": record.offset,
        "timestamp_ms": record.timestamp_ms, "key": record.key, "value": record.value,
        "headers": record.headers.iter().map(|h| (h.key.clone(), h.value.clone())).collect::<Vec<_>>(),
        "attempt": record.attempt,
    })
}

/// The one `described` event of an invocation that must have ended `ok`.
fn reported(outcome: &Outcome, events: &[host::record::Event]) -> serde_json::Value {
    assert_eq!(outcome, &Outcome::Ok);
    assert_eq!(events.len(), 1, "one event per record");
    assert_eq!(events[0].kind, "described");
    serde_json::from_str(&events[0].payload).expect("json")
}

/// What the fixture should report for `record` through the host: `ok` and no event for an `ok`
/// record, else its `described` event.
fn expected(record: &Record) -> Option<serde_json::Value> {
    (record.key.as_deref() != Some(b"ok".as_slice())).then(|| described(record))
}

/// What an invocation reported: `None` for `ok` without events, else the `described` event.
fn got(outcome: &Outcome, events: &[host::record::Event]) -> Option<serde_json::Value> {
    if events.is_empty() {
        assert_eq!(outcome, &Outcome::Ok);
        return None;
    }
    Some(reported(outcome, events))
}

/// Consecutive records of one partition with arbitrary contents.
fn batch() -> impl Strategy<Value = Vec<Record>> {
    let header =
        ("\\PC{0,8}", prop::collection::vec(any::<u8>(), 0..16)).prop_map(|(key, value)| Header { key, value });
    let record = (
        // No key, an empty one, or `describe` and any bytes (the fixture describes all three),
        // or `ok` (a record that uses no import).
        prop_oneof![
            1 => Just(None),
            1 => Just(Some(Vec::new())),
            1 => prop::collection::vec(any::<u8>(), 0..24)
                .prop_map(|tail| Some([b"describe".as_slice(), &tail].concat())),
            3 => Just(Some(b"ok".to_vec())),
        ],
        prop::option::of(prop::collection::vec(any::<u8>(), 0..300)),
        prop::option::of(any::<i64>()),
        prop::collection::vec(header, 0..4),
        any::<u32>(),
    );
    (0i32..16, 0i64..1 << 40, prop::collection::vec(record, 1..24)).prop_map(|(partition, start, records)| {
        records
            .into_iter()
            .enumerate()
            .map(|(i, (key, value, timestamp_ms, headers, attempt))| Record {
                topic: "orders".into(),
                partition,
                offset: start + i as i64,
                timestamp_ms,
                key,
                value,
                headers,
                attempt,
            })
            .collect()
    })
}

#[test]
fn every_field_of_every_record_reaches_the_guest_in_a_packed_batch_as_it_does_alone() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let engine = support::engine();
    let module = support::load(&engine, &fixture("hostile"), HandlerLimits::default());
    assert_eq!(module.world(), "packed-batch-handler", "the SDK's components take packed batches");
    let stub = runtime.block_on(StubProducer::start());
    let client = host::producer_api::ProducerClient::new(&stub.url).expect("client");
    let worker = std::cell::RefCell::new(Worker::new(module, client));
    assert!(worker.borrow().takes_batches());
    let mut runner = TestRunner::new(Config { cases: 64, failure_persistence: None, ..Config::default() });
    runner
        .run(&batch(), |records| {
            let BatchInvocation::Handled(invocations) =
                runtime.block_on(worker.borrow_mut().invoke_batch(&records, None))
            else {
                panic!("the batch failed");
            };
            prop_assert_eq!(invocations.len(), records.len(), "every record handled");
            for (record, invocation) in records.iter().zip(&invocations) {
                prop_assert_eq!(got(&invocation.outcome, &invocation.events), expected(record));
                let alone = runtime.block_on(worker.borrow_mut().invoke(record));
                prop_assert_eq!(got(&alone.outcome, &alone.events), expected(record), "alone, the same");
            }
            Ok(())
        })
        .expect("property");
}

#[tokio::test]
async fn records_that_use_no_import_share_a_step_and_the_ones_that_do_keep_their_own_events() {
    let engine = support::engine();
    let module = support::load(&engine, &fixture("hostile"), HandlerLimits::default());
    let mut worker = Worker::new(module, host::producer_api::ProducerClient::unconfigured());
    // Records 5, 6 and 17 publish an event (`describe`), the others use no import.
    let records: Vec<Record> = (0..40)
        .map(|i| {
            let key = if [5, 6, 17].contains(&i) { "describe" } else { "ok" };
            Record { offset: 100 + i, ..support::record("orders", key, "v") }
        })
        .collect();
    let BatchInvocation::Handled(invocations) = worker.invoke_batch(&records, None).await else {
        panic!("the batch failed");
    };
    assert_eq!(invocations.len(), records.len());
    for (record, invocation) in records.iter().zip(&invocations) {
        assert_eq!(got(&invocation.outcome, &invocation.events), expected(record), "offset {}", record.offset);
    }
    // The records of a step share its time. A record that publishes starts a step and ends it:
    // it shares with neither neighbour. The quick records share long steps (the host sizes them
    // to about 10 ms; only a machine stalling at most boundaries would split them all).
    let durations: Vec<_> = invocations.iter().map(|i| i.duration).collect();
    for i in [5, 6, 17] {
        assert_ne!(durations[i], durations[i - 1], "record {i} starts a step: {durations:?}");
        assert_ne!(durations[i], durations[i + 1], "record {i} ends its step: {durations:?}");
    }
    let shared = durations.windows(2).filter(|w| w[0] == w[1]).count();
    assert!(shared >= 16, "quick records share steps ({shared} of 33 possible pairs): {durations:?}");
}

#[tokio::test]
async fn a_stop_seen_at_a_records_first_import_leaves_that_record_out_and_sends_nothing_for_it() {
    let engine = support::engine();
    let module = support::load(&engine, &fixture("hostile"), HandlerLimits::default());
    let mut worker = Worker::new(module, host::producer_api::ProducerClient::unconfigured());
    // Records 0 and 1 are quick, so record 2 shares record 1's step; it sleeps, then publishes:
    // its first import asks the host for a step of its own, and by then the host is stopping.
    let records: Vec<Record> = ["ok", "ok", "sleep", "ok"]
        .iter()
        .enumerate()
        .map(|(i, key)| Record { offset: i as i64, ..support::record("orders", key, "300") })
        .collect();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        stop.send_replace(true);
    });
    let BatchInvocation::Handled(invocations) = worker.invoke_batch(&records, Some(&stopped)).await else {
        panic!("the batch failed");
    };
    stopper.await.expect("stopper");
    assert_eq!(invocations.len(), 2, "records 0 and 1 handled; 2 left out (it will be delivered again)");
    assert!(invocations.iter().all(|i| i.outcome == Outcome::Ok && i.events.is_empty()), "{invocations:?}");
    // The instance is still trusted: the batch kept the contract.
    let again = worker.invoke_batch(&records[2..3], None).await;
    assert!(matches!(again, BatchInvocation::Handled(ref i) if i.len() == 1), "{again:?}");
}
