//! The bookkeeping of a partition whose records are handled side by side: which record may start
//! ([`Lanes`]: one at a time per key, at most `max_in_flight` taken at once) and which offset may
//! be committed ([`Offsets`]: the first one whose outcome is not final). Pure: the partition task
//! does the work, these decide.

use crate::config::Ordering;
use std::collections::{BTreeSet, HashMap, VecDeque};

/// What a record is ordered by: its key, or nothing when it need not wait for any other.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Records of this key (`None`: records without a key) go one after another.
    Key(Option<Vec<u8>>),
    /// The whole partition goes one record at a time.
    Partition,
    /// No order.
    Free,
}

impl Lane {
    /// The lane of a record with `key` under `ordering`.
    pub fn of(ordering: Ordering, key: Option<&[u8]>) -> Self {
        match ordering {
            Ordering::Key => Lane::Key(key.map(<[u8]>::to_vec)),
            Ordering::Partition => Lane::Partition,
            Ordering::None => Lane::Free,
        }
    }
}

/// Which taken records may run: at most one per lane (but in the free lane) and at most
/// `max_in_flight` taken (running or waiting for their lane) at once. Items are whatever the
/// partition hands over (records); `T` is kept in the order it was taken.
#[derive(Debug)]
pub struct Lanes<T> {
    max_in_flight: usize,
    taken: usize,
    /// Per busy lane, the items waiting behind the one that runs.
    waiting: HashMap<Lane, VecDeque<T>>,
}

impl<T> Lanes<T> {
    /// Lanes that take at most `max_in_flight` items at once (at least 1).
    pub fn new(max_in_flight: usize) -> Self {
        Self { max_in_flight: max_in_flight.max(1), taken: 0, waiting: HashMap::new() }
    }

    /// Whether another item may be taken from the partition now.
    pub fn has_room(&self) -> bool {
        self.taken < self.max_in_flight
    }

    /// Items taken and not finished (running, or waiting for their lane).
    pub fn taken(&self) -> usize {
        self.taken
    }

    /// Takes `item` in `lane`: `Some(item)` when it may run now, `None` when it waits behind
    /// the one that runs in its lane (it comes back from [`Lanes::finish`]).
    pub fn take(&mut self, lane: Lane, item: T) -> Option<T> {
        self.taken += 1;
        if lane == Lane::Free {
            return Some(item);
        }
        match self.waiting.get_mut(&lane) {
            Some(queue) => {
                queue.push_back(item);
                None
            }
            None => {
                self.waiting.insert(lane, VecDeque::new());
                Some(item)
            }
        }
    }

    /// The item that ran in `lane` is finished: the next one of its lane, to run now, if any.
    pub fn finish(&mut self, lane: &Lane) -> Option<T> {
        self.taken = self.taken.saturating_sub(1);
        if *lane == Lane::Free {
            return None;
        }
        let queue = self.waiting.get_mut(lane)?;
        match queue.pop_front() {
            Some(next) => Some(next),
            None => {
                self.waiting.remove(lane);
                None
            }
        }
    }

    /// The item that ran in `lane` was abandoned (told to stop): so are the items waiting
    /// behind it, which never started (its key's order would break if they ran). Returns them.
    pub fn abandon(&mut self, lane: &Lane) -> Vec<T> {
        self.taken = self.taken.saturating_sub(1);
        let waiting: Vec<T> = self.waiting.remove(lane).map(Vec::from).unwrap_or_default();
        self.taken = self.taken.saturating_sub(waiting.len());
        waiting
    }

    /// Changes how many items may be taken at once (a handler's settings were reloaded); items
    /// already taken stay.
    pub fn set_max_in_flight(&mut self, max_in_flight: usize) {
        self.max_in_flight = max_in_flight.max(1);
    }
}

/// The offsets taken from a partition and not final yet, so that the offset committed is always
/// the first one whose outcome is not final.
#[derive(Debug, Default)]
pub struct Offsets {
    open: BTreeSet<i64>,
    /// One past the highest offset taken.
    next: Option<i64>,
}

