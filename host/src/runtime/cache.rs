//! Compiled components kept on disk, so a component is compiled once: wasmtime's own compilation
//! cache (its `cache` feature) in a directory the host owns (`CACHE_DIR`), and an integrity
//! manifest around it, since wasmtime trusts whatever bytes it finds there.
//!
//! wasmtime names each entry by a hash of the engine's settings, its version and the component,
//! so an entry of another version or configuration is never read (it is stale, and its cleanup
//! removes it). What wasmtime does not check is that an entry's bytes are the ones it wrote: a
//! corrupt entry that still decompresses would be run as machine code. So the host keeps the
//! SHA-256 of every entry it saw written, and before each compilation it checks every entry that
//! changed since it last looked: an entry whose digest differs, or that no manifest names, is
//! deleted, and wasmtime compiles the component again. The directory must be the host's user's
//! and writable by it alone (the manifest guards against corruption, not against someone who may
//! write there).
//!
//! Several processes may share a directory (hosts on one machine, `host check` beside a host):
//! each compilation holds a lock on the directory's `lock` file and reads the manifest again
//! under it, so one process's new entry is never taken for a planted one by another, and no
//! process's manifest overwrites another's entries.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;
use wasmtime::{Cache, CacheConfig};

/// The manifest's file name, in the cache directory.
const MANIFEST: &str = "manifest";

/// The file whose lock a process holds while it checks, compiles and records.
const LOCK: &str = "lock";

/// What the host knows of one entry: its digest, and the length and time it had when checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    digest: String,
    len: u64,
    modified: Option<SystemTime>,
}

/// The cache and its manifest.
pub struct CompileCache {
    dir: PathBuf,
    cache: Cache,
    /// Entry path (relative to `dir`) → what was checked; guarded so that one compilation at a
    /// time (in this process; the lock file orders processes) checks and records.
    entries: Mutex<BTreeMap<PathBuf, Entry>>,
    lock_file: std::fs::File,
}

impl std::fmt::Debug for CompileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompileCache").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// Why the cache could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the compilation cache at {dir}: {reason}")]
pub struct CacheError {
    dir: String,
    reason: String,
}

