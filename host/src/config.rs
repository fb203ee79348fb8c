//! The host's configuration: the environment, parsed once at start into [`HostConfig`], and each
//! handler's settings ([`HandlerSettings`]: limits, retry policy and concurrency), which are the
//! environment's defaults overlaid with the optional `HANDLERS_DIR/<topic>.toml`.

use crate::runtime::{EngineConfig, HandlerLimits, InstancePolicy};
use common::auth::OperatorToken;
use common::env::{AppEnv, ConfigError, Env, Problems};
use common::kafka::KafkaSettings;
use common::telemetry::LogFormat;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// How failed records are retried: in place first (order kept), then through `<topic>.retry`,
/// then dead-lettered to `<topic>.dlq`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Handler calls per delivery before the record is handed to `<topic>.retry`.
    pub in_place_attempts: u32,
    /// Handler calls in all (across redeliveries) before the record is dead-lettered.
    pub max_attempts: u32,
    /// First in-place backoff; doubles each time, with jitter.
    pub backoff_initial_ms: u64,
    /// Longest in-place backoff.
    pub backoff_max_ms: u64,
    /// Delay before the first redelivery from `<topic>.retry`.
    pub retry_topic_delay_ms: u64,
    /// Factor applied to that delay on each further trip through the retry topic.
    pub retry_topic_multiplier: u32,
    /// Longest retry-topic delay.
    pub retry_topic_delay_max_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            in_place_attempts: 3,
            max_attempts: 9,
            backoff_initial_ms: 200,
            backoff_max_ms: 5_000,
            retry_topic_delay_ms: 10_000,
            retry_topic_multiplier: 5,
            retry_topic_delay_max_ms: 600_000,
        }
    }
}

impl RetryPolicy {
    fn validate(&self) -> Result<(), String> {
        if self.in_place_attempts == 0 || self.max_attempts == 0 {
            return Err("retry.in_place_attempts and retry.max_attempts must be at least 1".into());
        }
        if self.max_attempts > 1_000 {
            return Err("retry.max_attempts must be at most 1000".into());
        }
        if self.backoff_initial_ms > self.backoff_max_ms || self.backoff_max_ms > 600_000 {
            return Err("retry backoff: need backoff_initial_ms <= backoff_max_ms <= 600000".into());
        }
        if self.retry_topic_delay_ms > self.retry_topic_delay_max_ms || self.retry_topic_delay_max_ms > 7 * 86_400_000 {
            return Err("retry topic delay: need retry_topic_delay_ms <= retry_topic_delay_max_ms <= 7 days".into());
        }
        if self.retry_topic_multiplier == 0 {
            return Err("retry.retry_topic_multiplier must be at least 1".into());
        }
        Ok(())
    }

    /// The in-place backoff before retry number `n` (1 = the first retry), with "equal jitter":
    /// between half and all of the exponential delay.
    pub fn in_place_backoff(&self, n: u32) -> Duration {
        let exp = self.backoff_initial_ms.saturating_mul(1u64 << n.saturating_sub(1).min(30)).min(self.backoff_max_ms);
        let half = exp / 2;
        Duration::from_millis(half + rand::random_range(0..=exp - half))
    }

    /// The delay before the redelivery that follows `hops` earlier trips through the retry topic.
    pub fn retry_topic_delay(&self, hops: u32) -> Duration {
        let factor = u64::from(self.retry_topic_multiplier).saturating_pow(hops.min(32));
        Duration::from_millis(self.retry_topic_delay_ms.saturating_mul(factor).min(self.retry_topic_delay_max_ms))
    }
}

/// How a partition's records are ordered while they are handled side by side
/// (`[concurrency] ordering`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// The records of one key one after another, in offset order; different keys side by side.
    /// Records without a key are one key of their own.
    #[default]
    Key,
    /// One record of the partition at a time, in offset order.
    Partition,
    /// Side by side, in no order.
    None,
}

impl Ordering {
    /// Its name in `<topic>.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Partition => "partition",
            Self::None => "none",
        }
    }
}

impl std::str::FromStr for Ordering {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "key" => Ok(Self::Key),
            "partition" => Ok(Self::Partition),
            "none" => Ok(Self::None),
            other => Err(format!("{other:?}: expected key, partition or none")),
        }
    }
}