impl Offsets {
    /// `offset` was taken from the partition (in offset order).
    pub fn take(&mut self, offset: i64) {
        self.open.insert(offset);
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// `offset`'s outcome is final: the offset that may now be committed (every offset before
    /// it is final), if any was taken.
    pub fn finish(&mut self, offset: i64) -> Option<i64> {
        self.open.remove(&offset);
        self.committable()
    }

    /// The first offset whose outcome is not final (one past the last taken when all are).
    pub fn committable(&self) -> Option<i64> {
        self.open.first().copied().or(self.next)
    }

    /// Offsets taken and not final.
    pub fn open(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Lane {
        Lane::of(Ordering::Key, Some(k.as_bytes()))
    }

    #[test]
    fn records_of_one_key_wait_for_each_other_and_other_keys_do_not() {
        let mut lanes = Lanes::new(8);
        assert_eq!(lanes.take(key("a"), 1), Some(1));
        assert_eq!(lanes.take(key("b"), 2), Some(2), "another key runs at once");
        assert_eq!(lanes.take(key("a"), 3), None, "a's second record waits");
        assert_eq!(lanes.take(key("a"), 4), None);
        assert_eq!(lanes.take(Lane::of(Ordering::Key, None), 5), Some(5), "records without a key: a key of their own");
        assert_eq!(lanes.take(Lane::of(Ordering::Key, None), 6), None);
        assert_eq!(lanes.finish(&key("b")), None);
        assert_eq!(lanes.finish(&key("a")), Some(3), "a's records in the order taken");
        assert_eq!(lanes.finish(&key("a")), Some(4));
        assert_eq!(lanes.finish(&key("a")), None);
        assert_eq!(lanes.take(key("a"), 7), Some(7), "a is free again");
        assert_eq!(lanes.taken(), 3, "5 and 7 run, 6 waits");
    }

    #[test]
    fn at_most_max_in_flight_are_taken_waiting_ones_included() {
        let mut lanes = Lanes::new(2);
        assert!(lanes.has_room());
        lanes.take(key("a"), 1);
        lanes.take(key("a"), 2);
        assert!(!lanes.has_room(), "a waiting record counts: a hot key cannot take the whole partition");
        assert_eq!(lanes.finish(&key("a")), Some(2));
        assert!(lanes.has_room());
    }

    #[test]
    fn partition_ordering_runs_one_record_at_a_time_and_none_runs_all() {
        let mut lanes = Lanes::new(8);
        assert_eq!(lanes.take(Lane::of(Ordering::Partition, Some(b"a")), 1), Some(1));
        assert_eq!(lanes.take(Lane::of(Ordering::Partition, Some(b"b")), 2), None);
        assert_eq!(lanes.finish(&Lane::Partition), Some(2));
        let mut free = Lanes::new(8);
        for i in 0..8 {
            assert_eq!(free.take(Lane::of(Ordering::None, Some(b"a")), i), Some(i));
        }
        assert!(!free.has_room());
    }

    #[test]
    fn an_abandoned_record_takes_the_records_behind_it_in_its_key_along() {
        let mut lanes = Lanes::new(8);
        lanes.take(key("a"), 1);
        lanes.take(key("a"), 2);
        lanes.take(key("a"), 3);
        lanes.take(key("b"), 4);
        lanes.take(key("b"), 5);
        assert_eq!(lanes.abandon(&key("a")), vec![2, 3], "never started: they must not run before 1 runs again");
        assert_eq!(lanes.taken(), 2, "b's records are still taken");
        assert_eq!(lanes.finish(&key("b")), Some(5));
        assert_eq!(lanes.take(key("a"), 6), Some(6), "a's lane is free");
    }

    #[test]
    fn the_committable_offset_never_passes_an_unfinished_record() {
        let mut offsets = Offsets::default();
        assert_eq!(offsets.committable(), None);
        for o in 10..15 {
            offsets.take(o);
        }
        assert_eq!(offsets.finish(12), Some(10), "10 is not final");
        assert_eq!(offsets.finish(10), Some(11));
        assert_eq!(offsets.finish(11), Some(13), "10, 11, 12 final");
        assert_eq!(offsets.finish(14), Some(13));
        assert_eq!(offsets.finish(13), Some(15), "all final: one past the last taken");
        assert_eq!(offsets.open(), 0);
    }
}
