//! Generated bindings for the `kafka-wasm:handler` world (`wit/handler.wit`).
//!
//! This module owns the only `bindgen!` invocation in the host; everything else uses the
//! re-exports below, so a contract change touches one place.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "handler",
    additional_derives: [PartialEq, Eq],
    imports: {
        "kafka-wasm:handler/producer-api.call": async,
    },
    exports: {
        default: async,
    },
});

pub use kafka_wasm::handler::producer_api;
pub use kafka_wasm::handler::runtime as host_runtime;
pub use kafka_wasm::handler::types;
