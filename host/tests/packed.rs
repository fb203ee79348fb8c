//! The packed batch (`batch.handle-batch`, the contract's `batch-handler` world) through the WIT
//! contract: every field of every record in a batch reaches a pure guest exactly as it reaches a
//! `handler` guest that gets the record alone, for arbitrary records (no key, tombstones, empty
//! and binary values, repeated and non-ASCII header keys, binary header values, any timestamp,
//! any attempt). The guests are the `pure` and `hostile` fixtures, whose `describe` misdeed (keys
//! starting with `describe`, and records with no key or an empty one) publishes every field it
//! received as an event, and whose `ok` records publish nothing: each event must be its own
//! record's.

mod support;

use host::record::{Header, Outcome, Record};
use host::runtime::{BatchInvocation, HandlerLimits, Worker};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use support::fixture;

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
        // No key, an empty one, or `describe` and any bytes (the fixtures describe all three),
        // or `ok` (a record that publishes nothing).
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
fn every_field_of_every_record_reaches_a_pure_guest_in_a_batch_as_it_reaches_a_handler_alone() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let engine = support::engine();
    let pure = support::load(&engine, &fixture("pure"), HandlerLimits::default());
    assert_eq!(pure.world(), "batch-handler@0.2");
    let handler = support::load(&engine, &fixture("hostile"), HandlerLimits::default());
    assert_eq!(handler.world(), "handler@0.2");
    let unconfigured = host::producer_api::ProducerClient::unconfigured;
    let batches = std::cell::RefCell::new(Worker::new(pure, unconfigured()));
    let alone = std::cell::RefCell::new(Worker::new(handler, unconfigured()));
    assert!(batches.borrow().takes_batches() && !alone.borrow().takes_batches());
    let mut runner = TestRunner::new(Config { cases: 64, failure_persistence: None, ..Config::default() });
    runner
        .run(&batch(), |records| {
            let BatchInvocation::Handled(invocations) = runtime.block_on(batches.borrow_mut().invoke_batch(&records))
            else {
                panic!("the batch failed");
            };
            prop_assert_eq!(invocations.len(), records.len(), "a result per record");
            for (record, invocation) in records.iter().zip(&invocations) {
                prop_assert_eq!(got(&invocation.outcome, &invocation.events), expected(record));
                let one = runtime.block_on(alone.borrow_mut().invoke(record));
                prop_assert_eq!(got(&one.outcome, &one.events), expected(record), "the handler world, alone");
            }
            Ok(())
        })
        .expect("property");
}
