//! Kafka connection and security settings, read from `KAFKA_*` variables, shared by the producer
//! and the host, and turned into an rdkafka `ClientConfig`.
//!
//! Variables: `KAFKA_BROKERS`, `KAFKA_SECURITY_PROTOCOL` (`plaintext`, `ssl`, `sasl_plaintext`,
//! `sasl_ssl`), `KAFKA_SASL_MECHANISM` (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, or
//! `AWS_MSK_IAM` for Amazon MSK's IAM authentication, with `AWS_REGION`),
//! `KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD`, `KAFKA_SSL_CA_LOCATION`, `KAFKA_CLIENT_ID`, and
//! `KAFKA_OPT_<NAME>` to pass any other librdkafka property through (`KAFKA_OPT_FETCH_MAX_BYTES`
//! sets `fetch.max.bytes`: the name lower-cased, `_` becoming `.`). Any other `KAFKA_` variable
//! that this project does not know is an error, so a misspelt name fails at start.

use crate::env::{ConfigError, Env, Problems};
use rdkafka::client::OAuthToken;
use rdkafka::{ClientConfig, ClientContext};

/// Every `KAFKA_` variable the project reads (either service); others are rejected.
pub const KNOWN_VARIABLES: &[&str] = &[
    "KAFKA_BROKERS",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CA_LOCATION",
    "KAFKA_CLIENT_ID",
    "KAFKA_GROUP_ID",
    "KAFKA_TOPIC_PARTITIONS",
    "KAFKA_REPLICATION_FACTOR",
];

/// Prefix of the librdkafka pass-through variables.
pub const PASS_THROUGH_PREFIX: &str = "KAFKA_OPT_";

/// Properties the services set themselves, and their librdkafka aliases: passing them through
/// would break a guarantee or bypass the validated `KAFKA_*` variables (credentials included).
const OWNED_PROPERTIES: &[&str] = &[
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "enable.auto.commit",
    "auto.commit.enable",
    "enable.auto.offset.store",
    "group.id",
    "bootstrap.servers",
    "metadata.broker.list",
    "partitioner",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
];

/// How the client talks to the brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// No TLS, no authentication (local development).
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS (MSK with SCRAM).
    SaslSsl,
}

impl std::str::FromStr for SecurityProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "plaintext" => Ok(Self::Plaintext),
            "ssl" => Ok(Self::Ssl),
            "sasl_plaintext" => Ok(Self::SaslPlaintext),
            "sasl_ssl" => Ok(Self::SaslSsl),
            _ => Err("expected plaintext, ssl, sasl_plaintext or sasl_ssl".into()),
        }
    }
}

impl SecurityProtocol {
    fn as_rdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// SASL credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Sasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    /// User name.
    pub username: String,
    /// Password (never printed).
    pub password: String,
}

impl std::fmt::Debug for Sasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The mechanism name that selects Amazon MSK IAM authentication.
pub const MSK_IAM: &str = "AWS_MSK_IAM";

/// Validated Kafka settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Transport security.
    pub security_protocol: SecurityProtocol,
    /// SASL credentials, when the protocol uses SASL with a user and password.
    pub sasl: Option<Sasl>,
    /// The AWS region, when authenticating to Amazon MSK with IAM (SASL/OAUTHBEARER).
    pub msk_iam_region: Option<String>,
    /// CA bundle for TLS, when not the system's.
    pub ssl_ca_location: Option<String>,
    /// Client id sent to the brokers.
    pub client_id: Option<String>,
    /// Partitions for topics the services create.
    pub topic_partitions: i32,
    /// Replication factor for topics the services create.
    pub replication_factor: i32,
    /// librdkafka properties passed through from `KAFKA_OPT_*`.
    pub extra: Vec<(String, String)>,
}