/// How many records of a partition are handled at once, and in what order (`[concurrency]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConcurrencySettings {
    /// What records wait for.
    pub ordering: Ordering,
    /// Records of one partition taken at once: running, or waiting for their key.
    pub max_in_flight: u32,
}

/// The largest `max_in_flight`.
pub const MAX_IN_FLIGHT: u32 = 1024;

impl Default for ConcurrencySettings {
    fn default() -> Self {
        Self { ordering: Ordering::Key, max_in_flight: 32 }
    }
}

impl ConcurrencySettings {
    fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_IN_FLIGHT).contains(&self.max_in_flight) {
            return Err(format!("concurrency.max_in_flight must be 1-{MAX_IN_FLIGHT}, not {}", self.max_in_flight));
        }
        Ok(())
    }

    /// Records of a partition that may run at once (1 under `partition` ordering).
    pub fn parallel(&self) -> usize {
        match self.ordering {
            Ordering::Partition => 1,
            Ordering::Key | Ordering::None => self.max_in_flight as usize,
        }
    }
}

/// Everything configurable per handler.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HandlerSettings {
    /// Sandbox limits and instance policy.
    pub limits: HandlerLimits,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Records handled side by side.
    pub concurrency: ConcurrencySettings,
}

impl HandlerSettings {
    /// `self` overlaid with the keys of a `<topic>.toml` document; unknown keys are errors.
    pub fn overlay(&self, toml_text: &str) -> Result<Self, String> {
        let file: toml::Table = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        let mut base = toml::Table::try_from(self).map_err(|e| e.to_string())?;
        for (section, value) in file {
            match (base.get_mut(&section), value) {
                (Some(toml::Value::Table(into)), toml::Value::Table(from)) => into.extend(from),
                (_, value) => {
                    base.insert(section, value);
                }
            }
        }
        let merged: Self = toml::Value::Table(base).try_into().map_err(|e: toml::de::Error| e.to_string())?;
        merged.retry.validate()?;
        merged.concurrency.validate()?;
        Ok(merged)
    }
}

/// Largest `<topic>.toml` read.
pub const MAX_SETTINGS_BYTES: u64 = 64 * 1024;

/// Reads a `<topic>.toml` settings file: a regular file of at most [`MAX_SETTINGS_BYTES`], UTF-8.
pub fn read_settings_file(path: &std::path::Path) -> Result<String, String> {
    let bytes = crate::runtime::read_file(path, MAX_SETTINGS_BYTES).map_err(|e| format!("{}: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8 text", path.display()))
}

/// `CACHE_DIR`: where compiled components are kept; `none` keeps none (every load compiles);
/// unset, a directory of the system's temporary directory.
pub fn cache_dir(env: &Env) -> Option<PathBuf> {
    match env.get("CACHE_DIR") {
        Some("none") => None,
        Some(dir) => Some(PathBuf::from(dir)),
        None => Some(crate::runtime::config::default_cache_dir()),
    }
}

/// What a drain must leave of the consumer's `max.poll.interval.ms` (the commit after it, and
/// leaving or rejoining the group).
pub const DRAIN_MARGIN: Duration = Duration::from_secs(5);

/// librdkafka's `max.poll.interval.ms` as the consumer will have it (its default, 300 s, unless
/// passed through).
fn max_poll_interval(kafka: &KafkaSettings) -> Duration {
    kafka
        .extra
        .iter()
        .rev()
        .find(|(k, _)| k == "max.poll.interval.ms")
        .and_then(|(_, v)| v.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_millis)
}

