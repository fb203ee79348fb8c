//! The Kafka WebAssembly host: a generic Kafka consumer that hands each record of a topic to that
//! topic's sandboxed WebAssembly component (see `wit/handler.wit` for the contract).
//!
//! Module map: [`bindings`] (generated from the WIT), [`runtime`] (the sandbox), [`producer_api`]
//! (the one network destination handlers may reach), [`record`] (records and outcomes),
//! [`handlers`] (handler files, registry, hot reload), [`pipeline`] (the Kafka consumer),
//! [`http`] (the HTTP API), [`events`], [`metrics`], [`config`], [`service`] (all of it
//! assembled), [`cli`] (the handler-author subcommands).

pub mod bindings;
pub mod cli;
pub mod config;
pub mod events;
pub mod handlers;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod producer_api;
pub mod record;
pub mod runtime;
pub mod service;