impl KafkaSettings {
    /// Reads and checks the `KAFKA_*` variables.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let mut p = Problems::default();
        let brokers = env.get("KAFKA_BROKERS").unwrap_or("127.0.0.1:9092").to_string();
        for broker in brokers.split(',') {
            let ok = broker
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.trim().is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                p.push(format!("KAFKA_BROKERS: {broker:?} is not host:port"));
            }
        }
        let security_protocol = p.parse(env, "KAFKA_SECURITY_PROTOCOL", SecurityProtocol::Plaintext);
        let mechanism = env.get("KAFKA_SASL_MECHANISM").unwrap_or("SCRAM-SHA-512").to_ascii_uppercase();
        let (sasl, msk_iam_region) = if security_protocol.uses_sasl() && mechanism == MSK_IAM {
            if security_protocol != SecurityProtocol::SaslSsl {
                p.push("KAFKA_SASL_MECHANISM=AWS_MSK_IAM needs KAFKA_SECURITY_PROTOCOL=sasl_ssl");
            }
            let region = env.get("AWS_REGION").or_else(|| env.get("AWS_DEFAULT_REGION")).map(str::to_string);
            if region.is_none() {
                p.push("KAFKA_SASL_MECHANISM=AWS_MSK_IAM needs AWS_REGION");
            }
            (None, region)
        } else if security_protocol.uses_sasl() {
            if !matches!(mechanism.as_str(), "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") {
                p.push(format!(
                    "KAFKA_SASL_MECHANISM={mechanism:?}: expected PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or {MSK_IAM}"
                ));
            }
            let username = env.get("KAFKA_SASL_USERNAME").unwrap_or_default().to_string();
            let password = env.get("KAFKA_SASL_PASSWORD").unwrap_or_default().to_string();
            if username.is_empty() || password.is_empty() {
                p.push(
                    "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are required with a sasl_* KAFKA_SECURITY_PROTOCOL",
                );
            }
            (Some(Sasl { mechanism, username, password }), None)
        } else {
            for name in ["KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"] {
                if env.get(name).is_some() {
                    p.push(format!("{name} is set but KAFKA_SECURITY_PROTOCOL does not use SASL"));
                }
            }
            (None, None)
        };
        let topic_partitions = p.parse_in(env, "KAFKA_TOPIC_PARTITIONS", 8, 1..=10_000);
        let replication_factor = p.parse_in(env, "KAFKA_REPLICATION_FACTOR", 1, 1..=32);
        let mut extra = Vec::new();
        for (name, value) in env.with_prefix("KAFKA_") {
            if let Some(property) = name.strip_prefix(PASS_THROUGH_PREFIX) {
                let property = property.to_ascii_lowercase().replace('_', ".");
                if property.is_empty() || OWNED_PROPERTIES.contains(&property.as_str()) {
                    p.push(format!("{name}: {property:?} cannot be passed through (the service sets it)"));
                } else {
                    extra.push((property, value.to_string()));
                }
            } else if !KNOWN_VARIABLES.contains(&name) {
                p.push(format!(
                    "{name} is not a known variable (known: {}, and {PASS_THROUGH_PREFIX}*)",
                    KNOWN_VARIABLES.join(", ")
                ));
            }
        }
        p.finish(Self {
            brokers,
            security_protocol,
            sasl,
            msk_iam_region,
            ssl_ca_location: env.get("KAFKA_SSL_CA_LOCATION").map(str::to_string),
            client_id: env.get("KAFKA_CLIENT_ID").map(str::to_string),
            topic_partitions,
            replication_factor,
            extra,
        })
    }

    /// A client configuration for a client of `role`, with the connection and security settings
    /// applied; services add their own properties on top. Pass-through properties that do not
    /// apply to the role (a consumer's `fetch.wait.max.ms` on a producer) are left out, so one set
    /// of `KAFKA_OPT_*` variables serves every client of a service without librdkafka warnings.
    pub fn client_config(&self, role: ClientRole) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers).set("security.protocol", self.security_protocol.as_rdkafka());
        if let Some(sasl) = &self.sasl {
            config
                .set("sasl.mechanism", &sasl.mechanism)
                .set("sasl.username", &sasl.username)
                .set("sasl.password", &sasl.password);
        }
        if self.msk_iam_region.is_some() {
            config.set("sasl.mechanism", "OAUTHBEARER");
        }
        if let Some(ca) = &self.ssl_ca_location {
            config.set("ssl.ca.location", ca);
        }
        if let Some(id) = &self.client_id {
            config.set("client.id", id);
        }
        for (k, v) in self.extra.iter().filter(|(k, _)| role.accepts(k)) {
            config.set(k, v);
        }
        config
    }
}

