//! The sandbox: a wasmtime engine shared by every handler ([`engine`]), compiled components kept
//! on disk ([`cache`]), handlers compiled and checked once ([`module`]), the imports whose
//! arguments a guest sizes ([`imports`]), batches packed for `handle-batch` ([`packed`]),
//! runners that apply the instance policy and limits to one record at a time ([`worker`]), the
//! host-wide budget they are leased from ([`instances`]), the store data and host imports
//! ([`state`]), and the named limits ([`config`]).

pub mod cache;
pub mod config;
pub mod engine;
mod imports;
pub mod instances;
pub mod module;
pub mod packed;
pub mod state;
pub mod worker;

pub use config::{EngineConfig, HandlerLimits, InstancePolicy, InvalidLimit};
pub use engine::{EngineError, WasmEngine};
pub use instances::{Instances, Lease};
pub use module::{HandlerModule, LoadError, read_file};
pub use worker::{BatchInvocation, Footprint, Recycle, Worker};
