//! The sandbox's limits and walls, proved with fixture guests that misbehave on purpose
//! (`test-fixtures/`): every misdeed ends in a typed outcome at a bounded cost, the host lives on,
//! and the same worker runs the next record.

mod support;

use host::producer_api::ProducerClient;
use host::record::{Invocation, Outcome, Record};
use host::runtime::{HandlerLimits, HandlerModule, InstancePolicy, LoadError, Recycle, Worker};
use std::time::{Duration, Instant};
use support::{StubProducer, engine, fixture, handler, load, record};

fn hostile_worker(limits: HandlerLimits, producer: ProducerClient) -> Worker {
    let engine = engine();
    Worker::new(load(&engine, &fixture("hostile"), limits), producer)
}

async fn misdeed(worker: &mut Worker, key: &str, value: &str) -> Invocation {
    worker.invoke(&record("t", key, value)).await
}

/// The `probe` event's verdict: (escaped, detail).
fn probe(inv: &Invocation) -> (bool, String) {
    assert_eq!(inv.outcome, Outcome::Ok, "probe run failed: {inv:?}");
    let event = inv.events.iter().find(|e| e.kind == "probe").expect("a probe event");
    let v: serde_json::Value = serde_json::from_str(&event.payload).expect("json");
    (v["escaped"].as_bool().expect("bool"), v["detail"].as_str().unwrap_or_default().to_string())
}

async fn assert_next_record_runs(worker: &mut Worker) {
    let inv = misdeed(worker, "ok", "").await;
    assert_eq!(inv.outcome, Outcome::Ok, "the worker must run the next record");
}

#[tokio::test]
async fn an_infinite_loop_times_out_and_the_worker_runs_the_next_record() {
    let limits = HandlerLimits { call_timeout_ms: 200, ..HandlerLimits::default() };
    let mut worker = hostile_worker(limits, ProducerClient::unconfigured());
    let started = Instant::now();
    let inv = misdeed(&mut worker, "loop", "").await;
    assert!(matches!(inv.outcome, Outcome::Timeout(_)), "{:?}", inv.outcome);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the loop was stopped near its 200 ms limit, took {:?}",
        started.elapsed()
    );
    assert_next_record_runs(&mut worker).await;
    assert_eq!(worker.instantiations(), 2, "the looping instance was replaced");
}

