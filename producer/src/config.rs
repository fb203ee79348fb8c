//! The producer's configuration, read once from the environment into a validated value.

use common::auth::OperatorToken;
use common::env::{ConfigError, Env, Problems};
use common::kafka::KafkaSettings;
use common::telemetry::LogFormat;
use std::time::Duration;

/// The development-only token secret; refused in production.
pub const DEVELOPMENT_SECRET: &str = "development-only-secret-do-not-use-in-production";
/// Shortest `TOKEN_SECRET` accepted in production (HS256 wants at least 256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

pub use common::env::AppEnv;

/// Validated producer settings.
#[derive(Clone)]
pub struct ProducerConfig {
    /// The public listener's port (the load balancer's target): [`crate::api::public_router`].
    pub port: u16,
    /// The internal listener's port (Service Connect): [`crate::api::internal_router`].
    pub internal_port: u16,
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
    /// What the operator routes require; `None` (development only) leaves them open.
    pub operator_token: Option<OperatorToken>,
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
            .field("internal_port", &self.internal_port)
            .field("app_env", &self.app_env)
            .field("kafka", &self.kafka)
            .field("produce_timeout", &self.produce_timeout)
            .field("token_secret", &"<redacted>")
            .field("token_ttl", &self.token_ttl)
            .field("operator_token", &self.operator_token)
            .field("idempotency_window", &self.idempotency_window)
            .field("idempotency_max_keys", &self.idempotency_max_keys)
            .finish_non_exhaustive()
    }
}

/// Every variable the producer reads besides the shared `KAFKA_*` ones.
pub const VARIABLES: &[&str] = &[
    "PORT",
    "INTERNAL_PORT",
    "APP_ENV",
    "PRODUCE_TIMEOUT_MS",
    "TOKEN_SECRET",
    "TOKEN_TTL_SECS",
    "OPERATOR_TOKEN",
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
        let internal_port = p.parse_in(env, "INTERNAL_PORT", 9002u16, 1..=65535);
        if port == internal_port {
            p.push(format!("PORT and INTERNAL_PORT must differ (both are {port})"));
        }
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
        let operator_token = common::auth::operator_token(env, app_env == AppEnv::Production, &mut p);
        let Some(kafka) = kafka else {
            return Err(p.finish(()).expect_err("kafka problems were recorded"));
        };
        p.finish(Self {
            port,
            internal_port,
            app_env,
            kafka,
            produce_timeout: Duration::from_millis(produce_timeout_ms),
            token_secret,
            token_secret_is_default,
            token_ttl: Duration::from_secs(token_ttl_secs),
            operator_token,
            idempotency_window: Duration::from_secs(idempotency_window_secs),
            idempotency_max_keys,
            log_format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPERATOR: &str = "operator-token-of-at-least-32-bytes";

    #[test]
    fn production_requires_a_strong_secret() {
        let err = ProducerConfig::from_env(&Env::default()).expect_err("no secret");
        assert!(err.to_string().contains("TOKEN_SECRET is required"));
        let err = ProducerConfig::from_env(&Env::from_pairs([("TOKEN_SECRET", "short"), ("OPERATOR_TOKEN", OPERATOR)]))
            .expect_err("weak");
        assert!(err.to_string().contains("at least 32 bytes"));
        let ok = ProducerConfig::from_env(&Env::from_pairs([
            ("TOKEN_SECRET", "x".repeat(32)),
            ("OPERATOR_TOKEN", OPERATOR.into()),
        ]))
        .expect("strong secret");
        assert!(!ok.token_secret_is_default);
        let printed = format!("{ok:?}");
        assert!(!printed.contains("xxxx") && !printed.contains(OPERATOR), "no secret is ever printed: {printed}");
    }

    #[test]
    fn production_requires_the_operator_token_and_reports_it_with_every_other_problem() {
        let err = ProducerConfig::from_env(&Env::default()).expect_err("no secrets").to_string();
        for needle in ["TOKEN_SECRET is required", "OPERATOR_TOKEN is required in production"] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
        let env = Env::from_pairs([("TOKEN_SECRET", "x".repeat(32)), ("OPERATOR_TOKEN", "hunter2".into())]);
        let err = ProducerConfig::from_env(&env).expect_err("weak operator token").to_string();
        assert!(err.contains("OPERATOR_TOKEN must be at least 32 bytes") && !err.contains("hunter2"), "{err}");
    }

    #[test]
    fn development_falls_back_to_a_default_secret_and_open_operator_routes() {
        let c = ProducerConfig::from_env(&Env::from_pairs([("APP_ENV", "development")])).expect("dev");
        assert!(c.token_secret_is_default);
        assert!(c.operator_token.is_none());
        assert_eq!((c.port, c.internal_port), (9001, 9002));
        assert_eq!(c.produce_timeout, Duration::from_secs(5));
    }

    #[test]
    fn the_two_listeners_need_two_ports() {
        let env = Env::from_pairs([("APP_ENV", "development"), ("PORT", "9005"), ("INTERNAL_PORT", "9005")]);
        let err = ProducerConfig::from_env(&env).expect_err("same port").to_string();
        assert!(err.contains("PORT and INTERNAL_PORT must differ"), "{err}");
    }

    #[test]
    fn every_bad_value_is_reported() {
        let env = Env::from_pairs([
            ("APP_ENV", "staging"),
            ("PORT", "0"),
            ("INTERNAL_PORT", "70000"),
            ("PRODUCE_TIMEOUT_MS", "x"),
            ("KAFKA_BROKERS", "nope"),
        ]);
        let text = ProducerConfig::from_env(&env).expect_err("bad").to_string();
        for needle in ["APP_ENV", "PORT", "INTERNAL_PORT", "PRODUCE_TIMEOUT_MS", "KAFKA_BROKERS"] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }
}
