//! Helpers the test suites of `host` and `producer` share: reading a topic back from a broker,
//! and starting a service binary as an operator would (clean environment, a free port).

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, TopicPartitionList};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A record read back from a topic, as text.
#[derive(Debug, Clone)]
pub struct Read {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Timestamp in milliseconds since the Unix epoch, if the record has one.
    pub timestamp_ms: Option<i64>,
    /// Key, if any.
    pub key: Option<String>,
    /// Value, if any.
    pub value: Option<String>,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
}

impl Read {
    /// The last header named `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Reads partitions `0..partitions` of `topic` from the beginning, with a fresh group, until
/// `expect` records arrived or `within` passed.
pub fn read_topic(bootstrap: &str, topic: &str, partitions: i32, expect: usize, within: Duration) -> Vec<Read> {
    let group = format!("reader-{}-{:?}", std::process::id(), Instant::now());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning).expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < expect && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
            out.push(Read {
                partition: m.partition(),
                offset: m.offset(),
                timestamp_ms: m.timestamp().to_millis(),
                key: text(m.key()),
                value: text(m.payload()),
                headers: m
                    .headers()
                    .map(|h| h.iter().map(|h| (h.key.to_string(), text(h.value).unwrap_or_default())).collect())
                    .unwrap_or_default(),
            });
        }
    }
    out
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A command for the service binary at `path` with an empty environment (but `PATH`), stdout
/// discarded and stderr captured, so a test sets exactly the variables an operator would.
pub fn service_command(path: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(path);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}
