//! Generated bindings for the `kafka-wasm:handler` contract (`wit/handler.wit`).
//!
//! This module owns the host's `bindgen!` invocations; everything else uses the re-exports
//! below, so a contract change touches one place. The `batch-handler` world is generated first
//! (its imports are a superset of `handler`'s); the `handler` world reuses its interfaces, so
//! both worlds share one set of types and one implementation of every import.

mod batch_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "batch-handler",
        additional_derives: [PartialEq, Eq],
        imports: {
            "kafka-wasm:handler/producer-api.call": async,
            "kafka-wasm:handler/batch.next-record": trappable,
        },
        exports: {
            default: async,
        },
    });
}

mod single_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "handler",
        with: {
            "kafka-wasm:handler/types": super::batch_world::kafka_wasm::handler::types,
            "kafka-wasm:handler/producer-api": super::batch_world::kafka_wasm::handler::producer_api,
            "kafka-wasm:handler/runtime": super::batch_world::kafka_wasm::handler::runtime,
        },
        exports: {
            default: async,
        },
    });
}

pub use batch_world::kafka_wasm::handler::batch;
pub use batch_world::kafka_wasm::handler::producer_api;
pub use batch_world::kafka_wasm::handler::runtime as host_runtime;
pub use batch_world::kafka_wasm::handler::types;
pub use batch_world::{BatchHandler, BatchHandlerPre};
pub use single_world::{Handler, HandlerPre};
