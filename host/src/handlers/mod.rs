//! Handlers as files: the registry of active handlers per topic ([`registry`]) and the loader
//! that watches `HANDLERS_DIR` and validates, swaps in, rejects or removes them ([`loader`]).

pub mod loader;
pub mod registry;

pub use loader::Loader;
#[cfg(feature = "native-handlers")]
pub use registry::NativeHandler;
pub use registry::{ActiveHandler, HandlerCode, HandlerStatus, Registry, TopicCounters};

/// Whether `name` is a legal Kafka topic name of at most `max_len` characters: ASCII letters,
/// digits, `.`, `_` and `-`, and not `.` or `..` (Kafka's own limit is 249).
pub fn kafka_topic_name(name: &str, max_len: usize) -> Result<(), String> {
    if name.is_empty() || name.len() > max_len {
        return Err(format!("topic name {name:?} must be 1 to {max_len} characters"));
    }
    if name == "." || name == ".." || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(format!("topic name {name:?} may only hold ASCII letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

/// Whether `topic` can be a handler's topic: a legal Kafka topic name short enough for its retry
/// and dead-letter topics, and not itself one of them.
pub fn valid_topic(topic: &str) -> Result<(), String> {
    kafka_topic_name(topic, 200)?;
    if topic.ends_with(RETRY_SUFFIX) || topic.ends_with(DLQ_SUFFIX) {
        return Err(format!("topic name {topic:?} ends like a retry or dead-letter topic"));
    }
    Ok(())
}

/// Suffix of a topic's retry topic.
pub const RETRY_SUFFIX: &str = ".retry";
/// Suffix of a topic's dead-letter topic.
pub const DLQ_SUFFIX: &str = ".dlq";

/// `<topic>.retry`.
pub fn retry_topic(topic: &str) -> String {
    format!("{topic}{RETRY_SUFFIX}")
}

/// `<topic>.dlq`.
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}{DLQ_SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        for good in ["handler-events", "a", "A.b_c-9", &"x".repeat(249)] {
            assert_eq!(kafka_topic_name(good, 249), Ok(()), "{good}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "ü", &"x".repeat(250)] {
            assert!(kafka_topic_name(bad, 249).is_err(), "{bad:?} accepted");
        }
        assert!(valid_topic(&"x".repeat(201)).is_err(), "room is left for the .retry and .dlq suffixes");
        assert!(valid_topic("orders.retry").is_err() && valid_topic("orders.dlq").is_err());
    }
}
