//! What a guest can make the host allocate: the handler's limits (the header count and size, the
//! path, body, log line and event limits, and the per-call budget derived from them), not what
//! the guest passes. Every allocation of this test binary is counted ([`cap`] wraps the system
//! allocator; a guest's own linear memory is mapped by wasmtime's pool and is not counted), and
//! the one test here runs alone in it.

mod support;

use host::producer_api::ProducerClient;
use host::record::Outcome;
use host::runtime::{EngineConfig, HandlerLimits, WasmEngine, Worker};
use std::sync::Arc;
use support::{fixture, load, record};

#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// What one record may make the host allocate at most, bookkeeping included: far less than
/// any argument below.
const HOST_BUDGET: usize = 512 << 10;

#[tokio::test]
async fn import_arguments_cost_the_host_what_the_limits_allow_not_what_the_guest_passes() {
    let engine =
        Arc::new(WasmEngine::new(EngineConfig { max_instances: 4, ..EngineConfig::default() }).expect("engine"));
    // Room for the guest to build its arguments: 3 million header pairs take 192 MiB of it.
    let limits = HandlerLimits { max_memory_bytes: 256 << 20, ..HandlerLimits::default() };
    let budget = limits.hostcall_bytes();
    let mut worker = Worker::new(load(&engine, &fixture("hostile"), limits), ProducerClient::unconfigured());
    assert_eq!(worker.invoke(&record("t", "ok", "")).await.outcome, Outcome::Ok, "warm: the instance exists");
    let within = (budget - (64 << 10)).to_string();
    for (key, value, over_budget) in [
        ("header-flood", "3000000", true),
        ("log-line", "50000000", true),
        ("big-event", "50000000", true),
        ("big-body", "50000000", true),
        // Host to guest: asked for, then answered in host memory.
        ("random", "33554432", true),
        // Under the per-call budget, over a limit: cut, dropped or denied, never copied whole.
        ("header-flood", "33", false),
        ("log-line", within.as_str(), false),
        ("big-event", within.as_str(), false),
        ("big-body", within.as_str(), false),
    ] {
        let before = ALLOCATOR.total_allocated();
        let invocation = worker.invoke(&record("t", key, value)).await;
        let allocated = ALLOCATOR.total_allocated() - before;
        match (&invocation.outcome, over_budget) {
            (Outcome::Trap(_), true) => {}
            (Outcome::Ok, false) => {}
            (other, _) => panic!("{key} with {value}: unexpected {other:?}"),
        }
        assert!(
            allocated < HOST_BUDGET,
            "{key} with {value}: the host allocated {} KiB for one record",
            allocated >> 10
        );
    }
}