#[tokio::test]
async fn a_slow_host_call_counts_against_the_call_time_limit() {
    let stub = StubProducer::start().await;
    let limits = HandlerLimits { call_timeout_ms: 300, producer_timeout_ms: 60_000, ..HandlerLimits::default() };
    let mut worker = hostile_worker(limits, ProducerClient::new(&stub.url).expect("url"));
    let started = Instant::now();
    let inv = misdeed(&mut worker, "call", r#"["/slow"]"#).await;
    assert!(matches!(inv.outcome, Outcome::Timeout(_)), "{:?}", inv.outcome);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_next_record_runs(&mut worker).await;
}

#[tokio::test]
async fn deep_recursion_traps_and_the_worker_runs_the_next_record() {
    let mut worker = hostile_worker(HandlerLimits::default(), ProducerClient::unconfigured());
    let inv = misdeed(&mut worker, "recurse", "").await;
    assert!(matches!(inv.outcome, Outcome::Trap(_)), "{:?}", inv.outcome);
    assert_next_record_runs(&mut worker).await;
}

#[tokio::test]
async fn memory_growth_past_the_cap_is_the_memory_outcome() {
    let limits = HandlerLimits { max_memory_bytes: 8 * 1024 * 1024, ..HandlerLimits::default() };
    let mut worker = hostile_worker(limits, ProducerClient::unconfigured());
    let inv = misdeed(&mut worker, "grow", "").await;
    match &inv.outcome {
        Outcome::Memory(reason) => assert!(reason.contains("8388608"), "{reason}"),
        other => panic!("expected memory, got {other:?}"),
    }
    assert_next_record_runs(&mut worker).await;
}

/// A guest that keeps 1 MiB of every record (as a runtime does that never frees what the host
/// writes into it) would reach its 64 MiB cap near record 62, and fail a record. The worker
/// replaces its instance after the record that has used half the room it was made with, so 300
/// such records all come to `ok`, on instances replaced for their memory only, none kept past
/// three quarters of the cap.
#[tokio::test]
async fn a_leaking_guest_is_replaced_before_it_reaches_its_cap_and_no_record_fails() {
    let cap = HandlerLimits::default().max_memory_bytes as usize;
    let mut worker = hostile_worker(HandlerLimits::default(), ProducerClient::unconfigured());
    for n in 0..300 {
        let inv = misdeed(&mut worker, "leak", &(1 << 20).to_string()).await;
        assert_eq!(inv.outcome, Outcome::Ok, "record {n}");
        let kept = worker.footprint().map_or(0, |f| f.memory_bytes);
        assert!(kept <= cap * 3 / 4, "record {n}: an instance of {kept} bytes kept");
    }
    let recycled = worker.recycled(Recycle::Memory);
    assert!(recycled >= 5, "{recycled} instances replaced for their memory");
    assert_eq!((worker.recycled(Recycle::Fault), worker.recycled(Recycle::Records)), (0, 0));
    assert_eq!(worker.instantiations(), recycled + 1);
}

/// A guest that survives a refused `memory.grow` and answers a verdict of its own (SpiderMonkey
/// does: its `TextDecoder.decode` then fails, and a handler rejects a valid record as malformed)
/// does not get its record dead-lettered: the outcome is `memory`, retried on a new instance.
/// Below the cap, the guest's verdict stands.
#[tokio::test]
async fn a_verdict_given_after_the_guest_reached_its_memory_cap_is_the_memory_outcome() {
    let limits = HandlerLimits { max_memory_bytes: 8 << 20, ..HandlerLimits::default() };
    let mut worker = hostile_worker(limits, ProducerClient::unconfigured());
    let inv = misdeed(&mut worker, "oom-reject", &(16 << 20).to_string()).await;
    match &inv.outcome {
        Outcome::Memory(reason) => assert!(
            reason.contains("reached its memory cap of 8388608 bytes")
                && reason.contains("then answered reject: cannot take 16777216 bytes"),
            "{reason}"
        ),
        other => panic!("expected memory, got {other:?}"),
    }
    assert_eq!(worker.recycled(Recycle::Memory), 1, "an instance that reached its cap is not kept");
    assert!(worker.footprint().is_none());
    let inv = misdeed(&mut worker, "oom-reject", &(1 << 20).to_string()).await;
    assert_eq!(inv.outcome, Outcome::Ok, "granted");
    let inv = misdeed(&mut worker, "reject", "bad data").await;
    assert_eq!(inv.outcome, Outcome::Reject("bad data".into()));
    assert_eq!(worker.instantiations(), 2);
}

#[tokio::test]
async fn a_huge_memory_at_start_fails_instantiation_with_the_memory_outcome() {
    let engine = engine();
    let module = load(&engine, &fixture("big-start"), HandlerLimits::default());
    let mut worker = Worker::new(module, ProducerClient::unconfigured());
    let inv = worker.invoke(&record("t", "ok", "")).await;
    assert!(matches!(inv.outcome, Outcome::Memory(_)), "{:?}", inv.outcome);
}

#[tokio::test]
async fn panics_and_traps_are_trap_outcomes() {
    let mut worker = hostile_worker(HandlerLimits::default(), ProducerClient::unconfigured());
    for key in ["panic", "trap"] {
        let inv = misdeed(&mut worker, key, "").await;
        match &inv.outcome {
            Outcome::Trap(reason) => assert!(reason.contains("unreachable"), "{reason}"),
            other => panic!("{key}: expected trap, got {other:?}"),
        }
        assert_next_record_runs(&mut worker).await;
    }
    assert_eq!(worker.instantiations(), 3);
}

#[tokio::test]
async fn the_guest_has_no_filesystem() {
    let mut worker = hostile_worker(HandlerLimits::default(), ProducerClient::unconfigured());
    let (escaped, detail) = probe(&misdeed(&mut worker, "fs", "").await);
    assert!(!escaped, "filesystem reachable: {detail}");
}

#[tokio::test]
async fn the_guest_has_no_environment_or_arguments() {
    // SAFETY of the assertion: this variable is in the host process's environment for sure.
    assert!(std::env::var_os("PATH").is_some());
    let mut worker = hostile_worker(HandlerLimits::default(), ProducerClient::unconfigured());
    let (escaped, detail) = probe(&misdeed(&mut worker, "env", "").await);
    assert!(!escaped, "environment visible: {detail}");
}

#[tokio::test]
async fn the_guest_has_no_sockets_or_name_lookup() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let target = listener.local_addr().expect("addr").to_string();
    let mut worker = hostile_worker(HandlerLimits::default(), ProducerClient::unconfigured());
    let (escaped, detail) = probe(&misdeed(&mut worker, "net", &target).await);
    assert!(!escaped, "network reachable: {detail}");
    assert!(listener.accept().is_err(), "the guest connected to {target}");
}

