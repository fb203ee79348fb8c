//! The set of handlers the host runs: per topic, the active handler (swapped whole, never edited)
//! and its status for `/handlers`. Partition workers read the active handler before every record,
//! so a swap takes effect between records and no record sees a half-loaded module.

use crate::config::HandlerSettings;
use crate::record::Outcome;
#[cfg(feature = "native-handlers")]
use crate::record::{Invocation, Record};
use crate::runtime::HandlerModule;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// Handler logic compiled into the host, for benchmarks that compare the sandbox with native code
/// through the same pipeline (feature `native-handlers`, never in production builds). Production
/// handlers are components.
#[cfg(feature = "native-handlers")]
#[derive(Clone)]
pub struct NativeHandler {
    name: String,
    logic: Arc<dyn Fn(&Record) -> Outcome + Send + Sync>,
}

#[cfg(feature = "native-handlers")]
impl std::fmt::Debug for NativeHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeHandler").field("name", &self.name).finish_non_exhaustive()
    }
}

#[cfg(feature = "native-handlers")]
impl NativeHandler {
    /// A native handler named `name` (shown as `native:<name>` where a digest would be).
    pub fn new(name: &str, logic: impl Fn(&Record) -> Outcome + Send + Sync + 'static) -> Self {
        Self { name: format!("native:{name}"), logic: Arc::new(logic) }
    }

    /// Runs the logic on `record`.
    pub fn invoke(&self, record: &Record) -> Invocation {
        let started = std::time::Instant::now();
        let outcome = (self.logic)(record);
        Invocation {
            outcome,
            events: Vec::new(),
            calls: Vec::new(),
            dropped: 0,
            duration: started.elapsed(),
            stderr: None,
        }
    }

    /// Runs the logic on each of `records`, in order, as a batch handler does: one invocation
    /// per record.
    pub fn invoke_batch(&self, records: &[Record]) -> Vec<Invocation> {
        records.iter().map(|record| self.invoke(record)).collect()
    }
}

/// What runs a topic's records.
#[derive(Debug, Clone)]
pub enum HandlerCode {
    /// A sandboxed component (the normal case).
    Wasm(HandlerModule),
    /// Native logic (benchmarks).
    #[cfg(feature = "native-handlers")]
    Native(NativeHandler),
}

impl HandlerCode {
    /// The component's `sha256:<hex>`, or `native:<name>`.
    pub fn digest(&self) -> &str {
        match self {
            Self::Wasm(module) => module.digest(),
            #[cfg(feature = "native-handlers")]
            Self::Native(native) => &native.name,
        }
    }

    /// Whether `self` and `other` are the same load of the same code (the same component under
    /// the same limits, or the same native logic), so an outcome of one stands for the other.
    pub fn same_code(&self, other: &HandlerCode) -> bool {
        match (self, other) {
            (Self::Wasm(a), Self::Wasm(b)) => a.same_load(b),
            #[cfg(feature = "native-handlers")]
            (Self::Native(a), Self::Native(b)) => Arc::ptr_eq(&a.logic, &b.logic),
            #[cfg(feature = "native-handlers")]
            _ => false,
        }
    }
}

/// A loaded handler, ready to run.
#[derive(Debug)]
pub struct ActiveHandler {
    /// What runs the records.
    pub code: HandlerCode,
    /// Limits and retry policy.
    pub settings: HandlerSettings,
    /// The file it was loaded from.
    pub file: PathBuf,
    /// When it was loaded, RFC 3339.
    pub loaded_at: String,
}

/// Per-topic counters that survive handler swaps.
#[derive(Debug, Default)]
pub struct TopicCounters {
    /// Handler calls by outcome: ok, retry, reject, trap, timeout, memory.
    pub outcomes: [AtomicU64; 6],
    /// Records dead-lettered.
    pub dead_lettered: AtomicU64,
    /// Records handed to the retry topic.
    pub sent_to_retry: AtomicU64,
    /// Successful loads.
    pub loads: AtomicU64,
    /// Rejected loads.
    pub rejected_loads: AtomicU64,
}

const OUTCOMES: [&str; 6] = Outcome::LABELS;

