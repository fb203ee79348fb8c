//! The process-wide wasmtime engine: configuration (pooling allocator, epoch interruption, async
//! calls), the epoch ticker thread, and the linker with WASI p2 and the contract's imports.

use super::cache::CompileCache;
use super::config::EngineConfig;
use super::state::HostState;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Core instances, memories and tables one handler component may hold at most. A Rust component
/// built for wasm32-wasip2 has one memory and a handful of core instances (its module plus
/// adapter shims); a Python one (componentize-py) 14 core instances, a few native extension
/// modules more; a JavaScript one (componentize-js) about as many as Rust. The memory cap holds
/// for all of a component's memories together.
pub const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 64;
const MAX_MEMORIES_PER_COMPONENT: u32 = 8;
const MAX_TABLES_PER_COMPONENT: u32 = 16;

/// What the pool holds for each of `max_instances` instances on average: the totals are shared,
/// so a few large components may use more each.
const CORE_INSTANCES_PER_INSTANCE: u32 = 16;
const MEMORIES_PER_INSTANCE: u32 = 2;
const TABLES_PER_INSTANCE: u32 = 4;

/// Bytes of each recycled linear memory kept resident (a Rust guest's data and 1 MiB stack).
const KEEP_RESIDENT_BYTES: usize = 2 << 20;
/// Bytes of each recycled table kept resident.
const KEEP_RESIDENT_TABLE_BYTES: usize = 64 << 10;
/// Bytes of each recycled async stack kept resident.
const KEEP_RESIDENT_STACK_BYTES: usize = 64 << 10;

/// Why the engine could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the WebAssembly engine: {0}")]
pub struct EngineError(String);

/// The shared engine and linker. Dropping it stops the epoch ticker.
pub struct WasmEngine {
    engine: Engine,
    cache: Option<CompileCache>,
    linker: Arc<Linker<HostState>>,
    config: EngineConfig,
    ticker: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl WasmEngine {
    /// Builds the engine, starts its epoch ticker and links WASI p2 and the contract's imports.
    pub fn new(config: EngineConfig) -> Result<Self, EngineError> {
        let err = |e: wasmtime::Error| EngineError(format!("{e:#}"));
        let mut pool = PoolingAllocationConfig::default();
        let n = config.max_instances;
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_INSTANCE).max(MAX_CORE_INSTANCES_PER_COMPONENT))
            .total_memories(n.saturating_mul(MEMORIES_PER_INSTANCE).max(MAX_MEMORIES_PER_COMPONENT))
            .total_tables(n.saturating_mul(TABLES_PER_INSTANCE).max(MAX_TABLES_PER_COMPONENT))
            .total_stacks(n)
            .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
            .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
            .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
            .max_memory_size(usize::try_from(config.max_memory_bytes).unwrap_or(usize::MAX))
            // Reset the first pages of a recycled slot with memset instead of returning them to
            // the kernel: the next instance then starts without page faults on its stack and data.
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_TABLE_BYTES)
            .async_stack_keep_resident(KEEP_RESIDENT_STACK_BYTES);

        let cache = match &config.cache_dir {
            Some(dir) => Some(CompileCache::open(dir).map_err(|e| EngineError(e.to_string()))?),
            None => None,
        };
        let mut wasm = Config::new();
        wasm.epoch_interruption(true)
            .wasm_component_model(true)
            .cranelift_opt_level(wasmtime::OptLevel::Speed)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .cache(cache.as_ref().map(CompileCache::wasmtime));
        let engine = Engine::new(&wasm).map_err(err)?;

        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(err)?;
        // Refuses every request (see `HostState`'s `WasiHttpView`).
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(err)?;
        // One linker serves every world and version: `producer-api` and `runtime` are defined
        // by hand, so that their arguments are checked against the handler's limits before they
        // are copied out of guest memory; `types` holds no function.
        for version in ["0.2.0", "0.1.3"] {
            linker.instance(&format!("kafka-wasm:handler/types@{version}")).map_err(err)?;
        }
        super::imports::add_to_linker(&mut linker).map_err(err)?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (engine, stop, tick) = (engine.clone(), stop.clone(), config.epoch_tick);
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| EngineError(format!("cannot start the epoch thread: {e}")))?
        };
        Ok(Self { engine, cache, linker: Arc::new(linker), config, ticker: Some((stop, ticker)) })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles a component, through the compilation cache when there is one (its entries
    /// checked first: see `runtime::cache`).
    pub fn compile(&self, bytes: &[u8]) -> wasmtime::Result<wasmtime::component::Component> {
        match &self.cache {
            Some(cache) => cache.compiling(|| wasmtime::component::Component::new(&self.engine, bytes)),
            None => wasmtime::component::Component::new(&self.engine, bytes),
        }
    }

    /// Compilations the cache answered so far in this process (0 without a cache).
    pub fn cache_hits(&self) -> usize {
        self.cache.as_ref().map_or(0, CompileCache::hits)
    }

    /// The linker with every import a handler may use.
    pub fn linker(&self) -> &Linker<HostState> {
        &self.linker
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Epoch ticks that make up `d`, at least one.
    pub fn ticks_for(&self, d: std::time::Duration) -> u64 {
        let tick = self.config.epoch_tick.as_micros().max(1);
        u64::try_from(d.as_micros().div_ceil(tick)).unwrap_or(u64::MAX).max(1)
    }
}

impl std::fmt::Debug for WasmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmEngine").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Drop for WasmEngine {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.ticker.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
    }
}