#[tokio::test]
async fn the_guest_reads_nothing_from_stdin() {
    let mut worker = hostile_worker(HandlerLimits::default(), ProducerClient::unconfigured());
    let (escaped, detail) = probe(&misdeed(&mut worker, "stdin", "").await);
    assert!(!escaped, "stdin readable: {detail}");
}

#[tokio::test]
async fn log_and_event_floods_are_capped_and_counted() {
    let limits = HandlerLimits { max_log_lines_per_record: 10, max_events_per_record: 7, ..HandlerLimits::default() };
    let mut worker = hostile_worker(limits, ProducerClient::unconfigured());
    let inv = misdeed(&mut worker, "log-flood", "").await;
    assert_eq!(inv.outcome, Outcome::Ok);
    assert_eq!(inv.dropped, 100_000 - 10);

    let inv = misdeed(&mut worker, "event-flood", "").await;
    match &inv.outcome {
        Outcome::Trap(reason) => assert!(reason.contains("too much data"), "{reason}"),
        other => panic!("a 10 MiB event is past what one call may pass the host: {other:?}"),
    }
    let inv = misdeed(&mut worker, "big-event", &(64 * 1024 + 1).to_string()).await;
    assert_eq!((inv.outcome, inv.events.len(), inv.dropped), (Outcome::Ok, 0, 1), "an event over its limit is dropped");
}

#[tokio::test]
async fn producer_calls_per_record_are_capped() {
    let stub = StubProducer::start().await;
    let limits = HandlerLimits { max_producer_calls: 5, ..HandlerLimits::default() };
    let mut worker = hostile_worker(limits, ProducerClient::new(&stub.url).expect("url"));
    let inv = misdeed(&mut worker, "call-flood", "").await;
    assert_eq!(inv.outcome, Outcome::Ok);
    assert_eq!(inv.events[0].payload, "995", "calls past the cap are denied");
    assert_eq!(stub.seen().len(), 5, "only 5 calls reached the producer");
    assert_eq!(inv.calls.len(), 5, "calls past the cap are not recorded one by one");
    assert_eq!(inv.dropped, 995, "they are counted");
    let keys: Vec<_> =
        stub.seen().iter().map(|s| s.headers["idempotency-key"].to_str().expect("ascii").to_string()).collect();
    let digest = keys[0].split(':').nth(3).expect("the request's digest").to_string();
    assert_eq!(
        keys,
        (1..=5).map(|n| format!("t:3:42:{digest}:{n}")).collect::<Vec<_>>(),
        "the same request, repeated: one key per repeat"
    );
}

