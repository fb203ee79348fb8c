//! `host check FILE.wasm`: loads a component exactly as the consumer would and reports whether it
//! implements the `handler` world.

use crate::runtime::{EngineConfig, HandlerLimits, HandlerModule, LoadError, WasmEngine};
use std::path::Path;
use std::sync::Arc;

/// Engine settings for one-shot CLI use: a small pool.
pub fn cli_engine() -> anyhow::Result<Arc<WasmEngine>> {
    Ok(Arc::new(WasmEngine::new(EngineConfig { max_instances: 4, ..EngineConfig::default() })?))
}

/// Loads `path` as a handler with `limits`.
pub fn load(engine: &Arc<WasmEngine>, path: &Path, limits: HandlerLimits) -> Result<HandlerModule, LoadError> {
    HandlerModule::load_file(engine, path, limits)
}
