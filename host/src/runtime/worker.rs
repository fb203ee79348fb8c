//! Runs records through a handler under its instance policy.
//!
//! A [`Worker`] serves one record at a time: the pipeline leases one per record in flight from
//! the host-wide budget ([`super::instances`]); the CLI makes its own.
//! Under `reuse` it keeps one instance alive between records and replaces it after a sandbox
//! fault, after `recycle_after_records` records, when the handler is swapped, and when its memory
//! has grown too far ([`outgrown`]); under `fresh` it instantiates for every record. Every path
//! returns an [`Invocation`]: nothing a guest does can make `invoke` fail or panic.
//!
//! A guest whose memory grows with every record (a runtime that never frees what the host
//! allocates in it, as ComponentizeJS 0.23 does, or a handler that keeps what it reads) would
//! reach its memory cap on some later record; a runtime that survives the refused `memory.grow`
//! may then give that record a verdict of its own making (SpiderMonkey turns it into an
//! exception: a valid record rejected). So an instance is replaced before that: after the call in
//! which it has used more than half the room its cap left it when it was made, and after any call
//! in which it reached its cap; and a `retry` or `reject` given after reaching the cap is reported
//! as the `memory` outcome, not as the record's.
//!
//! A pure `batch-handler` under `reuse` can also take several records in one call
//! ([`Worker::invoke_batch`]): one entry into the sandbox for many records, which share one time
//! limit; each record's outcome and events are still its own.

use super::config::{HandlerLimits, InstancePolicy};
use super::module::{HandlerModule, Instance};
use super::state::{Deadline, HostState, MAX_TABLE_ELEMENTS, MemoryCap, RecordScope};
use crate::metrics::ReasonLabels;
use crate::producer_api::ProducerClient;
use crate::record::{Invocation, Outcome, Record};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::time::{Duration, Instant};
use wasmtime::{Store, Trap, UpdateDeadline};

struct Live {
    store: Store<HostState>,
    instance: Instance,
    handled: u64,
    /// What the instance held when it was made.
    born: Footprint,
}

impl Live {
    fn footprint(&self) -> Footprint {
        Footprint::of(&self.store.data().memory)
    }
}

/// An instance's size as its caps count it: all its memories, all its tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Bytes of all its memories together (capped by `max_memory_bytes`).
    pub memory_bytes: usize,
    /// Elements of all its tables together (capped by [`MAX_TABLE_ELEMENTS`]).
    pub table_elements: usize,
}

impl Footprint {
    fn of(memory: &MemoryCap) -> Self {
        Self { memory_bytes: memory.memory_bytes(), table_elements: memory.table_elements() }
    }
}

/// Why a worker dropped its instance after a call, under the `reuse` policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recycle {
    /// The call trapped, ran past its time limit or broke the batch contract.
    Fault,
    /// The instance reached its memory cap during the call, or has outgrown its room (see
    /// [`outgrown`]).
    Memory,
    /// It has served `recycle_after_records` records.
    Records,
}

impl Recycle {
    /// Its label in `host_instances_recycled_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Fault => "fault",
            Self::Memory => "memory",
            Self::Records => "records",
        }
    }
}

/// Whether an instance that held `born` when it was made and holds `now` has used more than half
/// the room its caps left it then, in memory (of `max_memory_bytes`) or in table elements: it is
/// replaced before its next record, so that leftovers of earlier records never take the room a
/// record needs, while an instance that merely starts large (a Python interpreter: 13 MiB) is not
/// replaced after every record.
pub fn outgrown(born: Footprint, now: Footprint, max_memory_bytes: usize) -> bool {
    let past_half = |born: usize, now: usize, cap: usize| now > born + cap.saturating_sub(born) / 2;
    past_half(born.memory_bytes, now.memory_bytes, max_memory_bytes)
        || past_half(born.table_elements, now.table_elements, MAX_TABLE_ELEMENTS)
}

/// What a batch came to.
#[derive(Debug)]
pub enum BatchInvocation {
    /// One invocation per record, in order.
    Handled(Vec<Invocation>),
    /// The batch ended in a trap, a limit or a broken contract: nothing it did counts, and its
    /// records are to be handled one by one. Says why.
    Failed(String),
}