#[tokio::test]
async fn producer_paths_cannot_leave_the_producer_service() {
    let stub = StubProducer::start().await;
    let mut worker = hostile_worker(HandlerLimits::default(), ProducerClient::new(&stub.url).expect("url"));
    let escapes = [
        "http://example.com/",
        "//example.com/x",
        "example.com/x",
        "/../../etc/passwd",
        "/producer-svc/../admin",
        "/%2e%2e/admin",
        "/a%2F..%2Fb",
        "/%252e%252e/",
        "/a\\..\\b",
        "/x@example.com",
        "/a\r\nHost: example.com",
        "/a b",
        "/%%32%65%%32%65/admin",
        "/%u002e%u002e/admin",
        "/%c0%ae%c0%ae/admin",
        "/admin;/producer-svc/ping-what",
        "/a%0d%0aHost:%20example.com",
    ];
    let value = serde_json::to_string(&escapes).expect("json");
    let inv = misdeed(&mut worker, "call", &value).await;
    assert_eq!(inv.outcome, Outcome::Ok);
    assert_eq!(inv.events.len(), escapes.len());
    for event in &inv.events {
        let v: serde_json::Value = serde_json::from_str(&event.payload).expect("json");
        assert!(v["error"].as_str().is_some_and(|e| e.starts_with("CallError::Denied(")), "not denied: {v}");
    }
    assert!(stub.seen().is_empty(), "nothing reached the producer: {:?}", stub.seen());

    let inv = misdeed(&mut worker, "call", r#"["/producer-svc/ping-what"]"#).await;
    let v: serde_json::Value = serde_json::from_str(&inv.events[0].payload).expect("json");
    assert_eq!(v["status"], 200);
    assert_eq!(stub.seen().len(), 1);
}

#[tokio::test]
async fn handlers_cannot_set_host_owned_or_malformed_headers() {
    let stub = StubProducer::start().await;
    let mut worker = hostile_worker(HandlerLimits::default(), ProducerClient::new(&stub.url).expect("url"));
    for headers in [
        r#"[["Host","example.com"]]"#,
        r#"[["Idempotency-Key","forged"]]"#,
        r#"[["x-a","b\r\nHost: example.com"]]"#,
        r#"[["Transfer-Encoding","chunked"]]"#,
        r#"[["Content-Length","0"]]"#,
        r#"[["idempotency_key","forged"]]"#,
        r#"[["X-Forwarded","for=10.0.0.1"]]"#,
        r#"[["x_forwarded_for","10.0.0.1"]]"#,
        r#"[["X-Real-IP","10.0.0.1"]]"#,
        r#"[["X-Original-URL","/admin"]]"#,
    ] {
        let inv = misdeed(&mut worker, "call-headers", headers).await;
        let v: serde_json::Value = serde_json::from_str(&inv.events[0].payload).expect("json");
        assert!(v["error"].as_str().is_some_and(|e| e.starts_with("CallError::Denied(")), "{headers}: {v}");
    }
    assert!(stub.seen().is_empty());
    let inv = misdeed(&mut worker, "call-headers", r#"[["x-trace","abc"]]"#).await;
    assert_eq!(inv.outcome, Outcome::Ok);
    let seen = stub.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-trace"], "abc");
    let key = seen[0].headers["idempotency-key"].to_str().expect("ascii");
    assert!(key.starts_with("t:3:42:") && key.ends_with(":1"), "{key}");
    assert_eq!(seen[0].headers["host"], stub.url.trim_start_matches("http://"));
}

#[tokio::test]
async fn oversized_and_slow_producer_answers_are_typed_errors() {
    let stub = StubProducer::start().await;
    let limits =
        HandlerLimits { producer_timeout_ms: 300, max_producer_response_bytes: 64 * 1024, ..HandlerLimits::default() };
    let mut worker = hostile_worker(limits, ProducerClient::new(&stub.url).expect("url"));
    let inv = misdeed(&mut worker, "call", r#"["/big", "/slow"]"#).await;
    assert_eq!(inv.outcome, Outcome::Ok);
    let errors: Vec<String> = inv
        .events
        .iter()
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(&e.payload).expect("json")["error"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(errors, vec!["CallError::TooLarge(65536)".to_string(), "CallError::Timeout".to_string()]);
}

#[tokio::test]
async fn a_request_body_over_the_limit_is_denied_before_anything_is_sent() {
    let stub = StubProducer::start().await;
    let limits = HandlerLimits { max_producer_request_bytes: 64 * 1024, ..HandlerLimits::default() };
    let mut worker = hostile_worker(limits, ProducerClient::new(&stub.url).expect("url"));
    let inv = misdeed(&mut worker, "big-body", &(8 * 1024 * 1024).to_string()).await;
    assert!(
        matches!(&inv.outcome, Outcome::Trap(r) if r.contains("too much data")),
        "past what one call may pass the host: {:?}",
        inv.outcome
    );
    let inv = misdeed(&mut worker, "big-body", &(512 * 1024).to_string()).await;
    assert_eq!(inv.outcome, Outcome::Ok, "the handler saw a typed error and carried on");
    let result: serde_json::Value = serde_json::from_str(&inv.events[0].payload).expect("json");
    let error = result["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("CallError::Denied") && error.contains("65536"), "{result}");
    assert!(stub.seen().is_empty(), "nothing reached the producer");
    // At the limit it goes through.
    let inv = misdeed(&mut worker, "big-body", &(64 * 1024).to_string()).await;
    let result: serde_json::Value = serde_json::from_str(&inv.events[0].payload).expect("json");
    assert!(result["status"].is_number(), "a body at the limit is sent: {result}");
    assert_eq!(stub.seen().len(), 1);
}

#[tokio::test]
async fn components_that_break_the_contract_are_rejected_naming_what_is_wrong() {
    let engine = engine();
    let limits = HandlerLimits::default;
    let err = HandlerModule::load_file(&engine, &fixture("no-handle"), limits()).expect_err("no handle export");
    assert!(matches!(err, LoadError::WrongWorld(_)) && err.to_string().contains("handle"), "{err}");
    let err = HandlerModule::load_file(&engine, &fixture("extra-import"), limits()).expect_err("extra import");
    assert!(err.to_string().contains("test:secrets/vault"), "{err}");
    let err = HandlerModule::load(&engine, b"\0asm\x01\0\0\0", limits()).expect_err("core module");
    assert!(matches!(err, LoadError::NotAComponent(_)) && err.to_string().contains("core WebAssembly module"), "{err}");
    let err = HandlerModule::load(&engine, b"#!/bin/sh\necho hi\n", limits()).expect_err("not wasm");
    assert!(matches!(err, LoadError::NotAComponent(_)), "{err}");
    let bytes = std::fs::read(handler("issued-token")).expect("read");
    let err = HandlerModule::load(&engine, &bytes[..bytes.len() / 2], limits()).expect_err("truncated");
    assert!(matches!(err, LoadError::Invalid(_)), "{err}");
    let err =
        HandlerModule::load(&engine, &bytes, HandlerLimits { call_timeout_ms: 0, ..limits() }).expect_err("bad limits");
    assert!(err.to_string().contains("call_timeout_ms"), "{err}");
}

#[tokio::test]
async fn reuse_keeps_one_instance_fresh_makes_one_per_record() {
    let run = |limits: HandlerLimits| async move {
        let mut worker = hostile_worker(limits, ProducerClient::unconfigured());
        for _ in 0..5 {
            assert_eq!(misdeed(&mut worker, "ok", "").await.outcome, Outcome::Ok);
        }
        worker.instantiations()
    };
    assert_eq!(run(HandlerLimits::default()).await, 1);
    assert_eq!(run(HandlerLimits { instance_policy: InstancePolicy::Fresh, ..HandlerLimits::default() }).await, 5);
    assert_eq!(run(HandlerLimits { recycle_after_records: 2, ..HandlerLimits::default() }).await, 3);
}

#[tokio::test]
async fn the_guest_receives_every_record_field() {
    let mut worker = hostile_worker(HandlerLimits::default(), ProducerClient::unconfigured());
    let mut rec: Record = record("orders", "echo", "hello");
    rec.attempt = 4;
    rec.headers.push(host::record::Header { key: "trace".into(), value: b"1".to_vec() });
    let inv = worker.invoke(&rec).await;
    let v: serde_json::Value = serde_json::from_str(&inv.events[0].payload).expect("json");
    assert_eq!(v["topic"], "orders");
    assert_eq!((v["partition"].as_i64(), v["offset"].as_i64(), v["attempt"].as_u64()), (Some(3), Some(42), Some(4)));
    assert_eq!(v["value"], "hello");
    assert_eq!(v["headers"], serde_json::json!(["content-type", "trace"]));
    rec.value = None;
    let inv = worker.invoke(&rec).await;
    let v: serde_json::Value = serde_json::from_str(&inv.events[0].payload).expect("json");
    assert_eq!(v["tombstone"], true);
}

#[tokio::test]
async fn a_guest_blocked_on_a_clock_times_out_at_its_limit_and_the_worker_runs_the_next_record() {
    let limits = HandlerLimits { call_timeout_ms: 300, ..HandlerLimits::default() };
    let mut worker = hostile_worker(limits, ProducerClient::unconfigured());
    for (key, value) in [("block", "60000"), ("block", "forever"), ("poll", "60000"), ("poll", "forever")] {
        let started = Instant::now();
        let inv = misdeed(&mut worker, key, value).await;
        match &inv.outcome {
            Outcome::Timeout(reason) => assert!(reason.contains("300 ms"), "{key} {value}: {reason}"),
            other => panic!("{key} {value}: expected timeout, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{key} {value}: cut off after {:?}", started.elapsed());
        assert_next_record_runs(&mut worker).await;
    }
}

#[tokio::test]
async fn a_guest_that_blocks_in_its_start_code_times_out_at_every_instantiation() {
    let engine = engine();
    let limits = HandlerLimits { call_timeout_ms: 300, ..HandlerLimits::default() };
    let mut worker = Worker::new(load(&engine, &fixture("blocks-at-start"), limits), ProducerClient::unconfigured());
    for _ in 0..2 {
        let started = Instant::now();
        let inv = worker.invoke(&record("t", "ok", "")).await;
        assert!(matches!(inv.outcome, Outcome::Timeout(_)), "{:?}", inv.outcome);
        assert!(started.elapsed() < Duration::from_secs(2), "cut off after {:?}", started.elapsed());
    }
    assert_eq!(worker.instantiations(), 2, "each record tried a new instance");
}

#[tokio::test]
async fn a_pure_guest_blocked_in_a_batch_fails_the_batch_at_its_limit() {
    let limits = HandlerLimits { call_timeout_ms: 300, ..HandlerLimits::default() };
    let engine = engine();
    let mut worker = Worker::new(load(&engine, &fixture("pure"), limits), ProducerClient::unconfigured());
    let records: Vec<Record> = [("ok", ""), ("sleep", "60000"), ("ok", "")]
        .iter()
        .enumerate()
        .map(|(i, (key, value))| Record { offset: i as i64, ..record("t", key, value) })
        .collect();
    let started = Instant::now();
    match worker.invoke_batch(&records).await {
        host::runtime::BatchInvocation::Failed(reason) => assert!(reason.contains("timeout"), "{reason}"),
        other => panic!("expected the batch to fail, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2), "cut off after {:?}", started.elapsed());
    assert_eq!(worker.invoke(&records[0]).await.outcome, Outcome::Ok, "the worker runs the next record");
}

#[tokio::test]
async fn oversized_import_arguments_are_refused_or_cut_and_counted() {
    let stub = StubProducer::start().await;
    let limits = HandlerLimits { max_log_line_bytes: 100, max_event_bytes: 1000, ..HandlerLimits::default() };
    let mut worker = hostile_worker(limits, ProducerClient::new(&stub.url).expect("url"));
    let inv = misdeed(&mut worker, "header-flood", "33").await;
    let v: serde_json::Value = serde_json::from_str(&inv.events[0].payload).expect("json");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("more than 32 headers")), "{v}");
    assert_eq!(inv.calls.len(), 1, "a refused call counts against the per-record limit");
    let inv = misdeed(&mut worker, "big-event", "1001").await;
    assert!(inv.events.is_empty() && inv.dropped == 1, "{inv:?}");
    let inv = misdeed(&mut worker, "log-line", "5000").await;
    assert_eq!((inv.outcome, inv.dropped), (Outcome::Ok, 0));
    assert!(stub.seen().is_empty(), "nothing reached the producer");
}

#[tokio::test]
async fn a_guest_that_keeps_wasi_handles_without_end_traps_at_the_cap() {
    let mut worker = hostile_worker(HandlerLimits::default(), ProducerClient::unconfigured());
    let inv = misdeed(&mut worker, "handle-flood", "100").await;
    assert_eq!(inv.events[0].payload, "100", "a handler may keep a few handles");
    let inv = misdeed(&mut worker, "handle-flood", "100000").await;
    assert!(matches!(inv.outcome, Outcome::Trap(_)), "{:?}", inv.outcome);
    assert_next_record_runs(&mut worker).await;
}

#[tokio::test]
async fn a_batch_whose_results_pass_what_one_call_may_pass_the_host_is_redone_record_by_record() {
    // Each record returns 1000 events (64 are kept): 64 records' results together are more than
    // one call may pass the host; one record's are not.
    let engine = engine();
    let mut worker =
        Worker::new(load(&engine, &fixture("pure"), HandlerLimits::default()), ProducerClient::unconfigured());
    let records: Vec<Record> = (0..64).map(|i| Record { offset: i, ..record("t", "events", "1000") }).collect();
    match worker.invoke_batch(&records).await {
        host::runtime::BatchInvocation::Failed(reason) => assert!(reason.contains("too much data"), "{reason}"),
        other => panic!("expected the batch to fail, got {other:?}"),
    }
    let alone = worker.invoke(&records[0]).await;
    assert_eq!((alone.outcome, alone.events.len(), alone.dropped), (Outcome::Ok, 64, 936), "alone, the caps apply");
}

#[tokio::test]
async fn a_guests_wasi_http_request_is_refused() {
    let stub = StubProducer::start().await;
    let authority = stub.url.trim_start_matches("http://").to_string();
    let mut worker = hostile_worker(HandlerLimits::default(), ProducerClient::unconfigured());
    let (escaped, detail) = probe(&misdeed(&mut worker, "http", &authority).await);
    assert!(!escaped, "wasi:http reached {authority}: {detail}");
    assert!(detail.contains("HttpRequestDenied"), "{detail}");
    assert!(stub.seen().is_empty(), "nothing reached the server");
}

#[tokio::test]
async fn a_guests_standard_error_reaches_the_invocation_and_is_bounded() {
    let mut worker = hostile_worker(HandlerLimits::default(), ProducerClient::unconfigured());
    let inv = misdeed(&mut worker, "stderr", "10").await;
    assert!(matches!(inv.outcome, Outcome::Trap(_)), "{:?}", inv.outcome);
    let stderr = inv.stderr.expect("the guest's standard error");
    assert!(stderr.starts_with("Traceback (most recent call last)"), "{stderr}");
    assert!(stderr.contains("after writing to stderr"), "the panic's message too: {stderr}");
    let inv = misdeed(&mut worker, "stderr", "1000000").await;
    let stderr = inv.stderr.expect("the guest's standard error");
    assert!(stderr.len() < 17 * 1024 && stderr.contains("bytes more)"), "bounded: {} bytes", stderr.len());
    assert_eq!(misdeed(&mut worker, "ok", "").await.stderr, None, "nothing carried to the next record");
}

#[tokio::test]
async fn a_component_is_compiled_once_and_a_corrupt_cache_entry_is_compiled_again() {
    use host::runtime::{EngineConfig, WasmEngine};
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let engine = || {
        std::sync::Arc::new(
            WasmEngine::new(EngineConfig {
                max_instances: 4,
                cache_dir: Some(cache.clone()),
                ..EngineConfig::default()
            })
            .expect("engine"),
        )
    };
    let first = engine();
    load(&first, &fixture("hostile"), HandlerLimits::default());
    assert_eq!(first.cache_hits(), 0, "compiled the first time");
    let second = engine();
    load(&second, &fixture("hostile"), HandlerLimits::default());
    assert_eq!(second.cache_hits(), 1, "a second engine (another process) finds it compiled");

    // Another component's entry put in its place: a valid entry, compressed and loadable, with
    // the wrong machine code. And, in the next check, bytes flipped in the middle of one.
    let hostile_entries = entries_of(&cache);
    load(&second, &fixture("trivial"), HandlerLimits::default());
    let trivial_entry = entries_of(&cache).into_iter().find(|e| !hostile_entries.contains(e)).expect("trivial's entry");
    for entry in &hostile_entries {
        std::fs::copy(&trivial_entry, entry).expect("swap");
    }
    std::fs::write(trivial_entry.with_file_name("planted"), b"machine code from elsewhere").expect("plant");
    let third = engine();
    assert!(!trivial_entry.with_file_name("planted").exists(), "an entry no manifest names is removed");
    let module = load(&third, &fixture("hostile"), HandlerLimits::default());
    assert_eq!(third.cache_hits(), 0, "the swapped entry was not used: compiled again");
    let mut worker = Worker::new(module, ProducerClient::unconfigured());
    let described = worker.invoke(&record("t", "describe", "")).await;
    assert_eq!((described.outcome, described.events.len()), (Outcome::Ok, 1), "hostile's own code runs");
    for entry in entries_of(&cache) {
        let mut bytes = std::fs::read(&entry).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&entry, bytes).expect("write");
    }
    let flipped = engine();
    load(&flipped, &fixture("hostile"), HandlerLimits::default());
    assert_eq!(flipped.cache_hits(), 0, "a flipped byte: compiled again");
    let fourth = engine();
    load(&fourth, &fixture("hostile"), HandlerLimits::default());
    assert_eq!(fourth.cache_hits(), 1, "the entry written again is trusted again");
}

#[tokio::test]
async fn processes_sharing_a_cache_directory_keep_and_load_each_others_entries() {
    use host::runtime::{EngineConfig, WasmEngine};
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = || {
        std::sync::Arc::new(
            WasmEngine::new(EngineConfig {
                max_instances: 4,
                cache_dir: Some(dir.path().join("cache")),
                ..EngineConfig::default()
            })
            .expect("engine"),
        )
    };
    // Both open (and read the manifest) before either compiles, as two hosts started together.
    let (a, b) = (engine(), engine());
    load(&a, &fixture("hostile"), HandlerLimits::default());
    load(&b, &fixture("trivial"), HandlerLimits::default());
    assert_eq!((a.cache_hits(), b.cache_hits()), (0, 0), "each compiled its own");
    load(&b, &fixture("hostile"), HandlerLimits::default());
    assert_eq!(b.cache_hits(), 1, "b loads what a compiled: not taken for a planted entry");
    load(&a, &fixture("trivial"), HandlerLimits::default());
    assert_eq!(a.cache_hits(), 1, "a loads what b compiled, after b saved the manifest");
    let c = engine();
    load(&c, &fixture("hostile"), HandlerLimits::default());
    load(&c, &fixture("trivial"), HandlerLimits::default());
    assert_eq!(c.cache_hits(), 2, "the manifest names both: neither process overwrote the other's");
}

#[test]
fn a_cache_directory_of_another_user_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // Another user's directory, as one made in /tmp before the host's first start.
    if let Err(e) = std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)) {
        assert!(!rustix::process::geteuid().is_root(), "root may give a directory away: {e}");
        eprintln!("not run: only root can give a directory to another user ({e})");
        return;
    }
    let engine = host::runtime::WasmEngine::new(host::runtime::EngineConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..host::runtime::EngineConfig::default()
    });
    let error = engine.expect_err("another user's cache directory").to_string();
    assert!(error.contains("belongs to user 65534"), "{error}");
}

#[test]
fn a_cache_directory_others_may_write_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let engine = host::runtime::WasmEngine::new(host::runtime::EngineConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..host::runtime::EngineConfig::default()
    });
    let error = engine.expect_err("a world-writable cache directory").to_string();
    assert!(error.contains("others may write it"), "{error}");
}

/// The compiled entries of a cache directory (not wasmtime's usage statistics).
fn entries_of(cache: &std::path::Path) -> Vec<std::path::PathBuf> {
    walk(&cache.join("wasmtime")).into_iter().filter(|p| !p.to_string_lossy().ends_with(".stats")).collect()
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
    }
    out
}