/// The host's validated configuration.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Kafka connection (shared with the producer).
    pub kafka: KafkaSettings,
    /// Consumer group.
    pub group_id: String,
    /// Where `<topic>.wasm` and `<topic>.toml` files live.
    pub handlers_dir: PathBuf,
    /// Handlers copied into an empty `handlers_dir` at start (the image's defaults, when
    /// `handlers_dir` is a fresh shared volume).
    pub handlers_seed_dir: Option<PathBuf>,
    /// Base URL of the producer service.
    pub producer_url: String,
    /// HTTP port (0: any free port).
    pub port: u16,
    /// Log format.
    pub log_format: LogFormat,
    /// Defaults for every handler.
    pub handler_defaults: HandlerSettings,
    /// Engine-wide sandbox settings.
    pub engine: EngineConfig,
    /// How often `HANDLERS_DIR` is scanned for changes.
    pub reload_interval: Duration,
    /// How long in-flight records may take to finish at shutdown or revoke.
    pub drain_timeout: Duration,
    /// `retention.ms` of the `<topic>.retry` topics the host creates.
    pub retry_topic_retention: Duration,
    /// `retention.ms` of the `<topic>.dlq` topics the host creates (`None`: kept forever).
    pub dlq_retention: Option<Duration>,
    /// Production or development (`APP_ENV`): production requires `OPERATOR_TOKEN`.
    pub app_env: AppEnv,
    /// The credential of the operator routes (`/metrics`, `/handlers`, `/events`); `None` (in
    /// development only): they are open.
    pub operator_token: Option<OperatorToken>,
    /// Instances all partitions' records may hold at once (`MAX_INSTANCES`); at the cap, records
    /// wait for one.
    pub max_instances: u32,
    /// A Kafka topic that receives every event handlers publish, besides `GET /events`. Each is
    /// acknowledged by the broker before its record's offset is stored, so the topic holds every
    /// event of every record handled `ok` (at least once). `None`: the live stream only.
    pub events_topic: Option<String>,
}

/// Every variable the host reads besides the shared `KAFKA_*` ones.
pub const VARIABLES: &[&str] = &[
    "HANDLERS_DIR",
    "HANDLERS_SEED_DIR",
    "PRODUCER_URL",
    "PORT",
    "LOG_FORMAT",
    "HANDLER_CALL_TIMEOUT_MS",
    "HANDLER_MAX_MEMORY_BYTES",
    "HANDLER_INSTANCE_POLICY",
    "HANDLER_ORDERING",
    "HANDLER_MAX_IN_FLIGHT",
    "MAX_INSTANCES",
    "RETRY_IN_PLACE_ATTEMPTS",
    "RETRY_MAX_ATTEMPTS",
    "RETRY_BACKOFF_INITIAL_MS",
    "RETRY_BACKOFF_MAX_MS",
    "RETRY_TOPIC_DELAY_MS",
    "RETRY_TOPIC_DELAY_MAX_MS",
    "WASM_MAX_INSTANCES",
    "WASM_MAX_MEMORY_BYTES",
    "RELOAD_INTERVAL_MS",
    "DRAIN_TIMEOUT_MS",
    "EVENTS_TOPIC",
    "RETRY_TOPIC_RETENTION_MS",
    "DLQ_RETENTION_MS",
    "APP_ENV",
    common::auth::VARIABLE,
    "CACHE_DIR",
];

/// The longest a record may wait in a retry topic (the largest `retry_topic_delay_max_ms`).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(7 * 86_400);
/// What a retry topic's retention must add to that wait: a copy must outlive its wait and an
/// outage of the host after it.
const RETRY_RETENTION_MARGIN: Duration = Duration::from_secs(86_400);

impl HostConfig {
    /// Reads and checks the environment; reports every bad variable at once.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let mut p = Problems::default();
        let kafka = KafkaSettings::from_env(env).map_err(|e| p.absorb(e)).ok();
        let group_id = env.get("KAFKA_GROUP_ID").unwrap_or("wasm-host").to_string();
        let producer_url = env.get("PRODUCER_URL").unwrap_or("http://127.0.0.1:9002").to_string();
        if let Err(e) = crate::producer_api::ProducerClient::new(&producer_url) {
            p.push(format!("PRODUCER_URL: {e}"));
        }
        let port = p.parse_in(env, "PORT", 9000u16, 0..=65535);
        let log_format = p.parse(env, "LOG_FORMAT", LogFormat::Text);
        let app_env = p.parse(env, "APP_ENV", AppEnv::Production);
        let operator_token = common::auth::operator_token(env, app_env == AppEnv::Production, &mut p);

        let engine_defaults = EngineConfig::default();
        let engine = EngineConfig {
            max_instances: p.parse_in(env, "WASM_MAX_INSTANCES", engine_defaults.max_instances, 1..=100_000),
            max_memory_bytes: p.parse_in(
                env,
                "WASM_MAX_MEMORY_BYTES",
                engine_defaults.max_memory_bytes,
                1 << 20..=4 << 30,
            ),
            cache_dir: cache_dir(env),
            ..engine_defaults
        };

