//! The Kafka WebAssembly host: a generic Kafka consumer that hands each record of a topic to that
//! topic's sandboxed WebAssembly component (see `wit/handler.wit` for the contract).
//!
//! Module map: [`bindings`] (generated from the WIT), [`runtime`] (the sandbox), [`producer_api`]
//! (the one network destination handlers may reach), [`record`] (records and outcomes), [`cli`]
//! (the `host` command's subcommands).

pub mod bindings;
pub mod cli;
pub mod producer_api;
pub mod record;
pub mod runtime;
