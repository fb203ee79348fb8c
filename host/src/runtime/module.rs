//! A loaded handler: a component compiled once, checked against the `packed-batch-handler`,
//! `batch-handler` or `handler` world and pre-instantiated, with its digest and limits. Cheap to
//! clone and share between partition workers; a swap replaces the whole value, never part of it.

use super::config::{HandlerLimits, InvalidLimit};
use super::engine::WasmEngine;
use super::state::HostState;
use crate::bindings::{BatchHandlerPre, HandlerPre, PackedBatchHandlerPre};
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
    /// A valid component that does not fit the `kafka-wasm:handler/handler` world.
    #[error("the component does not implement the kafka-wasm:handler@0.1.x `handler` world: {0}")]
    WrongWorld(String),
    /// The handler's limits are out of range.
    #[error("invalid handler limits: {0}")]
    Limits(#[from] InvalidLimit),
}

/// The pre-instantiated component, by the world it targets.
pub(crate) enum Pre {
    /// `handler`: one record per call.
    Single(HandlerPre<HostState>),
    /// `batch-handler`: also `handle-batch`.
    Batch(BatchHandlerPre<HostState>),
    /// `packed-batch-handler`: also `handle-packed`.
    Packed(PackedBatchHandlerPre<HostState>),
}

/// A compiled, checked, pre-instantiated handler with the limits it runs under.
#[derive(Clone)]
pub struct HandlerModule {
    inner: Arc<Inner>,
    limits: Arc<HandlerLimits>,
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
        let component = Component::new(engine.engine(), bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let instance_pre =
            engine.linker().instantiate_pre(&component).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        // A component that exports `handle-packed` targets `packed-batch-handler`, one that
        // exports `handle-batch` targets `batch-handler`; any other must at least target `handler`.
        let pre = if let Ok(pre) = PackedBatchHandlerPre::new(instance_pre.clone()) {
            Pre::Packed(pre)
        } else if let Ok(pre) = BatchHandlerPre::new(instance_pre.clone()) {
            Pre::Batch(pre)
        } else {
            Pre::Single(HandlerPre::new(instance_pre).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?)
        };
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        Ok(Self { inner: Arc::new(Inner { engine: engine.clone(), pre, digest, size }), limits: Arc::new(limits) })
    }

    /// The same compiled handler under other limits (no recompilation).
    pub fn with_limits(&self, limits: HandlerLimits) -> Result<Self, LoadError> {
        limits.validate(self.inner.engine.config().max_memory_bytes)?;
        Ok(Self { inner: self.inner.clone(), limits: Arc::new(limits) })
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

    /// Whether the component takes batches (targets `packed-batch-handler` or `batch-handler`).
    pub fn supports_batches(&self) -> bool {
        !matches!(self.inner.pre, Pre::Single(_))
    }

    /// The contract world the component targets.
    pub fn world(&self) -> &'static str {
        match self.inner.pre {
            Pre::Single(_) => "handler",
            Pre::Batch(_) => "batch-handler",
            Pre::Packed(_) => "packed-batch-handler",
        }
    }

    /// Whether two values are the same load under the same limits (not merely the same bytes).
    pub fn same_load(&self, other: &HandlerModule) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner) && Arc::ptr_eq(&self.limits, &other.limits)
    }
}