        let limit_defaults = HandlerLimits::default();
        let retry_defaults = RetryPolicy::default();
        let instance_policy = match env.get("HANDLER_INSTANCE_POLICY") {
            None => InstancePolicy::Reuse,
            Some("reuse") => InstancePolicy::Reuse,
            Some("fresh") => InstancePolicy::Fresh,
            Some(other) => {
                p.push(format!("HANDLER_INSTANCE_POLICY={other:?}: expected reuse or fresh"));
                InstancePolicy::Reuse
            }
        };
        let handler_defaults = HandlerSettings {
            limits: HandlerLimits {
                call_timeout_ms: p.parse(env, "HANDLER_CALL_TIMEOUT_MS", limit_defaults.call_timeout_ms),
                max_memory_bytes: p.parse(env, "HANDLER_MAX_MEMORY_BYTES", limit_defaults.max_memory_bytes),
                instance_policy,
                ..limit_defaults
            },
            retry: RetryPolicy {
                in_place_attempts: p.parse(env, "RETRY_IN_PLACE_ATTEMPTS", retry_defaults.in_place_attempts),
                max_attempts: p.parse(env, "RETRY_MAX_ATTEMPTS", retry_defaults.max_attempts),
                backoff_initial_ms: p.parse(env, "RETRY_BACKOFF_INITIAL_MS", retry_defaults.backoff_initial_ms),
                backoff_max_ms: p.parse(env, "RETRY_BACKOFF_MAX_MS", retry_defaults.backoff_max_ms),
                retry_topic_delay_ms: p.parse(env, "RETRY_TOPIC_DELAY_MS", retry_defaults.retry_topic_delay_ms),
                retry_topic_delay_max_ms: p.parse(
                    env,
                    "RETRY_TOPIC_DELAY_MAX_MS",
                    retry_defaults.retry_topic_delay_max_ms,
                ),
                ..retry_defaults
            },
            concurrency: ConcurrencySettings {
                ordering: p.parse(env, "HANDLER_ORDERING", Ordering::Key),
                max_in_flight: p.parse(env, "HANDLER_MAX_IN_FLIGHT", ConcurrencySettings::default().max_in_flight),
            },
        };
        if let Err(e) = handler_defaults.limits.validate(engine.max_memory_bytes) {
            p.push(format!("handler defaults: {e}"));
        }
        if let Err(e) = handler_defaults.retry.validate() {
            p.push(format!("handler defaults: {e}"));
        }
        if let Err(e) = handler_defaults.concurrency.validate() {
            p.push(format!("handler defaults: {e}"));
        }
        let max_instances = p.parse_in(
            env,
            "MAX_INSTANCES",
            default_max_instances(memory_bytes(), handler_defaults.limits.max_memory_bytes, engine.max_instances),
            1..=engine.max_instances,
        );
        let reload_interval = Duration::from_millis(p.parse_in(env, "RELOAD_INTERVAL_MS", 250u64, 10..=60_000));
        let drain_timeout = Duration::from_millis(p.parse_in(env, "DRAIN_TIMEOUT_MS", 10_000u64, 0..=600_000));
        // A revoke or a shutdown drains inside the consumer's poll: a drain longer than the
        // group allows between polls would get the host expelled while it still works.
        if let Some(kafka) = &kafka {
            let max_poll = max_poll_interval(kafka);
            if drain_timeout + DRAIN_MARGIN > max_poll {
                p.push(format!(
                    "DRAIN_TIMEOUT_MS={} leaves less than {} s of the consumer's max.poll.interval.ms={} \
                     (KAFKA_OPT_MAX_POLL_INTERVAL_MS): lower the one or raise the other",
                    drain_timeout.as_millis(),
                    DRAIN_MARGIN.as_secs(),
                    max_poll.as_millis()
                ));
            }
        }
        let min_retry_retention = (MAX_RETRY_DELAY + RETRY_RETENTION_MARGIN).as_millis() as u64;
        let retry_topic_retention = Duration::from_millis(p.parse_in(
            env,
            "RETRY_TOPIC_RETENTION_MS",
            14 * 86_400_000u64,
            min_retry_retention..=u64::from(u32::MAX) * 1000,
        ));
        let dlq_retention =
            match p.parse_in(env, "DLQ_RETENTION_MS", 28 * 86_400_000i64, -1..=i64::from(u32::MAX) * 1000) {
                -1 => None,
                ms if ms < 86_400_000 => {
                    p.push(format!(
                        "DLQ_RETENTION_MS={ms}: a dead-letter topic must keep records a day at least (-1: forever)"
                    ));
                    None
                }
                ms => Some(Duration::from_millis(ms.unsigned_abs())),
            };
        let events_topic = env.get("EVENTS_TOPIC").filter(|t| !t.is_empty()).map(str::to_string);
        if let Some(Err(e)) = events_topic.as_deref().map(|t| crate::handlers::kafka_topic_name(t, 249)) {
            p.push(format!("EVENTS_TOPIC: {e}"));
        }
        let Some(kafka) = kafka else {
            return Err(p.finish(()).expect_err("kafka problems were recorded"));
        };
        p.finish(Self {
            kafka,
            group_id,
            handlers_dir: PathBuf::from(env.get("HANDLERS_DIR").unwrap_or("./handlers")),
            handlers_seed_dir: env.get("HANDLERS_SEED_DIR").map(PathBuf::from),
            producer_url,
            port,
            log_format,
            handler_defaults,
            engine,
            reload_interval,
            drain_timeout,
            retry_topic_retention,
            dlq_retention,
            app_env,
            operator_token,
            max_instances,
            events_topic,
        })
    }
}

