//! An rdkafka producer that is replaced after a fatal error. An idempotent producer that hits one
//! (its sequence state is lost, the broker fenced it) refuses every later record; both services'
//! producers take a new one instead, so a publish after the error is a publish again.

use crate::kafka::KafkaContext;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use std::sync::{Arc, RwLock};

/// How a producer is made.
type Build = Box<dyn Fn() -> KafkaResult<FutureProducer<KafkaContext>> + Send + Sync>;

/// A producer, and how to make another.
pub struct RenewableProducer {
    build: Build,
    current: RwLock<Arc<FutureProducer<KafkaContext>>>,
}

impl std::fmt::Debug for RenewableProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenewableProducer").finish_non_exhaustive()
    }
}

impl RenewableProducer {
    /// Makes the first producer with `build`, which makes the next ones too.
    pub fn new(
        build: impl Fn() -> KafkaResult<FutureProducer<KafkaContext>> + Send + Sync + 'static,
    ) -> KafkaResult<Self> {
        let first = build()?;
        Ok(Self { build: Box::new(build), current: RwLock::new(Arc::new(first)) })
    }

    /// The producer to send with now.
    pub fn current(&self) -> Arc<FutureProducer<KafkaContext>> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether `error` is the fatal error that calls for [`RenewableProducer::renew`].
    pub fn is_fatal(error: &KafkaError) -> bool {
        error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal)
    }

    /// Replaces `failed` (unless a send that failed alongside already did).
    pub fn renew(&self, failed: &Arc<FutureProducer<KafkaContext>>) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&current, failed) {
            return;
        }
        let fatal = failed.client().fatal_error().map(|(_, reason)| reason).unwrap_or_default();
        match (self.build)() {
            Ok(producer) => {
                tracing::warn!("the Kafka producer hit a fatal error ({fatal}); replaced it");
                let old = std::mem::replace(&mut *current, Arc::new(producer));
                // Dropping a producer flushes and joins its threads: not on a runtime worker.
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => drop(runtime.spawn_blocking(move || drop(old))),
                    Err(_) => drop(old),
                }
            }
            Err(e) => tracing::error!("the Kafka producer hit a fatal error ({fatal}); cannot replace it: {e}"),
        }
    }
}
