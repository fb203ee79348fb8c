//! Generated bindings for the `kafka-wasm:handler` contract (`wit/handler.wit`).
//!
//! This module owns the host's `bindgen!` invocations; everything else uses the re-exports
//! below, so a contract change touches one place. The `packed-batch-handler` world is generated
//! first (its imports are a superset of the other worlds'); the `batch-handler` and `handler`
//! worlds reuse its interfaces, so all three share one set of types and one implementation of
//! every import.

mod packed_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "packed-batch-handler",
        additional_derives: [PartialEq, Eq],
        imports: {
            "kafka-wasm:handler/producer-api.call": async,
            "kafka-wasm:handler/batch.next-record": trappable,
            "kafka-wasm:handler/batch.advance": trappable,
        },
        exports: {
            default: async,
        },
    });
}

mod batch_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "batch-handler",
        with: {
            "kafka-wasm:handler/types": super::packed_world::kafka_wasm::handler::types,
            "kafka-wasm:handler/producer-api": super::packed_world::kafka_wasm::handler::producer_api,
            "kafka-wasm:handler/runtime": super::packed_world::kafka_wasm::handler::runtime,
            "kafka-wasm:handler/batch": super::packed_world::kafka_wasm::handler::batch,
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
            "kafka-wasm:handler/types": super::packed_world::kafka_wasm::handler::types,
            "kafka-wasm:handler/producer-api": super::packed_world::kafka_wasm::handler::producer_api,
            "kafka-wasm:handler/runtime": super::packed_world::kafka_wasm::handler::runtime,
        },
        exports: {
            default: async,
        },
    });
}

pub use batch_world::{BatchHandler, BatchHandlerPre};
pub use packed_world::kafka_wasm::handler::batch;
pub use packed_world::kafka_wasm::handler::producer_api;
pub use packed_world::kafka_wasm::handler::runtime as host_runtime;
pub use packed_world::kafka_wasm::handler::types;
pub use packed_world::{PackedBatchHandler, PackedBatchHandlerPre};
pub use single_world::{Handler, HandlerPre};