/// `MAX_INSTANCES` when unset: as many instances as half of `memory` holds at the default memory
/// cap each (the rest for the host, librdkafka's buffers and the compiled code), at least 4 and
/// at most the pool's slots.
pub fn default_max_instances(memory: Option<u64>, per_instance: u64, pool: u32) -> u32 {
    let by_memory = memory.map_or(u64::from(pool), |m| m / 2 / per_instance.max(1));
    u32::try_from(by_memory).unwrap_or(u32::MAX).clamp(4.min(pool), pool)
}

/// The memory this process may use: its cgroup's limit (a container's, as on ECS) or else the
/// machine's; `None` when neither can be read.
fn memory_bytes() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|s| s.trim().parse::<u64>().ok());
    let total = || {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    match (cgroup, total()) {
        (Some(limit), Some(total)) => Some(limit.min(total)),
        (limit, total) => limit.or(total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = HostConfig::from_env(&Env::from_pairs([("APP_ENV", "development")])).expect("defaults");
        assert!(c.operator_token.is_none(), "operator routes open in development without a token");
        assert_eq!(c.group_id, "wasm-host");
        assert_eq!(c.port, 9000);
        assert_eq!(c.producer_url, "http://127.0.0.1:9002", "the producer's internal listener");
        assert_eq!(c.handlers_dir, PathBuf::from("./handlers"));
        assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(c.events_topic, None);
    }

    #[test]
    fn production_requires_an_operator_token_and_never_prints_it() {
        let err = HostConfig::from_env(&Env::default()).expect_err("production without a token");
        assert!(err.to_string().contains("OPERATOR_TOKEN is required in production"), "{err}");
        let secret = "s3cr3t-operator-token-of-32-bytes!";
        let c = HostConfig::from_env(&Env::from_pairs([("OPERATOR_TOKEN", secret)])).expect("with a token");
        assert_eq!(c.app_env, AppEnv::Production);
        assert!(c.operator_token.is_some());
        assert!(!format!("{c:?}").contains(secret), "the token is never printed");
        let err = HostConfig::from_env(&Env::from_pairs([("OPERATOR_TOKEN", "short")])).expect_err("short");
        assert!(err.to_string().contains("OPERATOR_TOKEN") && !err.to_string().contains("short\""), "{err}");
    }

    #[test]
    fn bad_values_fail_with_every_name() {
        let env = Env::from_pairs([
            ("PORT", "x"),
            ("PRODUCER_URL", "ftp://nope"),
            ("HANDLER_CALL_TIMEOUT_MS", "0"),
            ("HANDLER_INSTANCE_POLICY", "sometimes"),
            ("RETRY_IN_PLACE_ATTEMPTS", "0"),
            ("EVENTS_TOPIC", "events/all"),
            ("DRAIN_TIMEOUT_MS", "300000"),
        ]);
        let text = HostConfig::from_env(&env).expect_err("bad").to_string();
        for needle in [
            "PORT",
            "PRODUCER_URL",
            "call_timeout_ms",
            "HANDLER_INSTANCE_POLICY",
            "in_place_attempts",
            "EVENTS_TOPIC",
            "DRAIN_TIMEOUT_MS",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }

    #[test]
    fn a_topic_file_overrides_some_keys_and_rejects_unknown_ones() {
        let base = HandlerSettings::default();
        let s = base.overlay("[limits]\ncall_timeout_ms = 100\n[retry]\nmax_attempts = 2\n").expect("valid");
        assert_eq!(s.limits.call_timeout_ms, 100);
        assert_eq!(s.limits.max_memory_bytes, base.limits.max_memory_bytes);
        assert_eq!(s.retry.max_attempts, 2);
        assert!(base.overlay("[limits]\ncall_timeout = 1\n").expect_err("unknown").contains("call_timeout"));
        assert!(base.overlay("[limit]\n").expect_err("unknown section").contains("limit"));
        assert!(base.overlay("[retry]\nin_place_attempts = 0\n").is_err());
    }

    #[test]
    fn concurrency_defaults_to_key_order_and_bad_values_are_refused() {
        let base = HandlerSettings::default();
        assert_eq!(base.concurrency, ConcurrencySettings { ordering: Ordering::Key, max_in_flight: 32 });
        let s = base.overlay("[concurrency]\nordering = \"partition\"\nmax_in_flight = 4\n").expect("valid");
        assert_eq!((s.concurrency.ordering, s.concurrency.parallel()), (Ordering::Partition, 1));
        assert_eq!(base.overlay("[concurrency]\nordering = \"none\"\n").expect("valid").concurrency.parallel(), 32);
        assert!(base.overlay("[concurrency]\nordering = \"keys\"\n").expect_err("unknown").contains("keys"));
        assert!(base.overlay("[concurrency]\nmax_in_flight = 0\n").expect_err("zero").contains("max_in_flight"));
        assert!(base.overlay("[concurrency]\nmax_in_flight = 5000\n").expect_err("big").contains("1-1024"));
        let env = Env::from_pairs([("HANDLER_ORDERING", "sorted"), ("MAX_INSTANCES", "0"), ("APP_ENV", "development")]);
        let text = HostConfig::from_env(&env).expect_err("bad").to_string();
        assert!(text.contains("HANDLER_ORDERING") && text.contains("MAX_INSTANCES"), "{text}");
    }

    #[test]
    fn the_instance_cap_follows_memory_within_the_pool() {
        const MIB: u64 = 1 << 20;
        assert_eq!(default_max_instances(Some(24 << 30), 64 * MIB, 256), 192);
        assert_eq!(default_max_instances(Some(1 << 30), 64 * MIB, 256), 8, "a 1 GiB task");
        assert_eq!(default_max_instances(Some(64 * MIB), 64 * MIB, 256), 4, "never fewer than 4");
        assert_eq!(default_max_instances(Some(1 << 40), 64 * MIB, 256), 256, "never more than the pool");
        assert_eq!(default_max_instances(None, 64 * MIB, 100), 100);
        assert_eq!(default_max_instances(Some(0), 64 * MIB, 2), 2);
    }

    #[test]
    fn backoffs_grow_and_are_capped() {
        let r = RetryPolicy { backoff_initial_ms: 100, backoff_max_ms: 1_000, ..RetryPolicy::default() };
        for n in 1..=10 {
            let d = r.in_place_backoff(n).as_millis() as u64;
            let exp = (100u64 << (n - 1)).min(1_000);
            assert!(d >= exp / 2 && d <= exp, "retry {n}: {d} ms outside {}..={exp}", exp / 2);
        }
        let r = RetryPolicy::default();
        assert_eq!(r.retry_topic_delay(0), Duration::from_secs(10));
        assert_eq!(r.retry_topic_delay(1), Duration::from_secs(50));
        assert_eq!(r.retry_topic_delay(9), Duration::from_secs(600));
    }
}