/// What a client does, which decides the pass-through properties it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRole {
    /// A producer: no consumer-only properties.
    Producer,
    /// A group consumer: no producer-only properties.
    Consumer,
    /// An admin client: neither.
    Admin,
}

/// librdkafka properties that only consumers take (scope `C` in its CONFIGURATION.md).
const CONSUMER_ONLY: &[&str] = &[
    "group.instance.id",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol",
    "group.protocol.type",
    "group.remote.assignor",
    "coordinator.query.interval.ms",
    "max.poll.interval.ms",
    "auto.commit.interval.ms",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.error.backoff.ms",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "auto.offset.reset",
    "consume.callback.max.messages",
];

/// librdkafka properties that only producers take (scope `P`).
const PRODUCER_ONLY: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "compression.level",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "sticky.partitioning.linger.ms",
    "request.required.acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "partitioner",
];

impl ClientRole {
    fn accepts(self, property: &str) -> bool {
        match self {
            Self::Producer => !CONSUMER_ONLY.contains(&property),
            Self::Consumer => !PRODUCER_ONLY.contains(&property),
            Self::Admin => !CONSUMER_ONLY.contains(&property) && !PRODUCER_ONLY.contains(&property),
        }
    }
}

/// The client context every Kafka client of the project uses: it answers librdkafka's
/// OAUTHBEARER token requests with MSK IAM tokens when IAM authentication is configured.
#[derive(Debug, Clone, Default)]
pub struct KafkaContext {
    msk_iam_region: Option<String>,
}

impl KafkaContext {
    /// The context for clients made from `settings`.
    pub fn new(settings: &KafkaSettings) -> Self {
        Self { msk_iam_region: settings.msk_iam_region.clone() }
    }

    /// A fresh OAUTHBEARER token (for contexts of other types that delegate here).
    pub fn oauth_token(&self) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        let region = self
            .msk_iam_region
            .as_deref()
            .ok_or("an OAUTHBEARER token was requested but AWS_MSK_IAM is not configured")?;
        let credentials = crate::msk_iam::credentials()?;
        let (token, lifetime_ms) = crate::msk_iam::token(&credentials, region, chrono::Utc::now());
        Ok(OAuthToken { token, principal_name: "msk-iam".into(), lifetime_ms })
    }
}

