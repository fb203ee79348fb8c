//! The producer service: a stateless axum + rdkafka HTTP service that creates users and tokens and
//! publishes them to `new-user-created` and `issued-token`.
//!
//! Module map: [`config`] (environment), [`api`] (the public and internal routers, errors, JSON
//! contract), [`publisher`] (Kafka), [`token`] (signed tokens), [`idempotency`]
//! (`Idempotency-Key` store), [`metrics`].

pub mod api;
pub mod config;
pub mod idempotency;
pub mod metrics;
pub mod publisher;
pub mod token;

use std::sync::Arc;

/// Builds the application state from a validated configuration.
pub fn state(config: &config::ProducerConfig) -> Result<api::AppState, rdkafka::error::KafkaError> {
    Ok(api::AppState {
        publisher: Arc::new(publisher::Publisher::new(&config.kafka, config.produce_timeout)?),
        tokens: token::TokenSigner::new(config.token_secret.clone(), config.token_ttl),
        idempotency: idempotency::IdempotencyStore::new(config.idempotency_window, config.idempotency_max_keys),
        metrics: Arc::new(metrics::Metrics::default()),
        operator_token: config.operator_token.clone(),
    })
}
