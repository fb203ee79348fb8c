//! `host check FILE.wasm`: loads a component exactly as the consumer would and reports whether it
//! implements the `handler` world.

use crate::runtime::{EngineConfig, HandlerLimits, HandlerModule, LoadError, WasmEngine};
use std::path::Path;
use std::sync::Arc;

/// Engine settings for one-shot CLI use: a small pool, and the compilation cache `CACHE_DIR`
/// names (as the service does), so a second run of the same component does not compile it again.
pub fn cli_engine() -> anyhow::Result<Arc<WasmEngine>> {
    let cache_dir = crate::config::cache_dir(&common::env::Env::from_process());
    Ok(Arc::new(WasmEngine::new(EngineConfig { max_instances: 4, cache_dir, ..EngineConfig::default() })?))
}

/// Loads `path` as a handler with `limits`.
pub fn load(engine: &Arc<WasmEngine>, path: &Path, limits: HandlerLimits) -> Result<HandlerModule, LoadError> {
    HandlerModule::load_file(engine, path, limits)
}