/// Epoch ticks a guest runs before it yields its thread to other tasks (and the call's own
/// deadline is checked): with the default 5 ms tick, every 10 ms.
const SLICE_TICKS: u64 = 2;

/// The most packing-buffer capacity a worker keeps between batches (kept by every worker; a batch
/// may take up to `max_batch_bytes`).
const KEEP_PACKED_BYTES: usize = 256 * 1024;

/// A handler runner: one record at a time, on its own instance.
pub struct Worker {
    module: HandlerModule,
    producer: ProducerClient,
    live: Option<Live>,
    instantiations: u64,
    /// The buffer records are packed in for a batch handler, kept for its capacity.
    packing: Vec<u8>,
    /// Instances dropped after a call, by reason.
    recycled: Family<ReasonLabels, Counter>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("module", &self.module)
            .field("live", &self.live.is_some())
            .field("instantiations", &self.instantiations)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker for `module`, calling the producer through `producer`.
    pub fn new(module: HandlerModule, producer: ProducerClient) -> Self {
        Self { module, producer, live: None, instantiations: 0, packing: Vec::new(), recycled: Family::default() }
    }

    /// Counts the instances this worker drops after a call in `recycled` (the host's
    /// `host_instances_recycled_total`), by reason.
    pub fn count_recycled_in(&mut self, recycled: Family<ReasonLabels, Counter>) {
        self.recycled = recycled;
    }

    /// Instances this worker dropped after a call for `reason` (counted where
    /// [`count_recycled_in`](Worker::count_recycled_in) says).
    pub fn recycled(&self, reason: Recycle) -> u64 {
        self.recycled.get_or_create(&ReasonLabels { reason: reason.label().to_string() }).get()
    }

    /// The size of the instance kept for the next record (`None`: none is kept).
    pub fn footprint(&self) -> Option<Footprint> {
        self.live.as_ref().map(Live::footprint)
    }

    /// The handler this worker runs.
    pub fn module(&self) -> &HandlerModule {
        &self.module
    }

    /// Switches to another handler; the current instance is dropped, the next record gets a new one.
    pub fn swap(&mut self, module: HandlerModule) {
        self.module = module;
        self.live = None;
    }

    /// Instances created so far (for tests and metrics).
    pub fn instantiations(&self) -> u64 {
        self.instantiations
    }

    /// Runs one record through the handler.
    pub async fn invoke(&mut self, record: &Record) -> Invocation {
        let started = Instant::now();
        let limits = self.module.limits().clone();
        let mut live = match self.take_live().await {
            Ok(live) => live,
            Err(outcome) => return Invocation::of(outcome, RecordScope::default(), started.elapsed()),
        };
        // The time limit: the epoch deadline interrupts guest code, host calls get at most the
        // time left, and `bounded` cuts off a guest that still waits in a host call.
        live.store.data_mut().begin(&record.topic, record.partition, record.offset, started);
        self.arm(&mut live.store);
        let deadline = live.store.data().deadline.clone();
        let called = bounded(&deadline, live.instance.handle(&mut live.store, record, &mut self.packing)).await;
        self.keep_packing();
        let outcome = match called {
            // Cut off while waiting in a host call: the instance is dropped below.
            None => Outcome::Timeout(format!(
                "the guest was still waiting in a host call at its {} ms time limit",
                limits.call_timeout_ms
            )),
            Some(_) if live.store.data().scope.deadline_hit => {
                Outcome::Timeout(format!("a producer call reached the {} ms time limit", limits.call_timeout_ms))
            }
            Some(Ok(Ok(()))) => Outcome::Ok,
            Some(Ok(Err(error))) => Outcome::from(error),
            Some(Err(error)) => classify(&error, live.store.data().memory.exceeded, &limits),
        };
        let outcome = after_the_cap(outcome, live.store.data().memory.exceeded, &limits);
        let scope = live.store.data_mut().take_scope();
        live.handled += 1;
        let fault = matches!(outcome, Outcome::Trap(_) | Outcome::Timeout(_));
        self.keep_or_recycle(live, fault);
        Invocation::of(outcome, scope, started.elapsed())
    }

