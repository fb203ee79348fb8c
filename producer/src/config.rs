//! The producer's configuration, read once from the environment into a validated value.

use common::env::{ConfigError, Env, Problems};
use common::kafka::KafkaSettings;
use common::telemetry::LogFormat;
use std::time::Duration;

/// The development-only token secret; refused in production.
pub const DEVELOPMENT_SECRET: &str = "development-only-secret-do-not-use-in-production";
/// Shortest `TOKEN_SECRET` accepted in production (HS256 wants at least 256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

/// `APP_ENV`: production refuses unsafe defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    /// Every secret must be given.
    Production,
    /// Unsafe defaults are allowed, with a warning.
    Development,
}

impl std::str::FromStr for AppEnv {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "production" | "prod" => Ok(Self::Production),
            "development" | "dev" => Ok(Self::Development),
            _ => Err("expected production or development".into()),
        }
    }
}

/// Validated producer settings.
#[derive(Clone)]
pub struct ProducerConfig {
    /// HTTP port.
    pub port: u16,
    /// Production or development.
    pub app_env: AppEnv,
    /// Kafka connection (shared with the host).
    pub kafka: KafkaSettings,
    /// Longest wait for a broker acknowledgement before answering 503.
    pub produce_timeout: Duration,
    /// HMAC key for tokens.
    pub token_secret: Vec<u8>,
    /// Whether the secret is the development default.
    pub token_secret_is_default: bool,
    /// Token lifetime.
    pub token_ttl: Duration,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_window: Duration,
    /// How many keys are remembered at most.
    pub idempotency_max_keys: usize,
    /// Log format.
    pub log_format: LogFormat,
}

impl std::fmt::Debug for ProducerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerConfig")
            .field("port", &self.port)
            .field("app_env", &self.app_env)
            .field("kafka", &self.kafka)
            .field("produce_timeout", &self.produce_timeout)
            .field("token_secret", &"<redacted>")
            .field("token_ttl", &self.token_ttl)
            .field("idempotency_window", &self.idempotency_window)
            .field("idempotency_max_keys", &self.idempotency_max_keys)
            .finish_non_exhaustive()
    }
}

/// Every variable the producer reads besides the shared `KAFKA_*` ones.
pub const VARIABLES: &[&str] = &[
    "PORT",
    "APP_ENV",
    "PRODUCE_TIMEOUT_MS",
    "TOKEN_SECRET",
    "TOKEN_TTL_SECS",
    "IDEMPOTENCY_WINDOW_SECS",
    "IDEMPOTENCY_MAX_KEYS",
    "LOG_FORMAT",
];

impl ProducerConfig {
    /// Reads and checks the environment; reports every bad variable at once.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let mut p = Problems::default();
        let kafka = KafkaSettings::from_env(env).map_err(|e| p.absorb(e)).ok();
        let port = p.parse_in(env, "PORT", 9001u16, 1..=65535);
        let app_env = p.parse(env, "APP_ENV", AppEnv::Production);
        let produce_timeout_ms = p.parse_in(env, "PRODUCE_TIMEOUT_MS", 5_000u64, 100..=300_000);
        let token_ttl_secs = p.parse_in(env, "TOKEN_TTL_SECS", 3_600u64, 1..=31_536_000);
        let idempotency_window_secs = p.parse_in(env, "IDEMPOTENCY_WINDOW_SECS", 600u64, 1..=86_400);
        let idempotency_max_keys = p.parse_in(env, "IDEMPOTENCY_MAX_KEYS", 10_000usize, 1..=10_000_000);
        let log_format = p.parse(env, "LOG_FORMAT", LogFormat::Text);
        let (token_secret, token_secret_is_default) = match (env.get("TOKEN_SECRET"), app_env) {
            (Some(secret), _) if secret.len() < MIN_SECRET_BYTES && app_env == AppEnv::Production => {
                p.push(format!("TOKEN_SECRET must be at least {MIN_SECRET_BYTES} bytes in production"));
                (Vec::new(), false)
            }
            (Some(secret), _) => (secret.as_bytes().to_vec(), false),
            (None, AppEnv::Development) => (DEVELOPMENT_SECRET.as_bytes().to_vec(), true),
            (None, AppEnv::Production) => {
                p.push("TOKEN_SECRET is required in production (set APP_ENV=development for a local default)");
                (Vec::new(), false)
            }
        };
        let Some(kafka) = kafka else {
            return Err(p.finish(()).expect_err("kafka problems were recorded"));
        };
        p.finish(Self {
            port,
            app_env,
            kafka,
            produce_timeout: Duration::from_millis(produce_timeout_ms),
            token_secret,
            token_secret_is_default,
            token_ttl: Duration::from_secs(token_ttl_secs),
            idempotency_window: Duration::from_secs(idempotency_window_secs),
            idempotency_max_keys,
            log_format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_requires_a_strong_secret() {
        let err = ProducerConfig::from_env(&Env::default()).expect_err("no secret");
        assert!(err.to_string().contains("TOKEN_SECRET is required"));
        let err = ProducerConfig::from_env(&Env::from_pairs([("TOKEN_SECRET", "short")])).expect_err("weak");
        assert!(err.to_string().contains("at least 32 bytes"));
        let ok = ProducerConfig::from_env(&Env::from_pairs([("TOKEN_SECRET", "x".repeat(32))])).expect("strong secret");
        assert!(!ok.token_secret_is_default);
        assert!(!format!("{ok:?}").contains("xxxx"), "the secret is never printed");
    }

    #[test]
    fn development_falls_back_to_a_default_secret() {
        let c = ProducerConfig::from_env(&Env::from_pairs([("APP_ENV", "development")])).expect("dev");
        assert!(c.token_secret_is_default);
        assert_eq!(c.port, 9001);
        assert_eq!(c.produce_timeout, Duration::from_secs(5));
    }

    #[test]
    fn every_bad_value_is_reported() {
        let env = Env::from_pairs([
            ("APP_ENV", "staging"),
            ("PORT", "0"),
            ("PRODUCE_TIMEOUT_MS", "x"),
            ("KAFKA_BROKERS", "nope"),
        ]);
        let text = ProducerConfig::from_env(&env).expect_err("bad").to_string();
        for needle in ["APP_ENV", "PORT", "PRODUCE_TIMEOUT_MS", "KAFKA_BROKERS"] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }
}
