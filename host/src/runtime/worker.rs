//! Runs records through a handler under its instance policy.
//!
//! A [`Worker`] belongs to one partition (or one CLI invocation) and handles one record at a time.
//! Under `reuse` it keeps one instance alive between records and recycles it after a sandbox
//! fault, after `recycle_after_records` records, or when the handler is swapped; under `fresh` it
//! instantiates for every record. Every path returns an [`Invocation`]: nothing a guest does can
//! make `invoke` fail or panic.
//!
//! A `packed-batch-handler` or `batch-handler` component under `reuse` can also take several
//! records in one call ([`Worker::invoke_batch`], packed with [`packed::pack`] for the former):
//! one entry into the sandbox for many records, with each record's outcome, calls and events
//! still its own; quick records without imports go in steps (`advance`) that share their time
//! and time limit.

use super::config::{HandlerLimits, InstancePolicy};
use super::module::{HandlerModule, Pre};
use super::packed;
use super::state::{Deadline, HostState, RecordTrace};
use crate::bindings::{BatchHandler, Handler, PackedBatchHandler};
use crate::producer_api::ProducerClient;
use crate::record::{Invocation, Outcome, Record};
use std::time::{Duration, Instant};
use wasmtime::{Store, Trap, UpdateDeadline};

/// An instance's exports, by the world its component targets.
enum Exports {
    Single(Handler),
    Batch(BatchHandler),
    Packed(PackedBatchHandler),
}

struct Live {
    store: Store<HostState>,
    exports: Exports,
    handled: u64,
}

/// What a batch came to.
#[derive(Debug)]
pub enum BatchInvocation {
    /// One invocation per record handled, in order; every one but the last is `ok`. The records
    /// after the last were not handled.
    Handled(Vec<Invocation>),
    /// The batch ended in a trap, a limit or a broken contract: nothing it did counts, and its
    /// records are to be handled one by one. Says why.
    Failed(String),
}

/// Epoch ticks a guest runs before it yields its thread to other tasks (and the record's own
/// deadline is checked): with the default 5 ms tick, every 10 ms.
const SLICE_TICKS: u64 = 2;

/// The most packing-buffer capacity a worker keeps between batches (one per partition; a batch
/// may take up to `max_batch_bytes`).
const KEEP_PACKED_BYTES: usize = 256 * 1024;

/// One partition's handler runner.
pub struct Worker {
    module: HandlerModule,
    producer: ProducerClient,
    live: Option<Live>,
    instantiations: u64,
    /// The module broke the batch contract: records go one by one until it is swapped.
    batches_off: bool,
    /// The buffer records are packed in for `handle-packed`, kept for its capacity.
    packed: Vec<u8>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("module", &self.module)
            .field("live", &self.live.is_some())
            .field("instantiations", &self.instantiations)
            .finish()
    }
}

impl Worker {
    /// A worker for `module`, calling the producer through `producer`.
    pub fn new(module: HandlerModule, producer: ProducerClient) -> Self {
        Self { module, producer, live: None, instantiations: 0, batches_off: false, packed: Vec::new() }
    }

    /// The handler this worker runs.
    pub fn module(&self) -> &HandlerModule {
        &self.module
    }

    /// Switches to another handler; the current instance is dropped, the next record gets a new one.
    pub fn swap(&mut self, module: HandlerModule) {
        self.module = module;
        self.live = None;
        self.batches_off = false;
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
            Err(outcome) => {
                return Invocation {
                    outcome,
                    events: Vec::new(),
                    calls: Vec::new(),
                    dropped: 0,
                    duration: started.elapsed(),
                };
            }
        };

        // The time limit: the epoch deadline interrupts guest code, and host calls get at most
        // the time left (so a call blocked on the producer ends at the deadline too). No timer
        // is armed per call.
        live.store.data_mut().begin(&record.topic, record.partition, record.offset, started);
        self.arm(&mut live.store);
        let deadline = live.store.data().ctx.deadline.clone();
        let called = bounded(&deadline, async {
            match &live.exports {
                Exports::Single(e) => e.call_handle(&mut live.store, record).await,
                Exports::Batch(e) => e.call_handle(&mut live.store, record).await,
                Exports::Packed(e) => e.call_handle(&mut live.store, record).await,
            }
        })
        .await;
        let outcome = match called {
            // Cut off while waiting in a host call: the instance is dropped below.
            None => Outcome::Timeout(format!(
                "the guest was still waiting in a host call at its {} ms time limit",
                limits.call_timeout_ms
            )),
            Some(_) if live.store.data().ctx.deadline_hit => {
                Outcome::Timeout(format!("a producer call reached the {} ms time limit", limits.call_timeout_ms))
            }
            Some(Ok(Ok(()))) => Outcome::Ok,
            Some(Ok(Err(error))) => Outcome::from(error),
            Some(Err(error)) => classify(&error, live.store.data().memory.exceeded, &limits),
        };

