//! Creating the topics a service needs when they are missing: existing topics are left alone
//! (their partition count is the operator's), missing ones are created with the configured
//! partitions and replication factor.

use crate::kafka::{KafkaContext, KafkaSettings};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use std::time::Duration;

/// Why topics could not be ensured.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The admin client could not be built.
    #[error("cannot create a Kafka admin client: {0}")]
    Client(rdkafka::error::KafkaError),
    /// Metadata could not be fetched.
    #[error("cannot read topic metadata from {brokers}: {source}")]
    Metadata {
        /// The brokers asked.
        brokers: String,
        /// The cause.
        source: rdkafka::error::KafkaError,
    },
    /// Creating a topic failed.
    #[error("cannot create topic {topic}: {reason}")]
    Create {
        /// The topic.
        topic: String,
        /// The broker's answer.
        reason: String,
    },
}

/// A topic to create when missing, with the topic configs to create it with (`retention.ms`,
/// `max.message.bytes`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic's name.
    pub name: String,
    /// Topic configs, name and value.
    pub config: Vec<(&'static str, String)>,
}

impl TopicSpec {
    /// A topic with the broker's default configs.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), config: Vec::new() }
    }

    /// The same topic with `key` set to `value`.
    pub fn with(mut self, key: &'static str, value: impl ToString) -> Self {
        self.config.push((key, value.to_string()));
        self
    }
}

/// Creates every topic of `topics` that does not exist yet, with the broker's default configs;
/// returns the names it created.
pub async fn ensure_topics(
    settings: &KafkaSettings,
    topics: &[&str],
    timeout: Duration,
) -> Result<Vec<String>, TopicError> {
    let specs: Vec<TopicSpec> = topics.iter().map(|t| TopicSpec::new(*t)).collect();
    ensure_topic_specs(settings, &specs, timeout).await
}

/// Creates every topic of `topics` that does not exist yet, with its configs (an existing
/// topic's configs are left as they are); returns the names it created.
pub async fn ensure_topic_specs(
    settings: &KafkaSettings,
    topics: &[TopicSpec],
    timeout: Duration,
) -> Result<Vec<String>, TopicError> {
    let admin: AdminClient<KafkaContext> = settings
        .client_config(crate::kafka::ClientRole::Admin)
        .create_with_context(KafkaContext::new(settings))
        .map_err(TopicError::Client)?;
    let existing: Vec<String> = {
        let metadata = admin
            .inner()
            .fetch_metadata(None, timeout)
            .map_err(|source| TopicError::Metadata { brokers: settings.brokers.clone(), source })?;
        metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.name().to_string())
            .collect()
    };
    let missing: Vec<&TopicSpec> = topics.iter().filter(|t| !existing.contains(&t.name)).collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let new: Vec<NewTopic> = missing
        .iter()
        .map(|t| {
            let topic =
                NewTopic::new(&t.name, settings.topic_partitions, TopicReplication::Fixed(settings.replication_factor));
            t.config.iter().fold(topic, |topic, (k, v)| topic.set(k, v))
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
    let results = admin.create_topics(&new, &options).await.map_err(|e| TopicError::Create {
        topic: missing.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(","),
        reason: e.to_string(),
    })?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(topic) => created.push(topic),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicError::Create { topic, reason: code.to_string() }),
        }
    }
    Ok(created)
}

/// The configs of existing `topics` that fall short of the values they would be created with (a
/// shorter `retention.ms`, a smaller `max.message.bytes`), one sentence each, for the operator:
/// the services never change an existing topic.
pub async fn config_shortfalls(
    settings: &KafkaSettings,
    topics: &[TopicSpec],
    timeout: Duration,
) -> Result<Vec<String>, TopicError> {
    let wanted: Vec<&TopicSpec> = topics.iter().filter(|t| !t.config.is_empty()).collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let admin: AdminClient<KafkaContext> = settings
        .client_config(crate::kafka::ClientRole::Admin)
        .create_with_context(KafkaContext::new(settings))
        .map_err(TopicError::Client)?;
    let specifiers: Vec<ResourceSpecifier<'_>> = wanted.iter().map(|t| ResourceSpecifier::Topic(&t.name)).collect();
    let options = AdminOptions::new().request_timeout(Some(timeout));
    let described = admin
        .describe_configs(&specifiers, &options)
        .await
        .map_err(|source| TopicError::Metadata { brokers: settings.brokers.clone(), source })?;
    let mut shortfalls = Vec::new();
    for (spec, resource) in wanted.iter().zip(described) {
        let Ok(resource) = resource else { continue };
        for (key, want) in &spec.config {
            let have = resource.get(key).and_then(|e| e.value.as_deref()).and_then(|v| v.parse::<i64>().ok());
            if let (Some(have), Ok(want)) = (have, want.parse::<i64>())
                && falls_short(have, want)
            {
                shortfalls.push(format!(
                    "topic {} has {key}={have}, less than the {want} it would be created with",
                    spec.name
                ));
            }
        }
    }
    Ok(shortfalls)
}

/// Whether a limit of `have` is less than `want` (-1 is no limit).
fn falls_short(have: i64, want: i64) -> bool {
    match (have, want) {
        (-1, _) => false,
        (_, -1) => true,
        (have, want) => have < want,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shorter_or_bounded_limit_falls_short_and_no_limit_never_does() {
        assert!(falls_short(604_800_000, 1_209_600_000));
        assert!(falls_short(1_209_600_000, -1), "a bounded retention where none was wanted");
        assert!(!falls_short(-1, 1_209_600_000));
        assert!(!falls_short(8 << 20, 8 << 20));
    }
}