    /// Keeps `live` for the next call, or drops it after a call that was a `fault`, that reached
    /// the memory cap, that left it [`outgrown`], or that was its `recycle_after_records`th
    /// (counted by reason); under `fresh`, drops it.
    fn keep_or_recycle(&mut self, live: Live, fault: bool) {
        let limits = self.module.limits();
        if limits.instance_policy == InstancePolicy::Fresh {
            return;
        }
        let cap = usize::try_from(limits.max_memory_bytes).unwrap_or(usize::MAX);
        let reason = if fault {
            Recycle::Fault
        } else if live.store.data().memory.exceeded || outgrown(live.born, live.footprint(), cap) {
            Recycle::Memory
        } else if live.handled >= limits.recycle_after_records {
            Recycle::Records
        } else {
            self.live = Some(live);
            return;
        };
        self.recycled.get_or_create(&ReasonLabels { reason: reason.label().to_string() }).inc();
    }

    /// Whether [`Worker::invoke_batch`] can take batches (see [`HandlerModule::takes_batches`]).
    pub fn takes_batches(&self) -> bool {
        self.module.takes_batches()
    }

    /// Runs `records` (consecutive records of one partition, in offset order) through the
    /// handler's `handle-batch` in one call, under one time limit. Each record's outcome and
    /// events are its own (under the per-record caps); the batch's time is shared out evenly.
    /// Only for a worker that [`takes_batches`](Worker::takes_batches); otherwise the batch is
    /// reported failed.
    pub async fn invoke_batch(&mut self, records: &[Record]) -> BatchInvocation {
        let Some(first) = records.first() else { return BatchInvocation::Handled(Vec::new()) };
        if !self.takes_batches() {
            return BatchInvocation::Failed("the handler does not take batches".into());
        }
        let started = Instant::now();
        let limits = self.module.limits().clone();
        let mut live = match self.take_live().await {
            Ok(live) => live,
            Err(outcome) => {
                return BatchInvocation::Failed(format!(
                    "{}: {}",
                    outcome.label(),
                    outcome.reason().unwrap_or_default()
                ));
            }
        };
        live.store.data_mut().begin(&first.topic, first.partition, first.offset, started);
        self.arm(&mut live.store);
        let deadline = live.store.data().deadline.clone();
        let called = bounded(&deadline, live.instance.handle_batch(&mut live.store, records, &mut self.packing)).await;
        self.keep_packing();
        let exceeded = live.store.data().memory.exceeded;
        let results = match called {
            None => {
                self.keep_or_recycle(live, true);
                return BatchInvocation::Failed(format!(
                    "timeout: the guest was still waiting in a host call at its {} ms time limit",
                    limits.call_timeout_ms
                ));
            }
            Some(Err(error)) => {
                let outcome = classify(&error, exceeded, &limits);
                self.keep_or_recycle(live, !exceeded);
                return BatchInvocation::Failed(format!(
                    "{}: {}",
                    outcome.label(),
                    outcome.reason().unwrap_or_default()
                ));
            }
            // Results given after the guest reached its memory cap may be the refused growth's,
            // not the records' (see `after_the_cap`): a pure handler's records are simply
            // handled again, one by one, on a new instance.
            Some(Ok(_)) if exceeded => {
                self.keep_or_recycle(live, false);
                return BatchInvocation::Failed(format!(
                    "memory: the guest reached its memory cap of {} bytes during the batch",
                    limits.max_memory_bytes
                ));
            }
            Some(Ok(results)) => results,
        };
        if results.len() != records.len() {
            // The instance is not trusted with another record, and the module not with another
            // batch: its records go one by one until the handler is swapped.
            self.module.turn_batches_off();
            self.keep_or_recycle(live, true);
            return BatchInvocation::Failed(format!(
                "broken batch contract: {} results for {} records",
                results.len(),
                records.len()
            ));
        }
        let share = started.elapsed() / u32::try_from(records.len()).unwrap_or(u32::MAX);
        let state = live.store.data_mut();
        let invocations = records
            .iter()
            .zip(results)
            .map(|(record, result)| {
                state.begin(&record.topic, record.partition, record.offset, started);
                state.push_events(result.events);
                let outcome = match result.outcome {
                    Ok(()) => Outcome::Ok,
                    Err(error) => Outcome::from(error),
                };
                Invocation::of(outcome, state.take_scope(), share)
            })
            .collect();
        live.handled += records.len() as u64;
        self.keep_or_recycle(live, false);
        BatchInvocation::Handled(invocations)
    }