        let ctx = &mut live.store.data_mut().ctx;
        let events = std::mem::take(&mut ctx.events);
        let calls = std::mem::take(&mut ctx.calls);
        let dropped = ctx.dropped;
        live.handled += 1;
        let keep = limits.instance_policy == InstancePolicy::Reuse
            && !outcome.is_sandbox_fault()
            && live.handled < limits.recycle_after_records;
        if keep {
            self.live = Some(live);
        }
        Invocation { outcome, events, calls, dropped, duration: started.elapsed() }
    }

    /// Whether [`Worker::invoke_batch`] can take batches: a `packed-batch-handler` or
    /// `batch-handler` component under `reuse`, allowed more than one record per batch.
    pub fn takes_batches(&self) -> bool {
        let limits = self.module.limits();
        self.module.supports_batches()
            && !self.batches_off
            && limits.instance_policy == InstancePolicy::Reuse
            && limits.max_batch_records > 1
    }

    /// Runs `records` (consecutive records of one partition, in offset order) through the
    /// handler's `handle-packed` or `handle-batch` in one call. Each record has its own time
    /// limit, call and event caps and idempotency keys, as with [`Worker::invoke`]. When `stop` turns true, the batch
    /// ends at the next record boundary (the records handled so far are reported). Only for a
    /// worker that [`takes_batches`](Worker::takes_batches); otherwise the batch is reported failed.
    pub async fn invoke_batch(
        &mut self,
        records: &[Record],
        stop: Option<&tokio::sync::watch::Receiver<bool>>,
    ) -> BatchInvocation {
        let Some(first) = records.first() else { return BatchInvocation::Handled(Vec::new()) };
        if !self.takes_batches() {
            return BatchInvocation::Failed("the handler does not take batches".into());
        }
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
        // Packed before the call, so that packing is not charged to the first record's time.
        let packed = match &live.exports {
            Exports::Packed(_) => match packed::pack(records, std::mem::take(&mut self.packed)) {
                Ok(packed) => Some(packed),
                Err(e) => {
                    self.live = Some(live);
                    return BatchInvocation::Failed(format!("cannot pack the batch: {e}"));
                }
            },
            _ => None,
        };
        live.store.data_mut().begin_batch(
            &first.topic,
            first.partition,
            records.iter().map(|r| r.offset),
            stop.cloned(),
        );
        self.arm(&mut live.store);
        let deadline = live.store.data().ctx.deadline.clone();
        let (called, packed) = match (&live.exports, packed) {
            (Exports::Packed(exports), Some(packed)) => {
                (bounded(&deadline, exports.call_handle_packed(&mut live.store, &packed)).await, Some(packed))
            }
            (Exports::Batch(exports), _) => {
                (bounded(&deadline, exports.call_handle_batch(&mut live.store, records)).await, None)
            }
            _ => return BatchInvocation::Failed("the instance does not export a batch function".into()),
        };
        // Kept for the next batch, unless an unusually large batch grew it.
        if let Some(packed) = packed
            && packed.data.capacity() <= KEEP_PACKED_BYTES
        {
            self.packed = packed.data;
        }
        let Some(called) = called else {
            // Cut off while waiting in a host call: the instance is dropped, and the records
            // are redone one by one, each with its own limit.
            return BatchInvocation::Failed(format!(
                "in the step from record {} of {}: timeout: the guest was still waiting in a host call at its {} ms \
                 time limit",
                live.store.data().ctx.index + 1,
                records.len(),
                limits.call_timeout_ms
            ));
        };

        let state = live.store.data_mut();
        let deadline_hit = state.ctx.deadline_hit;
        let results = match called {
            Ok(results) => results,
            // A trap, the time limit or the memory cap, in the step that starts at this record.
            Err(error) => {
                let outcome = classify(&error, state.memory.exceeded, &limits);
                return BatchInvocation::Failed(format!(
                    "in the step from record {} of {}: {}: {}",
                    state.ctx.index + 1,
                    records.len(),
                    outcome.label(),
                    outcome.reason().unwrap_or_default()
                ));
            }
        };
        if state.ctx.events_over_budget {
            // The batch's records published more than one record may hold: redone one by one.
            return BatchInvocation::Failed(format!(
                "its records published more event bytes than one record may ({} events of {} bytes)",
                limits.max_events_per_record, limits.max_event_bytes
            ));
        }
        let traces = state.finish_batch(results.len(), Instant::now());
        let traces = match traces {
            Some(traces) if !results.iter().rev().skip(1).any(Result::is_err) => traces,
            _ => {
                // The instance is not trusted with another record, and the module not with
                // another batch: its records go one by one until the handler is swapped.
                self.batches_off = true;
                return BatchInvocation::Failed(format!(
                    "broken batch contract: {} results (of {} records) with record {} begun and up to {} allowed, \
                     errors only last",
                    results.len(),
                    records.len(),
                    state.ctx.index + 1,
                    state.ctx.ended_at.unwrap_or(state.ctx.step_end)
                ));
            }
        };
        let begun = traces.len();
        let invocations: Vec<Invocation> = results
            .into_iter()
            .zip(traces)
            .enumerate()
            .map(|(i, (result, trace))| {
                let outcome = match result {
                    _ if deadline_hit && i + 1 == begun => Outcome::Timeout(format!(
                        "the record reached the {} ms time limit in a host call",
                        limits.call_timeout_ms
                    )),
                    Ok(()) => Outcome::Ok,
                    Err(error) => Outcome::from(error),
                };
                let RecordTrace { calls, events, dropped, duration } = trace;
                Invocation { outcome, events, calls, dropped, duration }
            })
            .collect();
        live.handled += invocations.len() as u64;
        // As after a single record: an instance whose last record hit a limit is not reused.
        let faulted = invocations.last().is_some_and(|i| i.outcome.is_sandbox_fault());
        if !faulted && live.handled < limits.recycle_after_records {
            self.live = Some(live);
        }
        BatchInvocation::Handled(invocations)
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
        let ticks = slice_ticks(self.module.engine(), store.data().ctx.deadline.get(), Instant::now());
        store.set_epoch_deadline(ticks);
    }

    async fn instantiate(&mut self) -> Result<Live, Outcome> {
        let module = &self.module;
        let state = HostState::new(module.limits().clone(), self.producer.clone());
        // Instantiation (the guest's start code) runs under the same limit as a record.
        state.ctx.deadline.set(Some(Instant::now() + module.limits().call_timeout()));
        let deadline = state.ctx.deadline.clone();
        let mut store = Store::new(module.engine().engine(), state);
        store.limiter(|s| &mut s.memory);
        // What one call may hand the host, from the handler's limits (see `hostcall_bytes`).
        store.set_hostcall_fuel(module.limits().hostcall_bytes());
        store.set_max_component_handles(super::state::MAX_HANDLES);
        self.arm(&mut store);
        // The epoch deadline is a time slice: when it runs out, the guest yields its thread (a
        // long handler, or a long batch, must not starve the other tasks), and the record's own
        // deadline decides whether it may go on (in a batch the deadline restarts per record).
        let engine = module.engine().clone();
        store.epoch_deadline_callback(move |store| {
            let now = Instant::now();
            match store.data().ctx.deadline.get() {
                Some(deadline) if deadline > now => {
                    Ok(UpdateDeadline::Yield(slice_ticks(&engine, Some(deadline), now)))
                }
                _ => Err(Trap::Interrupt.into()),
            }
        });
        self.instantiations += 1;
        let limits = module.limits();
        let instantiating = async {
            match module.pre() {
                Pre::Single(pre) => pre.instantiate_async(&mut store).await.map(Exports::Single),
                Pre::Batch(pre) => pre.instantiate_async(&mut store).await.map(Exports::Batch),
                Pre::Packed(pre) => pre.instantiate_async(&mut store).await.map(Exports::Packed),
            }
        };
        let instantiated = bounded(&deadline, instantiating).await;
        match instantiated {
            None => Err(Outcome::Timeout(format!("instantiation did not finish within {} ms", limits.call_timeout_ms))),
            Some(Err(error)) => Err(match classify(&error, store.data().memory.exceeded, limits) {
                Outcome::Trap(reason) => Outcome::Trap(format!("instantiation failed: {reason}")),
                other => other,
            }),
            Some(Ok(exports)) => Ok(Live { store, exports, handled: 0 }),
        }
    }
}

/// How long after a deadline a guest still waiting in a host call is cut off. The guest's own
/// paths end at the deadline itself (an epoch interrupt in guest code; a producer call's
/// timeout, which then lets the guest return its answer); this grace lets them win, so a call
/// is dropped only when nothing else would end it.
const CUT_OFF_GRACE: Duration = Duration::from_millis(50);

/// Runs a guest call until it returns, or `None` once `deadline` (which the call itself may move,
/// as a batch's steps do) is more than [`CUT_OFF_GRACE`] past: whatever the guest waits on (a
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
