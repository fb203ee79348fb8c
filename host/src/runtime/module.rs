//! A loaded handler: a component compiled once, its kind decided once from what it exports (the
//! `handler` world, the pure `batch-handler` world, or a 0.1.x `handler`), pre-instantiated,
//! with its digest and limits. Cheap to clone and share between partition workers; a swap
//! replaces the whole value, never part of it. [`Pre`] and [`Instance`] carry their own
//! `instantiate` and calls, so the worker never matches on the kind (wasmtime-wasi-http's
//! `ProxyPre` is the model).

use super::config::{HandlerLimits, InvalidLimit};
use super::engine::WasmEngine;
use super::state::HostState;
use crate::bindings::batch::{PackedRecords, RecordResult};
use crate::bindings::types::HandlerError;
use crate::bindings::{BatchHandler, BatchHandlerPre, Handler, HandlerPre, LegacyHandler, LegacyHandlerPre};
use crate::record::Record;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use wasmtime::component::Component;

/// Why a file could not become a handler. Every variant names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The path is not a regular file (a directory, a device, a pipe).
    #[error("{path} is not a regular file")]
    NotAFile {
        /// The path.
        path: String,
    },
    /// The file is over the engine's size limit.
    #[error("the component is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A core module or something that is not WebAssembly at all.
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    /// A component that does not compile.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// A valid component that fits none of the contract's worlds.
    #[error(
        "the component implements no kafka-wasm:handler world (handler@0.2.0, batch-handler@0.2.0, or handler@0.1.x): {0}"
    )]
    WrongWorld(String),
    /// A batch handler that imports what a pure handler may not.
    #[error("a batch-handler must be pure, but the component imports {0}: target the handler world to call out")]
    ImpureBatch(String),
    /// The handler's limits are out of range.
    #[error("invalid handler limits: {0}")]
    Limits(#[from] InvalidLimit),
}

/// The pre-instantiated component, by the kind of handler it is.
pub(crate) enum Pre {
    /// `handler@0.2`: one record per call, through `record-handler.handle`.
    Record(HandlerPre<HostState>),
    /// `batch-handler@0.2`: a pure handler, records in and results out, through
    /// `batch.handle-batch`.
    Batch(BatchHandlerPre<HostState>),
    /// `handler@0.1.x` (and the 0.1.x batch worlds, run through their `handle`).
    Legacy(LegacyHandlerPre<HostState>),
}

impl Pre {
    /// A new instance in `store`.
    pub(crate) async fn instantiate(&self, store: &mut wasmtime::Store<HostState>) -> wasmtime::Result<Instance> {
        Ok(match self {
            Pre::Record(pre) => Instance::Record(pre.instantiate_async(store).await?),
            Pre::Batch(pre) => Instance::Batch(pre.instantiate_async(store).await?),
            Pre::Legacy(pre) => Instance::Legacy(pre.instantiate_async(store).await?),
        })
    }
}

/// An instance's exports, by the kind of handler it is.
pub(crate) enum Instance {
    /// `handler@0.2`.
    Record(Handler),
    /// `batch-handler@0.2`.
    Batch(BatchHandler),
    /// `handler@0.1.x`.
    Legacy(LegacyHandler),
}

impl Instance {
    /// Handles one record. A batch handler gets a batch of one, and its events go through the
    /// store's caps as a `publish-event` would; `packing` is the buffer a batch is packed in.
    pub(crate) async fn handle(
        &self,
        store: &mut wasmtime::Store<HostState>,
        record: &Record,
        packing: &mut Vec<u8>,
    ) -> wasmtime::Result<Result<(), HandlerError>> {
        match self {
            Instance::Record(handler) => {
                handler.kafka_wasm_handler_record_handler().call_handle(&mut *store, record).await
            }
            Instance::Legacy(handler) => handler.call_handle(&mut *store, record).await,
            Instance::Batch(_) => {
                let mut results = self.handle_batch(store, std::slice::from_ref(record), packing).await?;
                let Some(result) = results.pop().filter(|_| results.is_empty()) else {
                    wasmtime::bail!("handle-batch returned another number of results than the one record it was given");
                };
                store.data_mut().push_events(result.events);
                Ok(result.outcome)
            }
        }
    }

    /// Handles `records` (consecutive, of one partition) in one call: one result per record,
    /// in order. Only a batch handler takes batches.
    pub(crate) async fn handle_batch(
        &self,
        store: &mut wasmtime::Store<HostState>,
        records: &[Record],
        packing: &mut Vec<u8>,
    ) -> wasmtime::Result<Vec<RecordResult>> {
        let Instance::Batch(handler) = self else {
            wasmtime::bail!("the handler does not take batches");
        };
        let packed = super::packed::pack(records, std::mem::take(packing))?;
        let results = handler.kafka_wasm_handler_batch().call_handle_batch(&mut *store, &packed).await;
        let PackedRecords { data, .. } = packed;
        *packing = data;
        results
    }
}

/// A compiled, checked, pre-instantiated handler with the limits it runs under.
#[derive(Clone)]
pub struct HandlerModule {
    inner: Arc<Inner>,
    limits: Arc<HandlerLimits>,
    /// This load broke the batch contract: its records go one by one, on every worker, until
    /// it is replaced.
    batches_off: Arc<std::sync::atomic::AtomicBool>,
}

/// The compiled part, shared by every set of limits applied to it.
struct Inner {
    engine: Arc<WasmEngine>,
    pre: Pre,
    digest: String,
    size: u64,
}

impl std::fmt::Debug for HandlerModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerModule")
            .field("digest", &self.inner.digest)
            .field("size", &self.inner.size)
            .field("world", &self.world())
            .field("limits", &self.limits)
            .finish()
    }
}