impl ClientContext for KafkaContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(&self, _config: Option<&str>) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        self.oauth_token()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_local_plaintext() {
        let s = KafkaSettings::from_env(&Env::default()).expect("defaults");
        assert_eq!(s.brokers, "127.0.0.1:9092");
        assert_eq!(s.security_protocol, SecurityProtocol::Plaintext);
        assert_eq!((s.topic_partitions, s.replication_factor), (8, 1));
        assert_eq!(s.client_config(ClientRole::Admin).get("bootstrap.servers"), Some("127.0.0.1:9092"));
    }

    #[test]
    fn scram_over_tls_for_msk() {
        let env = Env::from_pairs([
            ("KAFKA_BROKERS", "b-1.msk:9096,b-2.msk:9096"),
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "scram-sha-512"),
            ("KAFKA_SASL_USERNAME", "svc"),
            ("KAFKA_SASL_PASSWORD", "hunter2"),
            ("KAFKA_OPT_FETCH_MAX_BYTES", "1048576"),
        ]);
        let s = KafkaSettings::from_env(&env).expect("valid");
        let c = s.client_config(ClientRole::Consumer);
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("fetch.max.bytes"), Some("1048576"));
        assert_eq!(s.client_config(ClientRole::Producer).get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(s.client_config(ClientRole::Producer).get("fetch.max.bytes"), None, "a consumer property");
        assert!(!format!("{s:?}").contains("hunter2"), "the password is never printed");
    }

    #[test]
    fn each_client_takes_only_the_pass_through_properties_of_its_role() {
        let env = Env::from_pairs([
            ("KAFKA_OPT_FETCH_WAIT_MAX_MS", "20"),
            ("KAFKA_OPT_LINGER_MS", "5"),
            ("KAFKA_OPT_SOCKET_KEEPALIVE_ENABLE", "true"),
        ]);
        let s = KafkaSettings::from_env(&env).expect("valid");
        let get = |role, key| s.client_config(role).get(key).map(str::to_string);
        assert_eq!(get(ClientRole::Consumer, "fetch.wait.max.ms").as_deref(), Some("20"));
        assert_eq!(get(ClientRole::Producer, "fetch.wait.max.ms"), None);
        assert_eq!(get(ClientRole::Producer, "linger.ms").as_deref(), Some("5"));
        assert_eq!(get(ClientRole::Consumer, "linger.ms"), None);
        for role in [ClientRole::Consumer, ClientRole::Producer, ClientRole::Admin] {
            assert_eq!(get(role, "socket.keepalive.enable").as_deref(), Some("true"), "{role:?} takes shared ones");
        }
        assert_eq!(get(ClientRole::Admin, "linger.ms"), None);
    }

    #[test]
    fn msk_iam_uses_oauthbearer_over_tls_and_needs_a_region() {
        let env = Env::from_pairs([
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("KAFKA_SASL_MECHANISM", "AWS_MSK_IAM"),
            ("AWS_REGION", "eu-west-1"),
        ]);
        let s = KafkaSettings::from_env(&env).expect("valid");
        assert_eq!(s.msk_iam_region.as_deref(), Some("eu-west-1"));
        assert_eq!(s.client_config(ClientRole::Admin).get("sasl.mechanism"), Some("OAUTHBEARER"));
        assert_eq!(s.client_config(ClientRole::Admin).get("sasl.username"), None);
        let err = KafkaSettings::from_env(&Env::from_pairs([
            ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
            ("KAFKA_SASL_MECHANISM", "AWS_MSK_IAM"),
        ]))
        .expect_err("no tls, no region");
        assert!(err.to_string().contains("sasl_ssl") && err.to_string().contains("AWS_REGION"), "{err}");
    }

    #[test]
    fn bad_values_and_unknown_variables_are_all_reported() {
        let env = Env::from_pairs([
            ("KAFKA_BROKERS", "nohostport"),
            ("KAFKA_SECURITY_PROTOCOL", "tls"),
            ("KAFKA_BROKER", "typo:9092"),
            ("KAFKA_OPT_ENABLE_IDEMPOTENCE", "false"),
            ("KAFKA_TOPIC_PARTITIONS", "0"),
        ]);
        let err = KafkaSettings::from_env(&env).expect_err("invalid");
        let text = err.to_string();
        for needle in [
            "KAFKA_BROKERS",
            "KAFKA_SECURITY_PROTOCOL",
            "KAFKA_BROKER is not a known",
            "enable.idempotence",
            "KAFKA_TOPIC_PARTITIONS",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        let err =
            KafkaSettings::from_env(&Env::from_pairs([("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")])).expect_err("no creds");
        assert!(err.to_string().contains("KAFKA_SASL_USERNAME"));
    }

    #[test]
    fn owned_properties_cannot_be_passed_through_under_an_alias_either() {
        for (name, property) in [
            ("KAFKA_OPT_METADATA_BROKER_LIST", "metadata.broker.list"),
            ("KAFKA_OPT_REQUEST_REQUIRED_ACKS", "request.required.acks"),
            ("KAFKA_OPT_AUTO_COMMIT_ENABLE", "auto.commit.enable"),
            ("KAFKA_OPT_SECURITY_PROTOCOL", "security.protocol"),
            ("KAFKA_OPT_SASL_PASSWORD", "sasl.password"),
        ] {
            let err = KafkaSettings::from_env(&Env::from_pairs([(name, "x")])).expect_err(name);
            assert!(err.to_string().contains(&format!("{property:?} cannot be passed through")), "{err}");
        }
    }
}
