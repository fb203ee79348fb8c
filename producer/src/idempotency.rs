//! `Idempotency-Key` support: the first response to a key is remembered for a window, and a
//! repeat of the same request within it gets that response again, publishing nothing new.
//!
//! A key is in one of three states. *In progress*: its first request runs (a repeat is told so,
//! 409). *Done*: the response is remembered and replayed. *Failed*: the publish failed, or the
//! request was dropped while publishing, so the record may or may not be on the topic; the store
//! keeps the body that was being published, and a retry with the same key publishes that same
//! body again (at worst the topic then holds two identical copies, an ordinary at-least-once
//! repeat), never a new record.
//!
//! Bounds. An in-progress key is never evicted and never expires: its [`Guard`] settles it. A
//! settled key (done or failed) expires `window` after it settled, and the oldest settled keys are
//! evicted first when the store is full. The store never holds more than `max_keys` keys; when
//! in-progress keys alone fill it, a new key is refused ([`Begin::Full`]) until one settles.
//!
//! The store is in memory, so it is per instance: behind a load balancer, a repeat that reaches
//! another replica is not recognised.

use std::collections::{BTreeMap, HashMap};
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
    /// Held by a [`Guard`]; no expiry slot.
    InProgress,
    /// Settled: answered with this.
    Done(Stored),
    /// Settled: publishing `body` failed; a retry publishes it again.
    Failed { body: serde_json::Value },
}

#[derive(Debug)]
struct Entry {
    fingerprint: String,
    state: State,
    /// The entry's expiry slot in [`Inner::expiry`], while it is settled.
    slot: Option<Slot>,
}

/// When a settled entry settled, and a sequence number that breaks ties.
type Slot = (Instant, u64);

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// One slot per settled entry, oldest first; nothing else.
    expiry: BTreeMap<Slot, String>,
    in_progress: usize,
    next_seq: u64,
}

impl Inner {
    /// Gives the settled entry `key` its one expiry slot, dated `now`.
    fn settle(&mut self, key: &str, state: State, now: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let Some(entry) = self.entries.get_mut(key) else { return };
        if matches!(entry.state, State::InProgress) {
            self.in_progress -= 1;
        }
        if let Some(old) = entry.slot.replace((now, seq)) {
            self.expiry.remove(&old);
        }
        entry.state = state;
        self.expiry.insert((now, seq), key.to_string());
    }

    /// Forgets the in-progress entry `key`.
    fn forget(&mut self, key: &str) {
        if let Some(entry) = self.entries.remove(key) {
            if matches!(entry.state, State::InProgress) {
                self.in_progress -= 1;
            }
            if let Some(slot) = entry.slot {
                self.expiry.remove(&slot);
            }
        }
    }

    /// Removes the oldest settled entry, if its slot satisfies `evict`.
    fn pop_oldest_if(&mut self, evict: impl FnOnce(Slot) -> bool) -> bool {
        let Some(entry) = self.expiry.first_entry() else { return false };
        if !evict(*entry.key()) {
            return false;
        }
        let key = entry.remove();
        self.entries.remove(&key);
        true
    }
}

/// What to do with a request that carries a key.
#[derive(Debug)]
pub enum Begin {
    /// Run it, then [`Guard::complete`]. [`Guard::body`] is the body to publish again when an
    /// earlier attempt with this key failed.
    New(Guard),
    /// Seen before: answer with this.
    Replay(Stored),
    /// The first request with this key has not finished yet.
    InProgress,
    /// The key was used for a different request.
    Mismatch,
    /// In-progress keys fill the store: refuse a new key until one settles.
    Full,
}

/// The bounded store.
#[derive(Debug)]
pub struct IdempotencyStore {
    inner: Mutex<Inner>,
    window: Duration,
    max_keys: usize,
}