/// Reads `path` when it is a regular file (a symbolic link to one included) of at most `limit`
/// bytes. The size is checked before reading and again while reading (never more than `limit` + 1
/// bytes are read), so a file that grows, or a path that is a device or a pipe, cannot make the
/// host read without end.
pub fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>, LoadError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| LoadError::Io { path: path.display().to_string(), source };
    let not_a_file = || LoadError::NotAFile { path: path.display().to_string() };
    // Checked before opening, and opened without blocking: opening a pipe would wait for a
    // writer (a path can change between the check and the open).
    if !std::fs::metadata(path).map_err(io)?.is_file() {
        return Err(not_a_file());
    }
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(not_a_file());
    }
    if meta.len() > limit {
        return Err(LoadError::TooLarge { size: meta.len(), limit });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(LoadError::TooLarge { size: bytes.len() as u64, limit });
    }
    Ok(bytes)
}

/// The contract's interfaces a component imports (`producer-api`, `runtime`, any version).
fn contract_imports<'a>(engine: &'a WasmEngine, component: &'a Component) -> impl Iterator<Item = String> + 'a {
    component
        .component_type()
        .imports(engine.engine())
        .map(|(name, _)| name.to_string())
        .filter(|name| {
            name.starts_with("kafka-wasm:handler/producer-api") || name.starts_with("kafka-wasm:handler/runtime")
        })
        .collect::<Vec<_>>()
        .into_iter()
}

const WASM_MAGIC: &[u8; 4] = b"\0asm";
const CORE_MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];

impl HandlerModule {
    /// Reads, compiles and checks a handler file.
    pub fn load_file(engine: &Arc<WasmEngine>, path: &Path, limits: HandlerLimits) -> Result<Self, LoadError> {
        let bytes = read_file(path, engine.config().max_component_bytes)?;
        Self::load(engine, &bytes, limits)
    }

    /// Compiles and checks a handler from its bytes.
    pub fn load(engine: &Arc<WasmEngine>, bytes: &[u8], limits: HandlerLimits) -> Result<Self, LoadError> {
        limits.validate(engine.config().max_memory_bytes)?;
        let size = bytes.len() as u64;
        let limit = engine.config().max_component_bytes;
        if size > limit {
            return Err(LoadError::TooLarge { size, limit });
        }
        if bytes.len() < 8 || &bytes[..4] != WASM_MAGIC {
            return Err(LoadError::NotAComponent("the file does not start with the WebAssembly magic number".into()));
        }
        if bytes[4..8] == CORE_MODULE_VERSION {
            return Err(LoadError::NotAComponent(
                "this is a core WebAssembly module; build a component (e.g. --target wasm32-wasip2, or `wasm-tools component new`)"
                    .into(),
            ));
        }
        let component = engine.compile(bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let instance_pre =
            engine.linker().instantiate_pre(&component).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        // Decided once, from what the component exports: `batch` makes a pure batch handler,
        // `record-handler` a handler; a bare `handle` is a 0.1.x handler.
        let pre = if let Ok(pre) = BatchHandlerPre::new(instance_pre.clone()) {
            if let Some(import) = contract_imports(engine, &component).next() {
                return Err(LoadError::ImpureBatch(import));
            }
            Pre::Batch(pre)
        } else if let Ok(pre) = HandlerPre::new(instance_pre.clone()) {
            Pre::Record(pre)
        } else {
            Pre::Legacy(LegacyHandlerPre::new(instance_pre).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?)
        };
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        Ok(Self {
            inner: Arc::new(Inner { engine: engine.clone(), pre, digest, size }),
            limits: Arc::new(limits),
            batches_off: Arc::default(),
        })
    }

    /// The same compiled handler under other limits (no recompilation).
    pub fn with_limits(&self, limits: HandlerLimits) -> Result<Self, LoadError> {
        limits.validate(self.inner.engine.config().max_memory_bytes)?;
        Ok(Self { inner: self.inner.clone(), limits: Arc::new(limits), batches_off: Arc::default() })
    }

    /// `sha256:<hex>` of the component's bytes.
    pub fn digest(&self) -> &str {
        &self.inner.digest
    }

    /// The component's size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// The handler's limits.
    pub fn limits(&self) -> &Arc<HandlerLimits> {
        &self.limits
    }

    pub(crate) fn engine(&self) -> &Arc<WasmEngine> {
        &self.inner.engine
    }

    pub(crate) fn pre(&self) -> &Pre {
        &self.inner.pre
    }

    /// Whether the component takes batches (a pure `batch-handler`).
    pub fn supports_batches(&self) -> bool {
        matches!(self.inner.pre, Pre::Batch(_))
    }

    /// Whether records go to it in batches: a pure `batch-handler` under `reuse`, allowed more
    /// than one record per batch, that has not broken the batch contract.
    pub fn takes_batches(&self) -> bool {
        self.supports_batches()
            && self.limits.instance_policy == super::InstancePolicy::Reuse
            && self.limits.max_batch_records > 1
            && !self.batches_off.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This load broke the batch contract: no more batches for it.
    pub(crate) fn turn_batches_off(&self) {
        self.batches_off.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The contract world the component targets.
    pub fn world(&self) -> &'static str {
        match self.inner.pre {
            Pre::Record(_) => "handler@0.2",
            Pre::Batch(_) => "batch-handler@0.2",
            Pre::Legacy(_) => "handler@0.1",
        }
    }

    /// Whether two values are the same load under the same limits (not merely the same bytes).
    pub fn same_load(&self, other: &HandlerModule) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner) && Arc::ptr_eq(&self.limits, &other.limits)
    }
}