impl TopicCounters {
    /// Counts one handler call.
    pub fn count(&self, outcome: &Outcome) {
        self.outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// What `/handlers` shows for one topic.
#[derive(Debug, Clone, Serialize)]
pub struct HandlerStatus {
    /// The topic.
    pub topic: String,
    /// `active`, `rejected` (no valid handler) or `removed`.
    pub state: &'static str,
    /// The handler file.
    pub file: Option<String>,
    /// `sha256:<hex>` of the active component.
    pub sha256: Option<String>,
    /// When the active component was loaded.
    pub loaded_at: Option<String>,
    /// The last load error, if the last load failed.
    pub last_error: Option<String>,
    /// When that error happened.
    pub last_error_at: Option<String>,
    /// How the active handler's records are ordered (`key`, `partition`, `none`).
    pub ordering: Option<&'static str>,
    /// Records of one partition the active handler may have in flight.
    pub max_in_flight: Option<u32>,
    /// Counters.
    pub counters: BTreeMap<&'static str, u64>,
    /// Partitions of the topic (or of its retry topic) that cannot move on right now, with
    /// since when and why (filled in by the HTTP route from the pipeline's health).
    pub stalled: Vec<crate::pipeline::Stall>,
}

#[derive(Debug)]
struct Slot {
    active: Option<Arc<ActiveHandler>>,
    removed: bool,
    last_error: Option<(String, String)>,
    counters: Arc<TopicCounters>,
}

/// The handler set.
#[derive(Debug)]
pub struct Registry {
    slots: RwLock<BTreeMap<String, Slot>>,
    topics: watch::Sender<Vec<String>>,
    /// Bumped on every install and removal, so readers can keep what they looked up until it
    /// changes (one atomic load per record instead of a lock and a map lookup).
    generation: AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Self { slots: RwLock::default(), topics: watch::channel(Vec::new()).0, generation: AtomicU64::new(0) }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Registry {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Slot>> {
        self.slots.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Slot>> {
        self.slots.write().unwrap_or_else(|e| e.into_inner())
    }

    fn slot<'a>(slots: &'a mut BTreeMap<String, Slot>, topic: &str) -> &'a mut Slot {
        slots.entry(topic.to_string()).or_insert_with(|| Slot {
            active: None,
            removed: false,
            last_error: None,
            counters: Arc::default(),
        })
    }

    fn publish_topics(&self, slots: &BTreeMap<String, Slot>) {
        let topics: Vec<String> = slots.iter().filter(|(_, s)| s.active.is_some()).map(|(t, _)| t.clone()).collect();
        self.topics.send_if_modified(|current| {
            let changed = *current != topics;
            *current = topics;
            changed
        });
    }

    /// The active handler of `topic`.
    pub fn get(&self, topic: &str) -> Option<Arc<ActiveHandler>> {
        self.read().get(topic).and_then(|s| s.active.clone())
    }

    /// The current generation: it changes whenever any topic's handler is installed or removed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The active handler of `topic`, looked up again only when the registry changed since
    /// `cache` was filled.
    pub fn get_cached(
        &self,
        topic: &str,
        cache: &mut Option<(u64, Option<Arc<ActiveHandler>>)>,
    ) -> Option<Arc<ActiveHandler>> {
        let generation = self.generation();
        match cache {
            Some((seen, handler)) if *seen == generation => handler.clone(),
            _ => {
                // Read the generation before the lookup: a change in between makes the next
                // call look up again.
                let handler = self.get(topic);
                *cache = Some((generation, handler.clone()));
                handler
            }
        }
    }

    /// The counters of `topic`.
    pub fn counters(&self, topic: &str) -> Arc<TopicCounters> {
        if let Some(slot) = self.read().get(topic) {
            return slot.counters.clone();
        }
        Self::slot(&mut self.write(), topic).counters.clone()
    }

    /// Makes `handler` the active handler of `topic`.
    pub fn install(&self, topic: &str, handler: ActiveHandler) {
        let mut slots = self.write();
        let slot = Self::slot(&mut slots, topic);
        slot.counters.loads.fetch_add(1, Ordering::Relaxed);
        slot.active = Some(Arc::new(handler));
        slot.removed = false;
        slot.last_error = None;
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.publish_topics(&slots);
    }

    /// Records a rejected load; the active handler, if any, stays.
    pub fn reject(&self, topic: &str, error: String) {
        let mut slots = self.write();
        let slot = Self::slot(&mut slots, topic);
        slot.counters.rejected_loads.fetch_add(1, Ordering::Relaxed);
        slot.last_error = Some((error, now()));
    }

    /// Stops `topic`: its handler file is gone.
    pub fn remove(&self, topic: &str) {
        let mut slots = self.write();
        if let Some(slot) = slots.get_mut(topic) {
            slot.active = None;
            slot.removed = true;
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.publish_topics(&slots);
    }

    /// Topics with an active handler.
    pub fn active_topics(&self) -> Vec<String> {
        self.topics.borrow().clone()
    }

    /// Notified whenever the set of active topics changes.
    pub fn watch_topics(&self) -> watch::Receiver<Vec<String>> {
        self.topics.subscribe()
    }

    /// The status of every topic the host has seen a handler file for.
    pub fn statuses(&self) -> Vec<HandlerStatus> {
        self.read()
            .iter()
            .filter(|(_, s)| s.active.is_some() || s.removed || s.last_error.is_some())
            .map(|(topic, s)| {
                let c = &s.counters;
                let mut counters: BTreeMap<&'static str, u64> =
                    OUTCOMES.iter().zip(&c.outcomes).map(|(name, n)| (*name, n.load(Ordering::Relaxed))).collect();
                counters.insert("dead_lettered", c.dead_lettered.load(Ordering::Relaxed));
                counters.insert("sent_to_retry", c.sent_to_retry.load(Ordering::Relaxed));
                counters.insert("loads", c.loads.load(Ordering::Relaxed));
                counters.insert("rejected_loads", c.rejected_loads.load(Ordering::Relaxed));
                HandlerStatus {
                    topic: topic.clone(),
                    state: match (&s.active, s.removed) {
                        (Some(_), _) => "active",
                        (None, true) => "removed",
                        (None, false) => "rejected",
                    },
                    file: s.active.as_ref().map(|a| a.file.display().to_string()),
                    sha256: s.active.as_ref().map(|a| a.code.digest().to_string()),
                    loaded_at: s.active.as_ref().map(|a| a.loaded_at.clone()),
                    last_error: s.last_error.as_ref().map(|e| e.0.clone()),
                    last_error_at: s.last_error.as_ref().map(|e| e.1.clone()),
                    ordering: s.active.as_ref().map(|a| a.settings.concurrency.ordering.as_str()),
                    max_in_flight: s.active.as_ref().map(|a| a.settings.concurrency.max_in_flight),
                    counters,
                    stalled: Vec::new(),
                }
            })
            .collect()
    }
}
