//! Creating the topics a service needs when they are missing: existing topics are left alone
//! (their partition count is the operator's), missing ones are created with the configured
//! partitions and replication factor.

use crate::kafka::{KafkaContext, KafkaSettings};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
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

/// Creates every topic of `topics` that does not exist yet; returns the names it created.
pub async fn ensure_topics(
    settings: &KafkaSettings,
    topics: &[&str],
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
    let missing: Vec<&str> = topics.iter().copied().filter(|t| !existing.iter().any(|e| e == t)).collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let new: Vec<NewTopic> = missing
        .iter()
        .map(|t| NewTopic::new(t, settings.topic_partitions, TopicReplication::Fixed(settings.replication_factor)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
    let results = admin
        .create_topics(&new, &options)
        .await
        .map_err(|e| TopicError::Create { topic: missing.join(","), reason: e.to_string() })?;
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