impl CompileCache {
    /// A cache in `dir` (created when missing; a relative path is taken from the current
    /// directory), its manifest read and every entry checked.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        let dir = &std::path::absolute(dir)
            .map_err(|e| CacheError { dir: dir.display().to_string(), reason: e.to_string() })?;
        use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
        let fail = |reason: String| CacheError { dir: dir.display().to_string(), reason };
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| fail(e.to_string()))?;
        let meta = std::fs::metadata(dir).map_err(|e| fail(e.to_string()))?;
        if !meta.is_dir() {
            return Err(fail("not a directory".into()));
        }
        let euid = rustix::process::geteuid().as_raw();
        if meta.uid() != euid {
            return Err(fail(format!(
                "it belongs to user {} and the host runs as {euid}: compiled code there would be run",
                meta.uid()
            )));
        }
        let mode = meta.permissions().mode();
        if mode & 0o022 != 0 {
            return Err(fail(format!(
                "others may write it (mode {:o}): compiled code there would be run",
                mode & 0o777
            )));
        }
        let mut config = CacheConfig::new();
        config
            .with_directory(dir.join("wasmtime"))
            // An entry's bytes must stay the ones recorded: never recompressed in place.
            .with_optimized_compression_usage_counter_threshold(u64::MAX);
        let cache = Cache::new(config).map_err(|e| fail(format!("{e:#}")))?;
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK))
            .map_err(|e| fail(format!("{LOCK}: {e}")))?;
        let this = Self { dir: dir.to_path_buf(), cache, entries: Mutex::new(BTreeMap::new()), lock_file };
        this.compiling(|| ());
        Ok(this)
    }

    /// The wasmtime cache, for the engine's configuration.
    pub fn wasmtime(&self) -> Cache {
        self.cache.clone()
    }

    /// Compilations answered from the cache so far (in this process).
    pub fn hits(&self) -> usize {
        self.cache.cache_hits()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `compile` with every entry it may read checked first, and records the entries it
    /// writes; other processes sharing the directory wait meanwhile.
    pub fn compiling<T>(&self, compile: impl FnOnce() -> T) -> T {
        let mut entries = self.lock();
        let locked = self.lock_file.lock();
        if let Err(e) = &locked {
            tracing::warn!(dir = %self.dir.display(), "cannot lock the compilation cache: {e}");
        }
        merge_manifest(&mut entries, read_manifest(&self.dir.join(MANIFEST)));
        let checked = self.check(&mut entries);
        let out = compile();
        self.record(&mut entries, checked);
        if locked.is_ok() {
            let _ = self.lock_file.unlock();
        }
        out
    }

    /// Every entry file under the cache directory (not wasmtime's usage statistics, nor a
    /// write in progress), relative to it, with its metadata.
    fn files(&self) -> Vec<(PathBuf, std::fs::Metadata)> {
        let mut out = Vec::new();
        let mut dirs = vec![self.dir.join("wasmtime")];
        while let Some(dir) = dirs.pop() {
            let Ok(read) = std::fs::read_dir(&dir) else { continue };
            for entry in read.flatten() {
                let path = entry.path();
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                if name.ends_with(".stats") || name.contains(".wip-") {
                    continue;
                }
                if let Ok(relative) = path.strip_prefix(&self.dir) {
                    out.push((relative.to_path_buf(), meta));
                }
            }
        }
        out
    }

    /// Deletes every entry that no manifest names or whose digest differs from it; an entry
    /// unchanged (length, time) since it was checked is not read again. Whether the manifest
    /// changed (an entry removed or forgotten).
    fn check(&self, entries: &mut BTreeMap<PathBuf, Entry>) -> bool {
        let before = entries.len();
        for (relative, meta) in self.files() {
            let path = self.dir.join(&relative);
            let verdict = match entries.get(&relative) {
                None => Err("no manifest names it"),
                Some(known) if known.len == meta.len() && known.modified == meta.modified().ok() => Ok(None),
                Some(known) => match digest(&path) {
                    Some(d) if d == known.digest => Ok(Some(d)),
                    _ => Err("its bytes are not the ones written"),
                },
            };
            match verdict {
                Ok(None) => {}
                Ok(Some(d)) => {
                    entries.insert(relative, Entry { digest: d, len: meta.len(), modified: meta.modified().ok() });
                }
                Err(why) => {
                    tracing::warn!(entry = %path.display(), "compilation cache entry removed: {why}");
                    let _ = std::fs::remove_file(&path);
                    entries.remove(&relative);
                }
            }
        }
        // Entries gone from disk (wasmtime's cleanup) are forgotten.
        let present: std::collections::BTreeSet<PathBuf> = self.files().into_iter().map(|(p, _)| p).collect();
        entries.retain(|p, _| present.contains(p));
        entries.len() != before
    }

    /// Adds the entries written since the last check to the manifest, and saves it when it
    /// changed.
    fn record(&self, entries: &mut BTreeMap<PathBuf, Entry>, mut changed: bool) {
        for (relative, meta) in self.files() {
            if entries.contains_key(&relative) {
                continue;
            }
            if let Some(d) = digest(&self.dir.join(&relative)) {
                entries.insert(relative, Entry { digest: d, len: meta.len(), modified: meta.modified().ok() });
                changed = true;
            }
        }
        if changed && let Err(e) = write_manifest(&self.dir.join(MANIFEST), entries) {
            tracing::warn!(dir = %self.dir.display(), "cannot save the compilation cache's manifest: {e}");
        }
    }
}

/// The SHA-256 of a file, hex; `None` when it cannot be read.
fn digest(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).ok()?;
    Some(hex::encode(hasher.finalize()))
}

/// Reads `digest  path` lines; anything else is skipped (its entries are then unknown, and
/// deleted at the first check).
fn read_manifest(path: &Path) -> BTreeMap<PathBuf, Entry> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (digest, relative) = line.split_once("  ")?;
            (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| (PathBuf::from(relative), Entry { digest: digest.to_string(), len: u64::MAX, modified: None }))
        })
        .collect()
}

/// Takes the manifest on disk (another process may have added or removed entries) as the truth
/// for which entries exist and their digests, keeping what this process checked of an entry
/// whose digest it still has (so it is not read again).
fn merge_manifest(entries: &mut BTreeMap<PathBuf, Entry>, on_disk: BTreeMap<PathBuf, Entry>) {
    let mut merged = on_disk;
    for (path, entry) in merged.iter_mut() {
        if let Some(known) = entries.get(path)
            && known.digest == entry.digest
        {
            *entry = known.clone();
        }
    }
    *entries = merged;
}

/// Writes the manifest under a temporary name and moves it into place.
fn write_manifest(path: &Path, entries: &BTreeMap<PathBuf, Entry>) -> std::io::Result<()> {
    let text: String = entries.iter().map(|(p, e)| format!("{}  {}\n", e.digest, p.display())).collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
