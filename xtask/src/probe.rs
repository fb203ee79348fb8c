//! The ordering probe: records of many keys, several per key, written to `sequence` while an
//! attack runs, and handled by the `hostile` fixture (its `echo` misdeed publishes one event per
//! record). The events topic is keyed by the record's key, so it keeps, per key, the order the
//! hosts handled that key's records in; [`judge`] compares it with the order on `sequence`
//! itself. The broker is the judge: what the probe meant to write does not count, only what the
//! topic holds.

use crate::demo::EVENTS_TOPIC;
use crate::ledger::{ledger_consumer, partitions};
use anyhow::ensure;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The probe's topic.
pub const TOPIC: &str = "sequence";

/// Writes records to [`TOPIC`] in the background until finished: keys `echo/k0` … (the
/// fixture's `echo` misdeed under many keys), taken round the keys at random.
#[derive(Debug)]
pub struct Probe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl Probe {
    /// Starts writing a record about every `period`, over `keys` keys.
    pub fn start(brokers: &str, keys: u64, period: Duration, seed: u64) -> anyhow::Result<Self> {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "60000")
            .create()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut state = seed | 1;
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let key = format!("echo/k{}", state % keys);
                let value = n.to_string();
                // A full queue (the broker down) is waited out; what never reaches the topic is
                // not the probe's to judge.
                let mut record = BaseRecord::to(TOPIC).key(&key).payload(&value);
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((_, back)) => {
                            record = back;
                            std::thread::sleep(Duration::from_millis(50));
                            if flag.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                    }
                }
                n += 1;
                std::thread::sleep(period);
            }
            producer.flush(Duration::from_secs(60))?;
            Ok(())
        });
        Ok(Self { stop, thread })
    }

    /// Stops writing, once what was written is on the topic.
    pub fn finish(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| anyhow::anyhow!("the probe's writer panicked"))?
    }
}

/// What the events topic says of the order `sequence`'s records were handled in.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OrderCheck {
    /// Keys on the topic.
    pub keys: usize,
    /// Records on the topic.
    pub records: usize,
    /// Records handled for the first time before a record of their key that precedes them.
    pub out_of_order: usize,
    /// Records with no event: never handled `ok`.
    pub unhandled: usize,
    /// Handlings beyond a record's first (at-least-once repeats).
    pub repeats: usize,
    /// The first record out of order, described.
    pub first_violation: Option<String>,
}

/// Compares, per key, the offsets on the topic (`produced`, ascending) with the offsets in the
/// order they were handled (`handled`, repeats included). A key's records are in order when
/// each record handled for the first time is the key's next record not handled yet: a repeat of
/// one handled before is no breach (a redelivery after a crash starts again from the committed
/// offset), a record that jumps ahead of an earlier one of its key is.
pub fn judge(produced: &BTreeMap<String, Vec<i64>>, handled: &BTreeMap<String, Vec<i64>>) -> OrderCheck {
    let mut check = OrderCheck { keys: produced.len(), ..OrderCheck::default() };
    for (key, offsets) in produced {
        check.records += offsets.len();
        let mut next = 0usize;
        let mut seen = BTreeSet::new();
        for &offset in handled.get(key).map(Vec::as_slice).unwrap_or_default() {
            if !seen.insert(offset) {
                check.repeats += 1;
                continue;
            }
            // Skip the key's records already handled (out of order, earlier on).
            while next < offsets.len() && seen.contains(&offsets[next]) && offsets[next] != offset {
                next += 1;
            }
            if offsets.get(next) == Some(&offset) {
                next += 1;
            } else {
                check.out_of_order += 1;
                if check.first_violation.is_none() {
                    let expected = offsets.get(next).map_or("none".to_string(), i64::to_string);
                    check.first_violation =
                        Some(format!("{key}: offset {offset} handled before offset {expected} of the same key"));
                }
            }
        }
        check.unhandled += offsets.iter().filter(|o| !seen.contains(o)).count();
    }
    check
}

/// Reads `sequence` and the events topic to their ends and judges the order.
pub fn check(brokers: &str) -> anyhow::Result<OrderCheck> {
    let produced = read(brokers, TOPIC, |m| {
        let key = String::from_utf8_lossy(m.key()?).into_owned();
        Some((key, m.offset()))
    })?;
    let handled = read(brokers, EVENTS_TOPIC, |m| {
        let event: serde_json::Value = serde_json::from_slice(m.payload()?).ok()?;
        (event["topic"] == TOPIC).then_some(())?;
        let key = String::from_utf8_lossy(m.key()?).into_owned();
        Some((key, event["offset"].as_i64()?))
    })?;
    Ok(judge(&produced, &handled))
}

/// Every record of `topic`, read to the end it has now, turned by `pick` into (key, offset),
/// grouped by key in the order read (one key's records are on one partition).
fn read(
    brokers: &str,
    topic: &str,
    pick: impl Fn(&rdkafka::message::BorrowedMessage<'_>) -> Option<(String, i64)>,
) -> anyhow::Result<BTreeMap<String, Vec<i64>>> {
    let consumer = ledger_consumer(brokers, "probe-reader")?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in partitions(&consumer, topic)? {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
            ends.insert(p, high);
        }
    }
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ends.is_empty() {
        ensure!(Instant::now() < deadline, "could not read {topic} to its end within 120 s");
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            if let Some((key, offset)) = pick(&m) {
                out.entry(key).or_default().push(offset);
            }
            if ends.get(&m.partition()).is_some_and(|&end| m.offset() + 1 >= end) {
                ends.remove(&m.partition());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &[i64])]) -> BTreeMap<String, Vec<i64>> {
        entries.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect()
    }

    #[test]
    fn records_in_order_per_key_pass_whatever_the_interleaving_of_keys() {
        let produced = map(&[("a", &[0, 2, 5]), ("b", &[1, 3, 4])]);
        let check = judge(&produced, &map(&[("a", &[0, 2, 5]), ("b", &[1, 3, 4])]));
        assert_eq!(check, OrderCheck { keys: 2, records: 6, ..OrderCheck::default() });
    }

    #[test]
    fn a_redelivery_from_the_committed_offset_is_a_repeat_not_a_breach() {
        let produced = map(&[("a", &[0, 2, 5, 7])]);
        let check = judge(&produced, &map(&[("a", &[0, 2, 5, 2, 5, 7])]));
        assert_eq!((check.out_of_order, check.repeats, check.unhandled), (0, 2, 0));
    }

    #[test]
    fn a_record_handled_before_an_earlier_one_of_its_key_is_a_breach() {
        let produced = map(&[("a", &[0, 2, 5])]);
        let check = judge(&produced, &map(&[("a", &[0, 5, 2])]));
        assert_eq!(check.out_of_order, 1);
        assert_eq!(check.first_violation.as_deref(), Some("a: offset 5 handled before offset 2 of the same key"));
        assert_eq!(check.unhandled, 0);
    }

    #[test]
    fn a_record_never_handled_is_counted_and_so_is_the_one_that_skipped_it() {
        let produced = map(&[("a", &[0, 2, 5]), ("b", &[1])]);
        let check = judge(&produced, &map(&[("a", &[0, 5])]));
        assert_eq!((check.unhandled, check.out_of_order), (2, 1), "2 and b's 1 unhandled; 5 skipped 2");
    }
}
