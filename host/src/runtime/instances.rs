//! The host-wide budget of instances (`MAX_INSTANCES`): every record in flight, on every
//! partition, runs on a [`Worker`] leased from here, so an instance never serves two records at
//! once and all partitions together hold at most the budget. At the cap, a record waits for a
//! worker to come back; a lease always ends (a call ends at its time limit), so a wait does too.
//!
//! A worker that comes back stays idle with its instance, for the next record of the same
//! handler (an instance is reused, not made anew for every record). A record of another handler
//! takes the longest-idle worker and swaps its handler (its instance is dropped), so idle
//! workers of a quiet topic never keep a busy one waiting.

use super::module::HandlerModule;
use super::worker::Worker;
use crate::metrics::ReasonLabels;
use crate::producer_api::ProducerClient;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// The budget and its idle workers.
#[derive(Debug)]
pub struct Instances {
    max: usize,
    state: Mutex<State>,
    returned: Notify,
    producer: ProducerClient,
    busy: Gauge,
    idle: Gauge,
    recycled: Family<ReasonLabels, Counter>,
}

#[derive(Debug, Default)]
struct State {
    /// Workers that may still be made.
    unmade: usize,
    /// Workers serving no record, the longest idle first.
    idle: std::collections::VecDeque<Worker>,
    /// Records waiting for a worker.
    waiting: usize,
}

impl Instances {
    /// A budget of `max` workers (at least 1), calling the producer through `producer`; `busy`
    /// and `idle` are set to the workers serving a record and those kept idle; `recycled` counts
    /// the instances workers drop after a call, by reason.
    pub fn new(
        max: usize,
        producer: ProducerClient,
        busy: Gauge,
        idle: Gauge,
        recycled: Family<ReasonLabels, Counter>,
    ) -> Arc<Self> {
        let max = max.max(1);
        let state = Mutex::new(State { unmade: max, ..State::default() });
        Arc::new(Self { max, state, returned: Notify::new(), producer, busy, idle, recycled })
    }

    /// The budget.
    pub fn max(&self) -> usize {
        self.max
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A worker running `module`, as soon as the budget allows.
    pub async fn lease(self: &Arc<Self>, module: &HandlerModule) -> Lease {
        if let Some(worker) = self.try_take(module) {
            return self.leased(worker);
        }
        let _waiting = Waiting::new(self);
        loop {
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(worker) = self.try_take(module) {
                return self.leased(worker);
            }
            returned.await;
        }
    }

    /// A worker for `module` without waiting: an idle one that runs it, a new one, or the
    /// longest-idle one swapped to it.
    fn try_take(&self, module: &HandlerModule) -> Option<Worker> {
        let mut state = self.lock();
        let worker = if let Some(i) = state.idle.iter().rposition(|w| w.module().same_load(module)) {
            state.idle.remove(i)
        } else if state.unmade > 0 {
            state.unmade -= 1;
            let mut worker = Worker::new(module.clone(), self.producer.clone());
            worker.count_recycled_in(self.recycled.clone());
            Some(worker)
        } else {
            state.idle.pop_front().map(|mut w| {
                w.swap(module.clone());
                w
            })
        };
        drop(state);
        if worker.is_some() {
            self.busy.inc();
            self.idle.set(self.lock().idle.len() as i64);
        }
        worker
    }

    fn leased(self: &Arc<Self>, worker: Worker) -> Lease {
        Lease { worker: Some(worker), instances: self.clone() }
    }

    /// Takes a worker back, kept idle with its instance (a worker whose call was dropped midway
    /// holds none: the call owned it).
    fn give_back(&self, worker: Worker) {
        let mut state = self.lock();
        state.idle.push_back(worker);
        let (idle, waiting) = (state.idle.len(), state.waiting);
        drop(state);
        self.busy.dec();
        self.idle.set(idle as i64);
        if waiting > 0 {
            self.returned.notify_one();
        }
    }
}

/// Counts a record waiting for a worker while it waits (also when its wait is dropped).
struct Waiting<'a>(&'a Instances);

impl<'a> Waiting<'a> {
    fn new(instances: &'a Instances) -> Self {
        instances.lock().waiting += 1;
        Self(instances)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

/// A worker leased for one record (or one batch); it goes back to the budget when dropped.
#[derive(Debug)]
pub struct Lease {
    worker: Option<Worker>,
    instances: Arc<Instances>,
}

impl Lease {
    /// The worker.
    pub fn worker(&mut self) -> &mut Worker {
        self.worker.as_mut().expect("a lease holds its worker until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            self.instances.give_back(worker);
        }
    }
}
