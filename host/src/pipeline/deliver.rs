//! Sending records to `<topic>.retry`, `<topic>.dlq` and the events topic: an idempotent
//! producer with `acks=all`. A send is retried while its failure is transient (the broker is
//! down, a leader moves, a request times out) until the broker acknowledges it (a record's
//! offset is stored only after that) or the partition is told to stop (the send ends
//! `Err(Stopped)`, and the source record is redelivered). A failure that no retry can mend
//! (the copy is over the size limit, the broker refuses the topic or the record) is returned at
//! once, for the caller to send the record somewhere else ([`super::flow`] decides where). While a send keeps failing, the
//! partition is reported stalled, with the reason, on `/readyz` and `/handlers`.
//!
//! Copies carry the time they are written, not the source record's (which is in their headers):
//! a copy's age decides when retention deletes it, and an old source record's copy must not be
//! deleted minutes after it was written.

use super::PartitionHealth;
use super::stop::{Stop, Stopped};
use crate::record::Header as RecordHeader;
use common::kafka::{KafkaContext, KafkaSettings};
use common::producer::RenewableProducer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::time::Duration;

/// Largest record the host writes (librdkafka's `message.max.bytes` for this producer, unless
/// `KAFKA_OPT_MESSAGE_MAX_BYTES` sets it): the retry and dead-letter topics the host creates take
/// as much (`max.message.bytes`), and a copy of a record near a source topic's limit of 1 MiB,
/// headers added, fits. Amazon MSK Serverless allows 8 MiB at most.
pub const MAX_COPY_BYTES: u64 = 8 << 20;

/// The retry/dead-letter/events producer, replaced after a fatal error of the idempotent
/// producer (which leaves the old one unable to send anything).
pub struct Deliverer {
    producer: RenewableProducer,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer").finish_non_exhaustive()
    }
}

/// The parts of one outgoing record besides its topic and headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outgoing<'a> {
    /// The key, if any.
    pub key: Option<&'a [u8]>,
    /// The value; `None` for a tombstone.
    pub value: Option<&'a [u8]>,
}

/// How a send ended (when it was not stopped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The broker acknowledged the record.
    Acknowledged,
    /// No retry will get this record onto this topic.
    Refused(Refusal),
}

/// Why a record will never be written to a topic, as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Whether its size is the problem (a smaller record might still be written).
    pub too_large: bool,
    /// The error, for the dead letter's reason.
    pub reason: String,
}

/// What a failed send calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Try again: the cluster may take it later.
    Transient,
    /// The record is over a size limit (the client's, the topic's or the broker's).
    TooLarge,
    /// The broker refuses it for good: authorization, policy, an invalid record or topic.
    Refused,
    /// The idempotent producer hit a fatal error: it must be replaced, then the send retried.
    Fatal,
}

/// Sorts a produce error. Pure, so that every code's fate is a unit test.
pub(crate) fn classify(code: Option<RDKafkaErrorCode>) -> Failure {
    use RDKafkaErrorCode as C;
    match code {
        Some(C::MessageSizeTooLarge | C::MessageBatchTooLarge | C::InvalidMessageSize) => Failure::TooLarge,
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::InvalidTimestamp
            | C::InvalidRecord
            | C::PolicyViolation
            | C::UnsupportedForMessageFormat
            | C::UnsupportedCompressionType
            | C::InvalidRequiredAcks
            | C::InvalidTopic
            | C::InvalidArgument,
        ) => Failure::Refused,
        Some(C::Fatal) => Failure::Fatal,
        _ => Failure::Transient,
    }
}

