//! Per-record cost of the sandbox: one `handle` call with a 1 KiB value through a `Worker`, under
//! the `reuse` and `fresh` instance policies, next to the same logic compiled natively and called
//! the same way (through an async call on the same runtime), and per record in a batch of 64
//! (`handle-packed`, one call for all). Figures go to docs/BENCHMARKS.md.

use criterion::{Criterion, criterion_group, criterion_main};
use host::producer_api::ProducerClient;
use host::record::{Header, Outcome, Record};
use host::runtime::{BatchInvocation, EngineConfig, HandlerLimits, HandlerModule, InstancePolicy, WasmEngine, Worker};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The trivial fixture's logic, natively. Keep identical to `test-fixtures/trivial`.
async fn native_handle(record: &Record) -> Outcome {
    let sum =
        record.key.iter().chain(record.value.iter()).flatten().fold(0u32, |acc, b| acc.wrapping_add(u32::from(*b)));
    if record.value.as_ref().is_none_or(Vec::is_empty) {
        return Outcome::Reject(format!("empty value (checksum {sum})"));
    }
    Outcome::Ok
}

fn record() -> Record {
    Record {
        topic: "bench".into(),
        partition: 0,
        offset: 1,
        timestamp_ms: Some(1_700_000_000_000),
        key: Some(b"user-0001".to_vec()),
        value: Some(vec![b'x'; 1024]),
        headers: vec![Header { key: "content-type".into(), value: b"application/json".to_vec() }],
        attempt: 1,
    }
}

fn per_record(c: &mut Criterion) {
    let fixtures = xtask::build_test_fixtures().expect("build fixtures");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let engine = Arc::new(WasmEngine::new(EngineConfig::default()).expect("engine"));
    let path = fixtures.join("trivial.wasm");
    let record = record();

    let mut group = c.benchmark_group("handle_1KiB");
    group.bench_function("native", |b| {
        b.iter(|| {
            let outcome = rt.block_on(native_handle(black_box(&record)));
            assert_eq!(outcome, Outcome::Ok);
        })
    });
    // The fixed cost of a call: the same reused instance with a one-byte value, no key, no
    // headers, so almost nothing is lowered into the guest.
    let small = Record { key: None, value: Some(vec![b'x']), headers: Vec::new(), ..record.clone() };
    {
        let limits = HandlerLimits { recycle_after_records: u64::MAX, ..HandlerLimits::default() };
        let module = HandlerModule::load_file(&engine, &path, limits).expect("load trivial");
        let mut worker = Worker::new(module, ProducerClient::unconfigured());
        group.bench_function("wasm_reuse_1B", |b| {
            b.iter(|| {
                let inv = rt.block_on(worker.invoke(black_box(&small)));
                assert_eq!(inv.outcome, Outcome::Ok);
            })
        });
    }
    for (name, policy) in [("wasm_reuse", InstancePolicy::Reuse), ("wasm_fresh", InstancePolicy::Fresh)] {
        let limits =
            HandlerLimits { instance_policy: policy, recycle_after_records: u64::MAX, ..HandlerLimits::default() };
        let module = HandlerModule::load_file(&engine, &path, limits).expect("load trivial");
        let mut worker = Worker::new(module, ProducerClient::unconfigured());
        group.bench_function(name, |b| {
            b.iter(|| {
                let inv = rt.block_on(worker.invoke(black_box(&record)));
                assert_eq!(inv.outcome, Outcome::Ok);
            })
        });
    }
    // A batch of 64 such records in one `handle-packed` call; criterion times the batch, and the
    // figure reported is per record (the time divided by 64).
    {
        const BATCH: usize = 64;
        let limits = HandlerLimits { recycle_after_records: u64::MAX, ..HandlerLimits::default() };
        let module = HandlerModule::load_file(&engine, &path, limits).expect("load trivial");
        let mut worker = Worker::new(module, ProducerClient::unconfigured());
        assert!(worker.takes_batches(), "the trivial fixture takes packed batches");
        let batch: Vec<Record> = (0..BATCH as i64).map(|i| Record { offset: i, ..record.clone() }).collect();
        group.bench_function("wasm_batch64_per_record", |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    match rt.block_on(worker.invoke_batch(black_box(&batch))) {
                        BatchInvocation::Handled(invs) => assert_eq!(invs.len(), BATCH),
                        BatchInvocation::Failed(reason) => panic!("batch failed: {reason}"),
                    }
                }
                let per_record = started.elapsed().as_nanos() / BATCH as u128;
                Duration::from_nanos(u64::try_from(per_record).unwrap_or(u64::MAX))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, per_record);
criterion_main!(benches);
