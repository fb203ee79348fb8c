//! What the producer and the host share, so that neither copies the other: Kafka connection and
//! security settings read from the environment ([`kafka`]), creating missing topics
//! ([`topics`]), the one graceful-shutdown signal ([`shutdown`]), a producer
//! replaced after a fatal error ([`producer`]), logging set-up ([`telemetry`]),
//! typed environment parsing ([`env`]), and the operator credential that guards operator routes
//! ([`auth`]).

pub mod auth;
pub mod env;
pub mod kafka;
pub mod msk_iam;
pub mod producer;
pub mod shutdown;
pub mod telemetry;
pub mod topics;