    /// Drops a packing buffer an unusually large batch grew, so each partition keeps little.
    fn keep_packing(&mut self) {
        if self.packing.capacity() > KEEP_PACKED_BYTES {
            self.packing = Vec::new();
        }
    }

    /// The instance to run on: the one kept from the last call, or a new one.
    async fn take_live(&mut self) -> Result<Live, Outcome> {
        match self.live.take() {
            Some(live) => Ok(live),
            None => self.instantiate().await,
        }
    }

    /// Arms the epoch deadline for the first slice of the store's current deadline.
    fn arm(&self, store: &mut Store<HostState>) {
        let ticks = slice_ticks(self.module.engine(), store.data().deadline.get(), Instant::now());
        store.set_epoch_deadline(ticks);
    }

    async fn instantiate(&mut self) -> Result<Live, Outcome> {
        let module = &self.module;
        let limits = module.limits();
        let state = HostState::new(limits.clone(), self.producer.clone());
        // Instantiation (the guest's start code) runs under the same limit as a record.
        state.deadline.set(Some(Instant::now() + limits.call_timeout()));
        let deadline = state.deadline.clone();
        let mut store = Store::new(module.engine().engine(), state);
        store.limiter(|s| &mut s.memory);
        // What one call may hand the host, from the handler's limits (see `hostcall_bytes`).
        store.set_hostcall_fuel(limits.hostcall_bytes());
        store.set_max_component_handles(super::state::MAX_HANDLES);
        self.arm(&mut store);
        // The epoch deadline is a time slice: when it runs out, the guest yields its thread (a
        // long handler, or a long batch, must not starve the other tasks), and the call's own
        // deadline decides whether it may go on.
        let engine = module.engine().clone();
        store.epoch_deadline_callback(move |store| {
            let now = Instant::now();
            match store.data().deadline.get() {
                Some(deadline) if deadline > now => {
                    Ok(UpdateDeadline::Yield(slice_ticks(&engine, Some(deadline), now)))
                }
                _ => Err(Trap::Interrupt.into()),
            }
        });
        self.instantiations += 1;
        match bounded(&deadline, module.pre().instantiate(&mut store)).await {
            None => Err(Outcome::Timeout(format!("instantiation did not finish within {} ms", limits.call_timeout_ms))),
            Some(Err(error)) => Err(match classify(&error, store.data().memory.exceeded, limits) {
                Outcome::Trap(reason) => Outcome::Trap(format!("instantiation failed: {reason}")),
                other => other,
            }),
            Some(Ok(instance)) => {
                let born = Footprint::of(&store.data().memory);
                Ok(Live { store, instance, handled: 0, born })
            }
        }
    }
}

/// How long after a deadline a guest still waiting in a host call is cut off. The guest's own
/// paths end at the deadline itself (an epoch interrupt in guest code; a producer call's
/// timeout, which then lets the guest return its answer); this grace lets them win, so a call
/// is dropped only when nothing else would end it.
const CUT_OFF_GRACE: Duration = Duration::from_millis(50);

/// Runs a guest call until it returns, or `None` once `deadline` (which the call itself may move,
/// as a call's start does) is more than [`CUT_OFF_GRACE`] past: whatever the guest waits on (a
/// WASI clock's `block`, `poll` on a long timer, any host future), the call ends. Dropping the
/// call unwinds the guest's stack; its instance must not be used again.
async fn bounded<F: Future>(deadline: &Deadline, call: F) -> Option<F::Output> {
    let mut call = std::pin::pin!(call);
    loop {
        let Some(at) = deadline.get() else { return Some(call.await) };
        tokio::select! {
            biased;
            out = &mut call => return Some(out),
            () = tokio::time::sleep_until((at + CUT_OFF_GRACE).into()) => {
                if deadline.get().is_some_and(|d| d + CUT_OFF_GRACE <= Instant::now()) {
                    return None;
                }
            }
        }
    }
}

/// Epoch ticks until the next check: a slice, or what is left until `deadline` if that is
/// sooner (at least one tick).
fn slice_ticks(engine: &super::WasmEngine, deadline: Option<Instant>, now: Instant) -> u64 {
    let left = deadline.map_or(Duration::ZERO, |d| d.saturating_duration_since(now));
    engine.ticks_for(left).min(SLICE_TICKS)
}

