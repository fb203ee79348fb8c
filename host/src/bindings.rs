//! Generated bindings for the `kafka-wasm:handler` contract: `wit/handler.wit` (0.2.0) and, for
//! components built against 0.1.x, the part of it the host still runs (`wit/v0.1/handler.wit`).
//!
//! This module owns the host's `bindgen!` invocations; everything else uses the re-exports below,
//! so a contract change touches one place. The `handler` world is generated first; the
//! `batch-handler` world and the 0.1.x `handler` world reuse its types (the component model's
//! types are structural, so one Rust type serves every version whose definition matches), so a
//! record is one type whichever world a component targets. The imports are not generated here:
//! `runtime::imports` defines them by hand, for every version.

mod handler_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "handler",
        additional_derives: [PartialEq, Eq],
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
            "kafka-wasm:handler/types": super::handler_world::kafka_wasm::handler::types,
        },
        additional_derives: [PartialEq, Eq],
        exports: {
            default: async,
        },
    });
}

mod legacy_world {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1",
        world: "handler",
        with: {
            "kafka-wasm:handler/types": super::handler_world::kafka_wasm::handler::types,
            "kafka-wasm:handler/producer-api": super::handler_world::kafka_wasm::handler::producer_api,
            "kafka-wasm:handler/runtime": super::handler_world::kafka_wasm::handler::runtime,
        },
        exports: {
            default: async,
        },
    });
}

pub use batch_world::exports::kafka_wasm::handler::batch;
pub use batch_world::{BatchHandler, BatchHandlerPre};
pub use handler_world::kafka_wasm::handler::producer_api;
pub use handler_world::kafka_wasm::handler::runtime as host_runtime;
pub use handler_world::kafka_wasm::handler::types;
pub use handler_world::{Handler, HandlerPre};
pub use legacy_world::{Handler as LegacyHandler, HandlerPre as LegacyHandlerPre};