/// Holds an in-progress key while its request runs. [`Guard::complete`] remembers the response;
/// [`Guard::fail`] (or dropping the guard, as when the request is cancelled) keeps the body being
/// published, if any, as the key's failed attempt, and otherwise forgets the key.
#[derive(Debug)]
pub struct Guard {
    store: Arc<IdempotencyStore>,
    key: Option<String>,
    body: Option<serde_json::Value>,
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
        let mut guard = self.lock();
        let inner = &mut *guard;
        while inner.pop_oldest_if(|(settled, _)| now.saturating_duration_since(settled) >= self.window) {}
        if let Some(entry) = inner.entries.get_mut(key) {
            if entry.fingerprint != fingerprint {
                return Begin::Mismatch;
            }
            let earlier = match &mut entry.state {
                State::InProgress => return Begin::InProgress,
                State::Done(stored) => return Begin::Replay(stored.clone()),
                State::Failed { body } => std::mem::take(body),
            };
            entry.state = State::InProgress;
            if let Some(slot) = entry.slot.take() {
                inner.expiry.remove(&slot);
            }
            inner.in_progress += 1;
            return Begin::New(Guard { store: self.clone(), key: Some(key.to_string()), body: Some(earlier) });
        }
        if inner.in_progress >= self.max_keys {
            return Begin::Full;
        }
        // Room for one more: settled entries go, oldest first (there is one while the store is
        // full, since in-progress entries alone do not fill it).
        while inner.entries.len() >= self.max_keys && inner.pop_oldest_if(|_| true) {}
        inner.entries.insert(key.to_string(), Entry { fingerprint, state: State::InProgress, slot: None });
        inner.in_progress += 1;
        Begin::New(Guard { store: self.clone(), key: Some(key.to_string()), body: None })
    }

    /// Keys currently remembered (in progress and settled).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys whose first request is still running.
    pub fn in_progress(&self) -> usize {
        self.lock().in_progress
    }
}

impl Guard {
    /// The body this key's record has: the one an earlier, failed attempt was publishing (publish
    /// it again rather than a new one), or the one given to [`Guard::publishing`].
    pub fn body(&self) -> Option<&serde_json::Value> {
        self.body.as_ref()
    }

    /// Says that `body` is about to be published: from now on, a failure keeps it for the retry.
    pub fn publishing(&mut self, body: serde_json::Value) {
        self.body = Some(body);
    }

    /// Remembers `response` as the answer to this key, until `window` after `now`.
    pub fn complete(mut self, response: Stored, now: Instant) {
        if let Some(key) = self.key.take() {
            self.store.lock().settle(&key, State::Done(response), now);
        }
    }

    /// Ends the attempt without an answer at `now`: a body being published is kept as the key's
    /// failed attempt (until `window` after `now`); with none, the key is forgotten.
    pub fn fail(mut self, now: Instant) {
        self.abandon(now);
    }