/// The outcome of a call in which the guest reached its memory cap (a `memory.grow` refused) and
/// still answered: a `retry` or `reject` then may be the refused growth's doing rather than the
/// record's (SpiderMonkey reports the failed allocation as an exception; StarlingMonkey's
/// `TextDecoder.decode` as "Decoding failed", which a handler rejects as a malformed value), so
/// it is the `memory` outcome, which is retried on a new instance. An `ok` stands: the guest did
/// its work.
fn after_the_cap(outcome: Outcome, exceeded: bool, limits: &HandlerLimits) -> Outcome {
    let label = outcome.label();
    match outcome {
        Outcome::Retry(reason) | Outcome::Reject(reason) if exceeded => Outcome::Memory(format!(
            "the guest reached its memory cap of {} bytes during the call, then answered {label}: {reason}",
            limits.max_memory_bytes
        )),
        other => other,
    }
}

/// Turns a wasmtime error from a guest call into an outcome.
fn classify(error: &wasmtime::Error, memory_exceeded: bool, limits: &HandlerLimits) -> Outcome {
    let trap = error.downcast_ref::<Trap>().copied();
    if trap == Some(Trap::Interrupt) {
        return Outcome::Timeout(format!("the guest ran past the {} ms time limit", limits.call_timeout_ms));
    }
    if memory_exceeded {
        return Outcome::Memory(format!(
            "the guest needed more than its memory cap of {} bytes",
            limits.max_memory_bytes
        ));
    }
    match trap {
        Some(trap) => Outcome::Trap(trap.to_string()),
        None => Outcome::Trap(error.root_cause().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn memory(bytes: usize) -> Footprint {
        Footprint { memory_bytes: bytes, table_elements: 7744 }
    }

    #[test]
    fn an_instance_is_outgrown_past_half_the_room_it_was_made_with() {
        // A JavaScript instance is made with 9 MiB: past 36.5 MiB of a 64 MiB cap it is replaced.
        let js = memory(9 * MIB);
        assert!(!outgrown(js, memory(9 * MIB), 64 * MIB));
        assert!(!outgrown(js, memory(36 * MIB + MIB / 2), 64 * MIB));
        assert!(outgrown(js, memory(36 * MIB + MIB / 2 + 1), 64 * MIB));
        // A Python instance is made with 13 MiB: under a 16 MiB cap it is not replaced for what it
        // was made with, only for what it grows.
        let python = memory(13 * MIB);
        assert!(!outgrown(python, python, 16 * MIB));
        assert!(!outgrown(python, memory(14 * MIB + MIB / 2), 16 * MIB));
        assert!(outgrown(python, memory(15 * MIB), 16 * MIB));
        // Made at its cap: never outgrown (it cannot grow).
        assert!(!outgrown(memory(16 * MIB), memory(16 * MIB), 16 * MIB));
        // Tables count against their own cap.
        let tables = |n| Footprint { memory_bytes: MIB, table_elements: n };
        assert!(!outgrown(tables(0), tables(MAX_TABLE_ELEMENTS / 2), 64 * MIB));
        assert!(outgrown(tables(0), tables(MAX_TABLE_ELEMENTS / 2 + 1), 64 * MIB));
    }

    #[test]
    fn a_verdict_given_after_the_cap_was_reached_is_the_memory_outcome() {
        let limits = HandlerLimits::default();
        let reject = || Outcome::Reject("malformed value: TextDecoder.decode: Decoding failed.".into());
        assert_eq!(after_the_cap(reject(), false, &limits), reject(), "below the cap, the guest's verdict");
        match after_the_cap(reject(), true, &limits) {
            Outcome::Memory(reason) => {
                assert!(reason.contains("memory cap of 67108864 bytes"), "{reason}");
                assert!(
                    reason.ends_with("then answered reject: malformed value: TextDecoder.decode: Decoding failed.")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(after_the_cap(Outcome::Retry("later".into()), true, &limits), Outcome::Memory(_)));
        assert_eq!(after_the_cap(Outcome::Ok, true, &limits), Outcome::Ok, "the guest did its work");
    }
}
