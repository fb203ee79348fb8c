//! Sending records to `<topic>.retry`, `<topic>.dlq` and the events topic: an idempotent
//! producer with `acks=all`, retried until the broker acknowledges (a record's offset is stored
//! only after that), or until the partition is revoked or the host stops (then the source record
//! is redelivered later).

use crate::record::{Header as RecordHeader, Record};
use common::kafka::{KafkaContext, KafkaSettings};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::time::Duration;
use tokio::sync::watch;

/// The retry/dead-letter producer.
pub struct Deliverer {
    producer: FutureProducer<KafkaContext>,
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
    /// The timestamp in milliseconds since the Unix epoch; `None` lets the producer set it.
    pub timestamp_ms: Option<i64>,
}

/// Whether a send finished or was given up because the worker is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The broker acknowledged the record.
    Acknowledged,
    /// The worker was told to stop first.
    Abandoned,
}

impl Deliverer {
    /// Creates the producer.
    pub fn new(settings: &KafkaSettings) -> Result<Self, rdkafka::error::KafkaError> {
        let mut config = settings.client_config(common::kafka::ClientRole::Producer);
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .set("linger.ms", "1");
        Ok(Self { producer: config.create_with_context(KafkaContext::new(settings))? })
    }

    /// Sends `record`'s key, value and timestamp with `headers` to `topic`, retrying with backoff
    /// until the broker acknowledges, or `stop` turns true between two attempts.
    pub async fn send(
        &self,
        topic: &str,
        record: &Record,
        headers: &[RecordHeader],
        stop: &mut watch::Receiver<bool>,
    ) -> Sent {
        let out =
            Outgoing { key: record.key.as_deref(), value: record.value.as_deref(), timestamp_ms: record.timestamp_ms };
        self.send_parts(topic, out, headers, stop).await
    }

    /// Sends one record made of `out` and `headers` to `topic`, retrying with backoff until the
    /// broker acknowledges, or `stop` turns true between two attempts.
    pub async fn send_parts(
        &self,
        topic: &str,
        out: Outgoing<'_>,
        headers: &[RecordHeader],
        stop: &mut watch::Receiver<bool>,
    ) -> Sent {
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
            if let Some(ts) = out.timestamp_ms {
                record = record.timestamp(ts);
            }
            // A send in flight is seen through even when told to stop: abandoning it would leave
            // a record the broker may well take (an event, a retry, a dead letter) with its source
            // record unstored, so both would be sent again. librdkafka's message timeout bounds
            // the send; at shutdown or revoke, the drain timeout aborts the task sooner.
            let result = self.producer.send(record, Timeout::After(Duration::from_secs(5))).await;
            match result {
                Ok(_) => return Sent::Acknowledged,
                Err((e, _)) => {
                    tracing::warn!(topic, "cannot deliver to {topic} yet: {e}; retrying in {delay:?}");
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return Sent::Abandoned,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