/// The longest pause between two attempts of a send.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Deliverer {
    /// Creates the producer.
    pub fn new(settings: &KafkaSettings) -> Result<Self, KafkaError> {
        let settings = settings.clone();
        Ok(Self { producer: RenewableProducer::new(move || Self::producer(&settings))? })
    }

    fn producer(settings: &KafkaSettings) -> Result<FutureProducer<KafkaContext>, KafkaError> {
        let mut config = settings.client_config(common::kafka::ClientRole::Producer);
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .set("linger.ms", "1");
        if config.get("message.max.bytes").is_none() {
            config.set("message.max.bytes", MAX_COPY_BYTES.to_string());
        }
        config.create_with_context(KafkaContext::new(settings))
    }

    /// Sends one record made of `out` and `headers` to `topic`, stamped with the time it is
    /// written; retries transient failures with backoff until the broker acknowledges, or
    /// `Err(Stopped)` when `stop` is raised between two attempts. While it keeps failing, `health` reports the partition
    /// stalled (until the partition moves on: its record is final).
    pub async fn send(
        &self,
        topic: &str,
        out: Outgoing<'_>,
        headers: &[RecordHeader],
        stop: &mut Stop,
        health: &PartitionHealth,
    ) -> Result<Sent, Stopped> {
        let mut delay = Duration::from_millis(100);
        loop {
            let owned = headers.iter().fold(OwnedHeaders::new_with_capacity(headers.len()), |h, header| {
                h.insert(Header { key: &header.key, value: Some(header.value.as_slice()) })
            });
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(owned);
            if let Some(key) = out.key {
                record = record.key(key);
            }
            if let Some(value) = out.value {
                record = record.payload(value);
            }
            // A send in flight is seen through even when told to stop: abandoning it would leave
            // a record the broker may well take (an event, a retry, a dead letter) with its source
            // record unstored, so both would be sent again. librdkafka's message timeout bounds
            // the send; at shutdown or revoke, the drain timeout aborts the task sooner.
            let producer = self.producer.current();
            let result = producer.send(record, Timeout::After(Duration::from_secs(5))).await;
            let error = match result {
                Ok(_) => return Ok(Sent::Acknowledged),
                Err((e, _)) => e,
            };
            let reason = format!("cannot write to {topic}: {error}");
            match classify(error.rdkafka_error_code()) {
                Failure::TooLarge => return Ok(Sent::Refused(Refusal { too_large: true, reason })),
                Failure::Refused => return Ok(Sent::Refused(Refusal { too_large: false, reason })),
                Failure::Fatal => self.producer.renew(&producer),
                Failure::Transient => {}
            }
            tracing::warn!(topic, "{reason}; retrying in {delay:?}");
            health.failing(&reason);
            stop.sleep(delay).await?;
            delay = (delay * 2).min(MAX_BACKOFF);
        }
    }

    /// As [`Deliverer::send`], but a refusal is not returned: the partition is reported stalled
    /// with its reason and the send is retried with backoff until it succeeds, or `Err(Stopped)`
    /// when `stop` is raised (for a record that has nowhere else to go; an operator mends the
    /// cause: a topic's permissions, its size limit).
    pub async fn send_or_stall(
        &self,
        topic: &str,
        out: Outgoing<'_>,
        headers: &[RecordHeader],
        stop: &mut Stop,
        health: &PartitionHealth,
    ) -> Result<(), Stopped> {
        loop {
            match self.send(topic, out, headers, stop, health).await? {
                Sent::Refused(refusal) => {
                    tracing::error!(topic, "{}; the partition waits until it can be written", refusal.reason);
                    health.failing(&refusal.reason);
                    stop.sleep(MAX_BACKOFF).await?;
                }
                Sent::Acknowledged => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_errors_authorization_and_invalid_records_are_not_retried() {
        use RDKafkaErrorCode as C;
        assert_eq!(classify(Some(C::MessageSizeTooLarge)), Failure::TooLarge);
        assert_eq!(classify(Some(C::MessageBatchTooLarge)), Failure::TooLarge);
        for code in [
            C::TopicAuthorizationFailed,
            C::ClusterAuthorizationFailed,
            C::InvalidTimestamp,
            C::InvalidRecord,
            C::PolicyViolation,
        ] {
            assert_eq!(classify(Some(code)), Failure::Refused, "{code:?}");
        }
        assert_eq!(classify(Some(C::Fatal)), Failure::Fatal);
    }

    #[test]
    fn outages_and_leader_moves_are_retried() {
        use RDKafkaErrorCode as C;
        for code in [
            C::MessageTimedOut,
            C::QueueFull,
            C::NotEnoughReplicas,
            C::NotEnoughReplicasAfterAppend,
            C::NotLeaderForPartition,
            C::LeaderNotAvailable,
            C::RequestTimedOut,
            C::NetworkException,
            C::AllBrokersDown,
            C::UnknownTopicOrPartition,
        ] {
            assert_eq!(classify(Some(code)), Failure::Transient, "{code:?}");
        }
        assert_eq!(classify(None), Failure::Transient);
    }
}