    fn abandon(&mut self, now: Instant) {
        let Some(key) = self.key.take() else { return };
        let mut inner = self.store.lock();
        match self.body.take() {
            Some(body) => inner.settle(&key, State::Failed { body }, now),
            None => inner.forget(&key),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.abandon(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const WINDOW: Duration = Duration::from_secs(10);

    fn stored(n: u16) -> Stored {
        Stored { status: 201, body: json!({ "n": n }) }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn new(store: &Arc<IdempotencyStore>, key: &str, now: Instant) -> Guard {
        match store.begin(key, "f".into(), now) {
            Begin::New(guard) => guard,
            other => panic!("{key}: expected New, got {other:?}"),
        }
    }

    /// Every settled entry has exactly one slot, every slot is a settled entry's, and the
    /// in-progress count is the number of in-progress entries.
    fn assert_consistent(store: &IdempotencyStore) {
        let inner = store.lock();
        let settled: Vec<(&String, &Entry)> =
            inner.entries.iter().filter(|(_, e)| !matches!(e.state, State::InProgress)).collect();
        assert_eq!(inner.expiry.len(), settled.len(), "one slot per settled entry");
        for (key, entry) in &settled {
            let slot = entry.slot.expect("a settled entry has a slot");
            assert_eq!(inner.expiry.get(&slot), Some(*key), "its slot names it");
        }
        assert_eq!(inner.in_progress, inner.entries.len() - settled.len());
        assert!(inner.entries.values().filter(|e| matches!(e.state, State::InProgress)).all(|e| e.slot.is_none()));
        assert!(inner.entries.len() <= store.max_keys);
    }

    #[test]
    fn a_repeat_replays_the_first_response_within_the_window() {
        let store = IdempotencyStore::new(WINDOW, 100);
        let t0 = Instant::now();
        let guard = new(&store, "k", t0);
        assert!(matches!(store.begin("k", "f".into(), t0), Begin::InProgress));
        guard.complete(stored(1), t0);
        assert!(matches!(store.begin("k", "f".into(), t0), Begin::Replay(s) if s == stored(1)));
        assert!(matches!(store.begin("k", "other".into(), t0), Begin::Mismatch));
        assert!(matches!(store.begin("k", "f".into(), t0 + secs(11)), Begin::New(_)), "a key is new after the window");
        assert_consistent(&store);
    }

    #[test]
    fn a_request_that_fails_before_publishing_frees_its_key() {
        let store = IdempotencyStore::new(WINDOW, 100);
        let t0 = Instant::now();
        new(&store, "k", t0).fail(t0);
        assert!(store.is_empty());
        let guard = new(&store, "k", t0);
        assert!(guard.body().is_none(), "nothing to publish again");
        drop(guard);
        assert!(store.is_empty(), "dropping the guard before publishing forgets the key");
        assert_consistent(&store);
    }

    #[test]
    fn a_full_store_of_in_progress_keys_refuses_new_keys_and_evicts_none() {
        let store = IdempotencyStore::new(WINDOW, 3);
        let t0 = Instant::now();
        let guards: Vec<Guard> = (0..3).map(|i| new(&store, &format!("k{i}"), t0)).collect();
        assert!(matches!(store.begin("k3", "f".into(), t0), Begin::Full));
        assert!(matches!(store.begin("k3", "f".into(), t0 + secs(3600)), Begin::Full), "in-progress keys never expire");
        for i in 0..3 {
            assert!(matches!(store.begin(&format!("k{i}"), "f".into(), t0), Begin::InProgress), "k{i} is still held");
        }
        assert_eq!((store.len(), store.in_progress()), (3, 3));
        assert_consistent(&store);

        // One settles: the next new key evicts it (the only settled one), never an in-progress key.
        let mut guards = guards.into_iter();
        guards.next().expect("k0").complete(stored(0), t0);
        let k3 = new(&store, "k3", t0 + secs(1));
        assert!(matches!(store.begin("k0", "f".into(), t0 + secs(1)), Begin::Full), "k0 was evicted; no room again");
        for i in 1..3 {
            assert!(matches!(store.begin(&format!("k{i}"), "f".into(), t0), Begin::InProgress));
        }
        assert_consistent(&store);
        drop((k3, guards));
    }

    #[test]
    fn a_key_that_completes_after_eviction_pressure_is_remembered_and_still_expires() {
        let store = IdempotencyStore::new(WINDOW, 3);
        let t0 = Instant::now();
        let slow = new(&store, "slow", t0);
        // A flood of quick keys churns through the other two places while "slow" runs.
        for i in 0..50 {
            new(&store, &format!("q{i}"), t0 + secs(1)).complete(stored(i), t0 + secs(1));
            assert_consistent(&store);
        }
        assert_eq!(store.len(), 3);
        slow.complete(stored(99), t0 + secs(8));
        assert!(matches!(store.begin("slow", "f".into(), t0 + secs(9)), Begin::Replay(s) if s == stored(99)));
        assert_consistent(&store);
        // It is now the newest settled key: quick keys that settled earlier go first.
        new(&store, "next", t0 + secs(9)).complete(stored(100), t0 + secs(9));
        assert!(
            matches!(store.begin("slow", "f".into(), t0 + secs(9)), Begin::Replay(_)),
            "not evicted before older keys"
        );
        // And it leaves the store a window after it completed: it counts no more.
        assert!(matches!(store.begin("slow", "f".into(), t0 + secs(18)), Begin::New(_)));
        assert_consistent(&store);
    }

    #[test]
    fn a_completed_key_expires_a_window_after_it_completed_not_after_it_began() {
        let store = IdempotencyStore::new(WINDOW, 100);
        let t0 = Instant::now();
        new(&store, "k", t0).complete(stored(1), t0 + secs(8));
        assert!(matches!(store.begin("k", "f".into(), t0 + secs(17)), Begin::Replay(_)), "17 s after it began");
        assert!(matches!(store.begin("k", "f".into(), t0 + secs(18)), Begin::New(_)), "10 s after it completed");
        assert_consistent(&store);
    }

    #[test]
    fn a_flood_of_distinct_keys_keeps_the_store_bounded() {
        let max = 64;
        let store = IdempotencyStore::new(Duration::from_secs(600), max);
        let t0 = Instant::now();
        let mut held = Vec::new();
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_millis(i);
            match store.begin(&format!("k{i}"), "f".into(), now) {
                // Every tenth request hangs for a while; the rest complete or fail at once.
                Begin::New(guard) if i % 10 == 0 => held.push(guard),
                Begin::New(mut guard) if i % 10 == 1 => {
                    guard.publishing(json!({ "i": i }));
                    guard.fail(now);
                }
                Begin::New(guard) => guard.complete(stored(1), now),
                Begin::Full => {}
                other => panic!("k{i}: {other:?}"),
            }
            if held.len() > max / 2 {
                held.drain(..max / 4).for_each(|g| g.complete(stored(2), now));
            }
            assert!(store.len() <= max, "{} keys after k{i}", store.len());
        }
        assert_consistent(&store);
        assert!(matches!(store.begin("k9999", "f".into(), t0 + secs(10)), Begin::Replay(_)), "the newest key is kept");
        drop(held);
        assert_consistent(&store);
    }

    #[test]
    fn a_failed_key_is_retried_with_the_same_body_until_it_succeeds() {
        let store = IdempotencyStore::new(WINDOW, 100);
        let t0 = Instant::now();
        let body = json!({ "id": "0194", "created_at": "2026-11-30T00:00:00.000Z" });
        let mut first = new(&store, "k", t0);
        first.publishing(body.clone());
        first.fail(t0 + secs(1));
        assert_eq!(store.in_progress(), 0);
        assert_consistent(&store);

        // Another request with the same key is not a retry of this one.
        assert!(matches!(store.begin("k", "other".into(), t0 + secs(2)), Begin::Mismatch));
        // The retry gets the same body to publish again, and holds the key meanwhile.
        let second = new(&store, "k", t0 + secs(2));
        assert_eq!(second.body(), Some(&body));
        assert!(matches!(store.begin("k", "f".into(), t0 + secs(2)), Begin::InProgress));
        assert_consistent(&store);
        // Dropped mid-publish (the client went away): still the same body next time.
        drop(second);
        let third = new(&store, "k", t0 + secs(3));
        assert_eq!(third.body(), Some(&body));
        third.complete(Stored { status: 201, body: body.clone() }, t0 + secs(4));
        assert!(matches!(store.begin("k", "f".into(), t0 + secs(13)), Begin::Replay(s) if s.body == body));
        assert!(matches!(store.begin("k", "f".into(), t0 + secs(14)), Begin::New(g) if g.body().is_none()));
        assert_consistent(&store);
    }

    #[test]
    fn a_failed_key_is_forgotten_a_window_after_it_failed() {
        let store = IdempotencyStore::new(WINDOW, 100);
        let t0 = Instant::now();
        let mut guard = new(&store, "k", t0);
        guard.publishing(json!(1));
        guard.fail(t0);
        assert!(matches!(store.begin("k", "f".into(), t0 + secs(9)), Begin::New(g) if g.body() == Some(&json!(1))));
        // That retry was dropped at t0 + 9 s (Instant::now() at the latest): a window later, new.
        assert!(matches!(store.begin("k", "f".into(), Instant::now() + WINDOW), Begin::New(g) if g.body().is_none()));
        assert_consistent(&store);
    }
}
