//! Runs records through a handler under its instance policy.
//!
//! A [`Worker`] belongs to one partition (or one CLI invocation) and handles one record at a time.
//! Under `reuse` it keeps one instance alive between records and recycles it after a sandbox
//! fault, after `recycle_after_records` records, or when the handler is swapped; under `fresh` it
//! instantiates for every record. Every path returns an [`Invocation`]: nothing a guest does can
//! make `invoke` fail or panic.

use super::config::{HandlerLimits, InstancePolicy};
use super::module::HandlerModule;
use super::state::HostState;
use crate::bindings::Handler;
use crate::bindings::types::HandlerError;
use crate::producer_api::ProducerClient;
use crate::record::{Invocation, Outcome, Record};
use std::time::Instant;
use wasmtime::{Store, Trap};

struct Live {
    store: Store<HostState>,
    bindings: Handler,
    handled: u64,
}

/// One partition's handler runner.
pub struct Worker {
    module: HandlerModule,
    producer: ProducerClient,
    live: Option<Live>,
    instantiations: u64,
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
        Self { module, producer, live: None, instantiations: 0 }
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
        let deadline = limits.call_timeout();
        let ticks = self.module.engine().ticks_for(deadline);

        let live = match self.live.take() {
            Some(live) => Ok(live),
            None => self.instantiate(ticks).await,
        };
        let mut live = match live {
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
        live.store.data_mut().begin(&record.topic, record.partition, record.offset, started + deadline);
        live.store.set_epoch_deadline(ticks);
        let outcome = match live.bindings.call_handle(&mut live.store, record).await {
            _ if live.store.data().ctx.deadline_hit => {
                Outcome::Timeout(format!("a producer call reached the {} ms time limit", limits.call_timeout_ms))
            }
            Ok(Ok(())) => Outcome::Ok,
            Ok(Err(HandlerError::Retry(reason))) => Outcome::Retry(reason),
            Ok(Err(HandlerError::Reject(reason))) => Outcome::Reject(reason),
            Err(error) => classify(&error, live.store.data().memory.exceeded, &limits),
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

    async fn instantiate(&mut self, ticks: u64) -> Result<Live, Outcome> {
        let module = &self.module;
        let state = HostState::new(module.limits().clone(), self.producer.clone());
        let mut store = Store::new(module.engine().engine(), state);
        store.limiter(|s| &mut s.memory);
        store.set_epoch_deadline(ticks);
        self.instantiations += 1;
        let limits = module.limits();
        let instantiated =
            tokio::time::timeout(limits.call_timeout(), module.pre().instantiate_async(&mut store)).await;
        match instantiated {
            Err(_) => {
                Err(Outcome::Timeout(format!("instantiation did not finish within {} ms", limits.call_timeout_ms)))
            }
            Ok(Err(error)) => Err(match classify(&error, store.data().memory.exceeded, limits) {
                Outcome::Trap(reason) => Outcome::Trap(format!("instantiation failed: {reason}")),
                other => other,
            }),
            Ok(Ok(bindings)) => Ok(Live { store, bindings, handled: 0 }),
        }
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
