//! Handlers as files: the registry of active handlers per topic ([`registry`]) and the loader
//! that watches `HANDLERS_DIR` and validates, swaps in, rejects or removes them ([`loader`]).

pub mod loader;
pub mod registry;

pub use loader::Loader;
pub use registry::{ActiveHandler, HandlerCode, HandlerStatus, NativeHandler, Registry, TopicCounters};

/// Whether `topic` can be a handler's topic: a legal Kafka topic name that is not itself one of
/// the host's retry or dead-letter topics.
pub fn valid_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > 200 {
        return Err(format!("topic name {topic:?} must be 1 to 200 characters"));
    }
    if topic == "."
        || topic == ".."
        || !topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!("topic name {topic:?} may only hold ASCII letters, digits, '.', '_' and '-'"));
    }
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
