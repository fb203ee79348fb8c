//! Sending records to `<topic>.retry` and `<topic>.dlq`: an idempotent producer with `acks=all`,
//! retried until the broker acknowledges (a record's offset is stored only after that), or until
//! the partition is revoked or the host stops (then the source record is redelivered later).

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

    /// Sends `record`'s key and value with `headers` to `topic`, retrying with backoff until the
    /// broker acknowledges or `stop` turns true.
    pub async fn send(
        &self,
        topic: &str,
        record: &Record,
        headers: &[RecordHeader],
        stop: &mut watch::Receiver<bool>,
    ) -> Sent {
        let mut delay = Duration::from_millis(100);
        loop {
            let owned = headers.iter().fold(OwnedHeaders::new_with_capacity(headers.len()), |h, header| {
                h.insert(Header { key: &header.key, value: Some(header.value.as_slice()) })
            });
            let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(owned);
            if let Some(key) = &record.key {
                out = out.key(key.as_slice());
            }
            if let Some(value) = &record.value {
                out = out.payload(value.as_slice());
            }
            if let Some(ts) = record.timestamp_ms {
                out = out.timestamp(ts);
            }
            let result = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return Sent::Abandoned,
                r = self.producer.send(out, Timeout::After(Duration::from_secs(5))) => r,
            };
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
