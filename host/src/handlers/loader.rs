//! Watches `HANDLERS_DIR` and keeps the registry in step with it.
//!
//! The directory is scanned every `RELOAD_INTERVAL_MS` (polling rather than inotify, so it works
//! on network filesystems such as EFS). A `<topic>.wasm` or `<topic>.toml` that changed is loaded
//! once it has stayed unchanged for one scan (so a file still being copied is not loaded half
//! written); moving a complete file into place is picked up on the next scan. A valid handler is
//! swapped in whole; an invalid one is rejected, logged and counted, and the old one keeps
//! running. A removed `.wasm` stops its topic.

use super::registry::{ActiveHandler, HandlerCode, Registry};
use super::valid_topic;
use crate::config::HandlerSettings;
use crate::metrics::{KindLabels, Metrics};
use crate::runtime::{HandlerModule, WasmEngine, read_file};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// A file's identity for change detection.
type Stamp = Option<(SystemTime, u64)>;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Seen {
    wasm: Stamp,
    toml: Stamp,
}

/// The directory watcher.
#[derive(Debug)]
pub struct Loader {
    dir: PathBuf,
    engine: Arc<WasmEngine>,
    defaults: HandlerSettings,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Stamps seen on the previous scan.
    observed: BTreeMap<String, Seen>,
    /// Stamps last loaded (or rejected).
    applied: BTreeMap<String, Seen>,
}

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Loader {
    /// A loader for `dir`.
    pub fn new(
        dir: PathBuf,
        engine: Arc<WasmEngine>,
        defaults: HandlerSettings,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { dir, engine, defaults, registry, metrics, observed: BTreeMap::new(), applied: BTreeMap::new() }
    }

    /// One pass over the directory. With `settle` false, changes load at once (used at start).
    pub async fn scan(&mut self, settle: bool) -> std::io::Result<()> {
        let mut now: BTreeMap<String, Seen> = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let (Some(stem), Some(ext)) =
                (path.file_stem().and_then(|s| s.to_str()), path.extension().and_then(|s| s.to_str()))
            else {
                continue;
            };
            if stem.starts_with('.') {
                continue;
            }
            match ext {
                "wasm" => now.entry(stem.to_string()).or_default().wasm = stamp(&path),
                "toml" => now.entry(stem.to_string()).or_default().toml = stamp(&path),
                _ => {}
            }
        }
        for (topic, seen) in &now {
            if seen.wasm.is_none() {
                continue; // settings without a handler: nothing to run
            }
            if self.applied.get(topic) == Some(seen) {
                continue;
            }
            if settle && self.observed.get(topic) != Some(seen) {
                continue; // changed since the last scan: wait until it settles
            }
            self.load(topic).await;
            self.applied.insert(topic.clone(), seen.clone());
        }
        let gone: Vec<String> =
            self.applied.keys().filter(|t| now.get(*t).is_none_or(|s| s.wasm.is_none())).cloned().collect();
        for topic in gone {
            tracing::info!(topic, "handler file removed: stopping the topic");
            self.registry.remove(&topic);
            self.applied.remove(&topic);
        }
        self.observed = now;
        Ok(())
    }

    async fn load(&self, topic: &str) {
        match self.try_load(topic).await {
            Ok(Some(handler)) => {
                tracing::info!(topic, sha256 = handler.code.digest(), file = %handler.file.display(), "handler loaded");
                self.metrics.reloads.get_or_create(&KindLabels { topic: topic.to_string(), kind: "ok".into() }).inc();
                self.registry.install(topic, handler);
            }
            Ok(None) => {}
            Err(error) => {
                let keeps =
                    if self.registry.get(topic).is_some() { "; the previous handler keeps running" } else { "" };
                tracing::error!(topic, "handler rejected: {error}{keeps}");
                self.metrics
                    .reloads
                    .get_or_create(&KindLabels { topic: topic.to_string(), kind: "rejected".into() })
                    .inc();
                self.registry.reject(topic, error);
            }
        }
    }

    /// Loads `topic`'s files; `Ok(None)` when they match what is running.
    async fn try_load(&self, topic: &str) -> Result<Option<ActiveHandler>, String> {
        valid_topic(topic)?;
        let wasm_path = self.dir.join(format!("{topic}.wasm"));
        let toml_path = self.dir.join(format!("{topic}.toml"));
        let settings = if toml_path.exists() {
            let text = crate::config::read_settings_file(&toml_path)?;
            self.defaults.overlay(&text).map_err(|e| format!("{}: {e}", toml_path.display()))?
        } else {
            self.defaults.clone()
        };
        // Reading (up to 64 MiB, from a network filesystem) and hashing block: off the runtime.
        let (path, limit) = (wasm_path.clone(), self.engine.config().max_component_bytes);
        let (bytes, digest) = tokio::task::spawn_blocking(move || {
            let bytes = read_file(&path, limit).map_err(|e| format!("{}: {e}", path.display()))?;
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
            Ok::<_, String>((bytes, digest))
        })
        .await
        .map_err(|e| format!("the loader task failed: {e}"))??;
        let current = self.registry.get(topic);
        let module = match current.as_ref().map(|a| (&a.code, &a.settings)) {
            Some((HandlerCode::Wasm(module), current_settings)) if module.digest() == digest => {
                if *current_settings == settings {
                    return Ok(None);
                }
                module.with_limits(settings.limits.clone()).map_err(|e| e.to_string())?
            }
            _ => {
                let engine = self.engine.clone();
                let limits = settings.limits.clone();
                tokio::task::spawn_blocking(move || HandlerModule::load(&engine, &bytes, limits))
                    .await
                    .map_err(|e| format!("the loader task failed: {e}"))?
                    .map_err(|e| format!("{}: {e}", wasm_path.display()))?
            }
        };
        Ok(Some(ActiveHandler {
            code: HandlerCode::Wasm(module),
            settings,
            file: wasm_path,
            loaded_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }))
    }

    /// Scans every `interval` until `stop` turns true.
    pub async fn run(mut self, interval: Duration, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(interval) => {}
            }
            if let Err(e) = self.scan(true).await {
                tracing::error!(dir = %self.dir.display(), "cannot scan the handlers directory: {e}");
            }
        }
    }
}
