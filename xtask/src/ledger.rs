//! The broker's record of what the system did, read back from its topics: records per user on
//! `issued-token` and per user and event kind on the events topic. The fault suite and the
//! benchmarks judge by it rather than by the hosts' own reports or the lossy `/events` stream.

use crate::demo::EVENTS_TOPIC;
use anyhow::{Context, bail, ensure};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Reads `issued-token` and the events topic from the start, and later from where it stopped,
/// counting records per (what, user): `what` is `issued-token` or the event's kind.
pub struct Tally {
    consumer: BaseConsumer,
    counts: BTreeMap<(String, String), usize>,
}

impl Tally {
    /// Starts reading both topics from the beginning.
    pub fn new(brokers: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = ledger_consumer(brokers, "attack-ledger")?;
        let mut tpl = TopicPartitionList::new();
        for topic in ["issued-token", EVENTS_TOPIC] {
            for p in partitions(&consumer, topic)? {
                tpl.add_partition_offset(topic, p, Offset::Beginning)?;
            }
        }
        consumer.assign(&tpl)?;
        Ok(Self { consumer, counts: BTreeMap::new() })
    }

    /// Reads every partition up to the end it has now.
    pub fn catch_up(&mut self) -> anyhow::Result<()> {
        let assignment = self.consumer.assignment()?;
        let mut ends = BTreeMap::new();
        for e in assignment.elements() {
            let (_, high) = self.consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))?;
            let position =
                self.consumer.position()?.find_partition(e.topic(), e.partition()).and_then(|p| p.offset().to_raw());
            if position.is_none_or(|at| at < high) && high > 0 {
                ends.insert((e.topic().to_string(), e.partition()), high);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ends.is_empty() {
            ensure!(Instant::now() < deadline, "could not read the ledger's topics to their ends within 60 s");
            // Errors are transient (the connection to a broker that was down): librdkafka
            // reconnects, and the deadline bounds the wait.
            if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(200)) {
                let user = m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
                let what = if m.topic() == EVENTS_TOPIC {
                    let value: serde_json::Value =
                        m.payload().and_then(|p| serde_json::from_slice(p).ok()).unwrap_or_default();
                    value["kind"].as_str().unwrap_or("?").to_string()
                } else {
                    m.topic().to_string()
                };
                *self.counts.entry((what, user)).or_default() += 1;
                let place = (m.topic().to_string(), m.partition());
                if ends.get(&place).is_some_and(|&end| m.offset() + 1 >= end) {
                    ends.remove(&place);
                }
            }
        }
        Ok(())
    }

    /// Records seen of `what` (`issued-token` or an event kind) for `user`.
    pub fn count(&self, what: &str, user: &str) -> usize {
        self.counts.get(&(what.to_string(), user.to_string())).copied().unwrap_or(0)
    }
}

/// A consumer that never commits, in `group`.
pub fn ledger_consumer(brokers: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?)
}

/// The partitions of `topic`; an error when the broker does not know it or reports an error.
pub fn partitions(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let t = metadata.topics().iter().find(|t| t.name() == topic).with_context(|| format!("no metadata for {topic}"))?;
    if let Some(e) = t.error() {
        bail!("metadata for {topic}: {e:?}");
    }
    let ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ensure!(!ids.is_empty(), "{topic} has no partitions");
    Ok(ids)
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tally").field("counted", &self.counts.len()).finish_non_exhaustive()
    }
}

impl Tally {
    /// Reads on until every one of `ids` has a `what` record, or `within` passed; returns how
    /// many still have none.
    pub fn wait_for(&mut self, what: &str, ids: &BTreeSet<String>, within: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            self.catch_up()?;
            let missing = ids.iter().filter(|id| self.count(what, id) == 0).count();
            if missing == 0 || Instant::now() > deadline {
                return Ok(missing);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}
