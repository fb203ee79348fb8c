//! `Idempotency-Key` support: the first response to a key is remembered for a window, and a
//! repeat of the same request within it gets that response again, publishing nothing new.
//!
//! The store is in memory and bounded (oldest keys are evicted first), so it is per instance:
//! behind a load balancer, a repeat that reaches another replica is not recognised.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A remembered response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: serde_json::Value,
}

#[derive(Debug)]
enum State {
    InProgress,
    Done(Stored),
}

#[derive(Debug)]
struct Entry {
    fingerprint: String,
    state: State,
    at: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    order: VecDeque<(String, Instant)>,
}

/// What to do with a request that carries a key.
#[derive(Debug)]
pub enum Begin {
    /// First time: run it, then [`Guard::complete`].
    New(Guard),
    /// Seen before: answer with this.
    Replay(Stored),
    /// The first request with this key has not finished yet.
    InProgress,
    /// The key was used for a different request.
    Mismatch,
}

/// The bounded store.
#[derive(Debug)]
pub struct IdempotencyStore {
    inner: Mutex<Inner>,
    window: Duration,
    max_keys: usize,
}

/// Holds a key while its first request runs; dropping it without completing forgets the key, so
/// a failed request can be retried with the same key.
#[derive(Debug)]
pub struct Guard {
    store: Arc<IdempotencyStore>,
    key: Option<String>,
}

impl IdempotencyStore {
    /// A store remembering keys for `window`, at most `max_keys` of them.
    pub fn new(window: Duration, max_keys: usize) -> Arc<Self> {
        Arc::new(Self { inner: Mutex::default(), window, max_keys: max_keys.max(1) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a request with `key`; `fingerprint` identifies the request (route and body).
    pub fn begin(self: &Arc<Self>, key: &str, fingerprint: String, now: Instant) -> Begin {
        let mut inner = self.lock();
        // Expire and evict from the oldest end. `order` may hold stale pairs for keys that were
        // removed or re-inserted; an entry is only dropped when its own timestamp matches.
        while let Some((k, at)) = inner.order.front().cloned() {
            let expired = now.duration_since(at) >= self.window;
            let full = inner.entries.len() >= self.max_keys;
            let stale = inner.entries.get(&k).is_none_or(|e| e.at != at);
            if !(stale || expired || full) {
                break;
            }
            inner.order.pop_front();
            if !stale && !matches!(inner.entries.get(&k).map(|e| &e.state), Some(State::InProgress)) {
                inner.entries.remove(&k);
            }
        }
        if let Some(entry) = inner.entries.get(key) {
            return if entry.fingerprint != fingerprint {
                Begin::Mismatch
            } else {
                match &entry.state {
                    State::InProgress => Begin::InProgress,
                    State::Done(stored) => Begin::Replay(stored.clone()),
                }
            };
        }
        inner.entries.insert(key.to_string(), Entry { fingerprint, state: State::InProgress, at: now });
        inner.order.push_back((key.to_string(), now));
        Begin::New(Guard { store: self.clone(), key: Some(key.to_string()) })
    }

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Guard {
    /// Remembers `response` as the answer to this key.
    pub fn complete(mut self, response: Stored) {
        if let Some(key) = self.key.take() {
            let mut inner = self.store.lock();
            if let Some(entry) = inner.entries.get_mut(&key) {
                entry.state = State::Done(response);
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.store.lock().entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(n: u16) -> Stored {
        Stored { status: n, body: serde_json::json!({"n": n}) }
    }

    #[test]
    fn a_repeat_replays_the_first_response_within_the_window() {
        let store = IdempotencyStore::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        let Begin::New(guard) = store.begin("k", "f".into(), t0) else { panic!("new") };
        assert!(matches!(store.begin("k", "f".into(), t0), Begin::InProgress));
        guard.complete(stored(201));
        assert!(matches!(store.begin("k", "f".into(), t0), Begin::Replay(s) if s == stored(201)));
        assert!(matches!(store.begin("k", "other".into(), t0), Begin::Mismatch));
        assert!(matches!(store.begin("k", "f".into(), t0 + Duration::from_secs(11)), Begin::New(_)));
    }

    #[test]
    fn a_failed_request_frees_its_key() {
        let store = IdempotencyStore::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        drop(store.begin("k", "f".into(), t0));
        assert!(matches!(store.begin("k", "f".into(), t0), Begin::New(_)));
    }

    #[test]
    fn the_store_is_bounded() {
        let store = IdempotencyStore::new(Duration::from_secs(600), 3);
        let t0 = Instant::now();
        for i in 0..10 {
            if let Begin::New(g) = store.begin(&format!("k{i}"), "f".into(), t0) {
                g.complete(stored(201));
            }
        }
        assert!(store.len() <= 3, "{} keys kept", store.len());
        assert!(matches!(store.begin("k9", "f".into(), t0), Begin::Replay(_)), "the newest key is kept");
    }
}
