//! Publishing records: an idempotent rdkafka producer with `acks=all` and Java-compatible key
//! placement (`murmur2_random`). `publish` returns only once the broker acknowledged the record,
//! or fails within the produce timeout: never a success for an unpublished record.

use common::kafka::{KafkaContext, KafkaSettings};
use common::producer::RenewableProducer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use std::time::Duration;

/// Where the broker stored a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// Why a record was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No acknowledgement within the produce timeout (the broker is down or too slow).
    #[error("the broker did not acknowledge the record within {0:?}")]
    Timeout(Duration),
    /// The broker or client refused the record.
    #[error("the broker refused the record: {0}")]
    Kafka(KafkaError),
}

/// The Kafka producer.
pub struct Publisher {
    /// Replaced after a fatal error, so the next publish goes through a working producer.
    producer: RenewableProducer,
    timeout: Duration,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Publisher {
    /// Creates the producer. `timeout` bounds every publish (librdkafka's `message.timeout.ms`).
    pub fn new(settings: &KafkaSettings, timeout: Duration) -> Result<Self, KafkaError> {
        let settings = settings.clone();
        let build = move || -> Result<FutureProducer<KafkaContext>, KafkaError> {
            let mut config = settings.client_config(common::kafka::ClientRole::Producer);
            config
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("partitioner", "murmur2_random")
                .set("message.timeout.ms", timeout.as_millis().to_string())
                .set("linger.ms", "2");
            config.create_with_context(KafkaContext::new(&settings))
        };
        Ok(Self { producer: RenewableProducer::new(build)?, timeout })
    }

    /// Publishes one record and waits for the broker's acknowledgement.
    pub async fn publish(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<Published, PublishError> {
        let headers = headers.iter().fold(OwnedHeaders::new_with_capacity(headers.len()), |h, (k, v)| {
            h.insert(Header { key: k, value: Some(v.as_bytes()) })
        });
        let record = FutureRecord::to(topic).key(key).payload(payload).headers(headers);
        // librdkafka's message timeout fails the delivery itself; the outer timer only guards
        // against a delivery report that never comes.
        let producer = self.producer.current();
        let delivery = producer.send(record, Timeout::After(self.timeout));
        match tokio::time::timeout(self.timeout + Duration::from_secs(1), delivery).await {
            Err(_) => Err(PublishError::Timeout(self.timeout)),
            Ok(Ok(delivered)) => Ok(Published { partition: delivered.partition, offset: delivered.offset }),
            Ok(Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::MessageTimedOut), _))) => {
                Err(PublishError::Timeout(self.timeout))
            }
            Ok(Err((e, _))) => {
                if RenewableProducer::is_fatal(&e) {
                    self.producer.renew(&producer);
                }
                Err(PublishError::Kafka(e))
            }
        }
    }

    /// Waits for every queued record to be delivered (at shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.current().flush(Timeout::After(timeout))
    }
}
