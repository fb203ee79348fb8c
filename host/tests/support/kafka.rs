//! Kafka helpers for tests: a mock cluster with a handler topic and its retry and dead-letter
//! topics, a producer, a topic reader, a host started in-process against it, and an `/events`
//! reader.

use common::env::Env;
use host::config::HostConfig;
use host::service::Running;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, TopicPartitionList};
use std::path::Path;
use std::time::{Duration, Instant};

pub const PARTITIONS: i32 = 3;

/// A mock cluster holding `topics`, each with its `.retry` and `.dlq` topic.
pub fn cluster(topics: &[&str]) -> MockCluster<'static, DefaultProducerContext> {
    let mock = MockCluster::new(1).expect("mock cluster");
    for t in topics {
        for name in [t.to_string(), format!("{t}.retry"), format!("{t}.dlq")] {
            mock.create_topic(&name, PARTITIONS, 1).expect("create topic");
        }
    }
    mock
}

/// A producer for test records.
pub fn producer(mock: &MockCluster<'static, DefaultProducerContext>) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("linger.ms", "1")
        .create()
        .expect("producer")
}

/// Produces one record to an explicit partition and waits for the acknowledgement.
pub async fn produce(
    p: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &str,
    value: &str,
    headers: &[(&str, &str)],
) {
    let h =
        headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| h.insert(Header { key: k, value: Some(v.as_bytes()) }));
    let record = FutureRecord::to(topic).partition(partition).key(key).payload(value).headers(h);
    p.send(record, Duration::from_secs(10)).await.expect("produce");
}

pub use testkit::Read;

/// Reads `topic` from the beginning until `expect` records arrived or `within` passed.
pub fn read_topic(
    mock: &MockCluster<'static, DefaultProducerContext>,
    topic: &str,
    expect: usize,
    within: Duration,
) -> Vec<Read> {
    testkit::read_topic(&mock.bootstrap_servers(), topic, PARTITIONS, expect, within)
}

/// Committed offsets of `group` on `topic`, per partition (-1001 when none).
pub fn committed(mock: &MockCluster<'static, DefaultProducerContext>, group: &str, topic: &str) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let offsets = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed");
    offsets.elements().iter().map(|e| e.offset().to_raw().unwrap_or(-1001)).collect()
}

pub fn uuid_like() -> String {
    format!("{:x}{:x}", std::process::id(), rand::random::<u64>())
}

/// Host settings for tests: any free port, fast retries and reloads, short group timeouts.
pub fn host_env(
    mock: &MockCluster<'static, DefaultProducerContext>,
    dir: &Path,
    group: &str,
    extra: &[(&str, &str)],
) -> HostConfig {
    let mut pairs: Vec<(String, String)> = vec![
        ("KAFKA_BROKERS".into(), mock.bootstrap_servers()),
        ("APP_ENV".into(), "development".into()),
        ("KAFKA_GROUP_ID".into(), group.into()),
        ("HANDLERS_DIR".into(), dir.display().to_string()),
        ("PORT".into(), "0".into()),
        ("PRODUCER_URL".into(), "http://127.0.0.1:9".into()),
        ("RETRY_BACKOFF_INITIAL_MS".into(), "10".into()),
        ("RETRY_BACKOFF_MAX_MS".into(), "40".into()),
        ("RETRY_TOPIC_DELAY_MS".into(), "200".into()),
        ("RELOAD_INTERVAL_MS".into(), "100".into()),
        ("DRAIN_TIMEOUT_MS".into(), "5000".into()),
        ("KAFKA_OPT_SESSION_TIMEOUT_MS".into(), "6000".into()),
        ("KAFKA_OPT_MAX_POLL_INTERVAL_MS".into(), "10000".into()),
        ("KAFKA_OPT_TOPIC_METADATA_REFRESH_INTERVAL_MS".into(), "500".into()),
    ];
    for (k, v) in extra {
        pairs.retain(|(name, _)| name != k);
        pairs.push((k.to_string(), v.to_string()));
    }
    HostConfig::from_env(&Env::from_pairs(pairs)).expect("host config")
}

/// Starts a host and waits until `/readyz` says ready.
pub async fn start_host(config: HostConfig) -> Running {
    let running = host::service::start(config).await.expect("start host");
    let url = format!("http://{}/readyz", running.addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = reqwest::get(&url).await;
        if answer.as_ref().is_ok_and(|r| r.status() == 200) {
            return running;
        }
        if Instant::now() >= deadline {
            let why = match answer {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(e) => e.to_string(),
            };
            let handlers = match reqwest::get(format!("http://{}/handlers", running.addr)).await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(e) => e.to_string(),
            };
            panic!("host not ready within 30 s: {why}; handlers: {handlers}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A live `/events` subscription.
pub struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    pub async fn connect(addr: std::net::SocketAddr) -> Self {
        let response = reqwest::get(format!("http://{addr}/events")).await.expect("events");
        assert_eq!(response.status(), 200);
        Self { response, buffer: String::new() }
    }

    /// The next event's data, or `None` after `within`.
    pub async fn next(&mut self, within: Duration) -> Option<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(data) =
                    block.lines().find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                {
                    return Some(serde_json::from_str(data).expect("event json"));
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await.ok()?.ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Collects `n` events or as many as come within `within`.
    pub async fn take(&mut self, n: usize, within: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(e) => out.push(e),
                None => break,
            }
        }
        out
    }
}

/// A metric's value from `/metrics` (0 when absent).
pub async fn metric(addr: std::net::SocketAddr, series: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics")).await.expect("metrics").text().await.expect("text");
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}
