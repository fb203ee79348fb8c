//! Handlers in other languages than Rust: Python (componentize-py), JavaScript (ComponentizeJS)
//! and Go (the Go compiler with gocomp), built from `handlers/<language>/<handler>/` into
//! `target/handlers/<language>/<handler>.wasm`.
//!
//! Each toolchain is pinned by files of its language's directory (`handlers/python/requirements.txt`,
//! `handlers/js/package-lock.json`, `handlers/go/gocomp/` with its `Cargo.lock`) and installed
//! from them into the cache directory once: a venv for Python, an npm prefix for JavaScript, the
//! gocomp binary for Go (built by cargo, `--locked`). Later builds reuse it without the network.
//! A build takes seconds per component, so a language's components are rebuilt only when their
//! inputs (the language's directory, `wit/`, the build's own options) hash differently from the
//! stamp the last build left.

use crate::e2e::cache_dir;
use crate::{cargo, repo_root, run, target_dir};
use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

/// WASI features ComponentizeJS leaves out of JavaScript components. Empty: the default build,
/// whose `fetch()` imports `wasi:http` (the host links one that refuses every request).
pub const JS_DISABLED_FEATURES: &[&str] = &[];

/// The least Go the Go handlers build with: the `go` line of their `go.mod` (wit-bindgen-go's)
/// and of `handlers/go/pkg/go.mod`.
const GO_MIN: (u32, u32) = (1, 25);

/// A program a toolchain runs on.
struct Program {
    /// Its name, looked up on `PATH`.
    name: &'static str,
    /// The argument that makes it print its version.
    version: &'static str,
    /// The least `(major, minor)` version it needs, if any.
    min: Option<(u32, u32)>,
}

/// What a language's componentize tool needs and how it is installed.
struct Toolchain {
    /// Programs it runs on.
    programs: &'static [Program],
    /// What to install when one is missing.
    missing: &'static str,
    /// The files (or directories) of the language's directory that pin it: installed from them,
    /// and again when they change.
    pins: &'static [&'static str],
    /// The componentize program, in the install directory.
    tool: &'static str,
}

/// A language whose handlers a componentize tool builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// Python, with componentize-py: `handlers/python/<handler>/app.py`, sharing `kafka_wasm.py`.
    Python,
    /// JavaScript, with ComponentizeJS: `handlers/js/<handler>/index.js`, sharing `kafka-wasm.js`.
    JavaScript,
    /// Go, with the Go compiler (wasip1) and gocomp: `handlers/go/<handler>/handler.go`, sharing
    /// the package `handlers/go/sdk`.
    Go,
}

impl Language {
    /// Every language, in build order.
    pub const ALL: [Self; 3] = [Self::Python, Self::JavaScript, Self::Go];

    /// The language whose [`dir_name`](Self::dir_name) is `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.dir_name() == name)
    }

    /// Its directory under `handlers/` and `target/handlers/`.
    pub fn dir_name(self) -> &'static str {
        match self {
            Self::Python => "python",
            Self::JavaScript => "js",
            Self::Go => "go",
        }
    }

    /// The entry point each handler's directory holds.
    fn entry(self) -> &'static str {
        match self {
            Self::Python => "app.py",
            Self::JavaScript => "index.js",
            Self::Go => "handler.go",
        }
    }

    /// The sources: `handlers/<language>/`.
    pub fn source_dir(self) -> PathBuf {
        repo_root().join("handlers").join(self.dir_name())
    }

    /// Where its components go: `target/handlers/<language>/`.
    pub fn output_dir(self) -> PathBuf {
        target_dir().join("handlers").join(self.dir_name())
    }

    /// The handlers: `(directory, component name)` for each directory that holds an entry point;
    /// the name is the directory's with `_` as `-` (`new_user_created` → `new-user-created`).
    pub fn handlers(self) -> anyhow::Result<Vec<(PathBuf, String)>> {
        let src = self.source_dir();
        let mut handlers = Vec::new();
        for entry in std::fs::read_dir(&src).with_context(|| format!("cannot list {}", src.display()))? {
            let path = entry?.path();
            if path.join(self.entry()).is_file() {
                let name = path.file_name().map(|n| n.to_string_lossy().replace('_', "-")).unwrap_or_default();
                handlers.push((path, name));
            }
        }
        handlers.sort();
        Ok(handlers)
    }

    /// What the build depends on besides the files: the tool's arguments; for Go, the compiler's
    /// version too (gocomp's own flags are in its source, under `handlers/go/`).
    fn recipe(self) -> String {
        match self {
            Self::Python => "componentize-py -d wit -w handler componentize app".to_string(),
            Self::JavaScript => format!("componentize-js --world-name handler -d {JS_DISABLED_FEATURES:?}"),
            Self::Go => {
                let version = Command::new("go").args(["env", "GOVERSION"]).env("GOTOOLCHAIN", "local").output();
                let version = match version {
                    Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
                    _ => "no go".to_string(),
                };
                format!("gocomp build --lib sdk --pkg pkg handler; {version}")
            }
        }
    }

    fn toolchain(self) -> Toolchain {
        match self {
            Self::Python => Toolchain {
                programs: &[Program { name: "python3", version: "--version", min: None }],
                missing: "the Python handlers need Python 3 with its venv module \
                          (Debian: apt-get install python3 python3-venv)",
                pins: &["requirements.txt"],
                tool: "bin/componentize-py",
            },
            Self::JavaScript => Toolchain {
                programs: &[
                    Program { name: "node", version: "--version", min: Some((20, 19)) },
                    Program { name: "npm", version: "--version", min: None },
                ],
                missing: "the JavaScript handlers need Node.js 20.19 or newer with npm \
                          (Debian: apt-get install nodejs npm)",
                pins: &["package.json", "package-lock.json"],
                tool: "node_modules/.bin/componentize-js",
            },
            Self::Go => Toolchain {
                programs: &[Program { name: "go", version: "version", min: Some(GO_MIN) }],
                missing: "the Go handlers need Go 1.25 or newer on PATH (https://go.dev/dl/)",
                pins: &["gocomp"],
                tool: "bin/gocomp",
            },
        }
    }

    /// Installs the toolchain into `<cache>/<language>-toolchain` when it is not there (or was
    /// installed from other pins) and returns the componentize program.
    fn install(self) -> anyhow::Result<PathBuf> {
        let Toolchain { programs, missing, pins, tool } = self.toolchain();
        for program in programs {
            require(program, missing)?;
        }
        let src = self.source_dir();
        let mut pinned = Sha256::new();
        for pin in pins {
            let path = src.join(pin);
            if path.is_dir() {
                hash_files(&mut pinned, &path)?;
            } else {
                pinned.update(std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?);
            }
        }
        let pinned = hex(&pinned.finalize());

        let cache = cache_dir();
        std::fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
        let _lock = lock(&cache.join(format!("{}-toolchain.lock", self.dir_name())))?;
        let dir = cache.join(format!("{}-toolchain", self.dir_name()));
        let (tool, marker) = (dir.join(tool), dir.join(".installed"));
        if std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == pinned) && tool.exists() {
            return Ok(tool);
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        eprintln!("xtask: installing the {} handlers' toolchain into {} (once)", self.dir_name(), dir.display());
        match self {
            Self::Python => {
                run(Command::new("python3").args(["-m", "venv"]).arg(&dir))
                    .with_context(|| format!("cannot create a venv; {missing}"))?;
                run(Command::new(dir.join("bin/pip"))
                    .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
                    .arg(src.join("requirements.txt")))?;
            }
            Self::JavaScript => {
                // `npm ci`: exactly the lock's packages.
                std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
                for pin in pins {
                    std::fs::copy(src.join(pin), dir.join(pin)).with_context(|| format!("cannot copy {pin}"))?;
                }
                run(Command::new("npm").current_dir(&dir).args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]))?;
            }
            Self::Go => {
                // Exactly the lock's crates; the build directory outlives reinstalls, so a changed
                // gocomp compiles in seconds, not minutes.
                let target = go_cache().join("gocomp-target");
                run(cargo()
                    .args(["build", "--release", "--locked", "--manifest-path"])
                    .arg(src.join("gocomp/Cargo.toml"))
                    .env("CARGO_TARGET_DIR", &target)
                    // Flags meant for the host build must not leak into this one.
                    .env_remove("RUSTFLAGS")
                    .env_remove("CARGO_ENCODED_RUSTFLAGS")
                    .env_remove("CARGO_BUILD_TARGET"))?;
                let bin = dir.join("bin");
                std::fs::create_dir_all(&bin).with_context(|| format!("cannot create {}", bin.display()))?;
                let built = target.join("release/gocomp");
                std::fs::copy(&built, &tool).with_context(|| format!("cannot copy {}", built.display()))?;
            }
        }
        if !tool.exists() {
            bail!("the install left no {}", tool.display());
        }
        std::fs::write(&marker, &pinned).with_context(|| format!("cannot write {}", marker.display()))?;
        Ok(tool)
    }

    /// The command that builds the handler in `dir` into `out`.
    fn command(self, tool: &Path, dir: &Path, out: &Path) -> Command {
        let wit = repo_root().join("wit");
        let mut cmd = Command::new(tool);
        match self {
            Self::Python => {
                cmd.arg("-d").arg(&wit).args(["-w", "handler", "componentize", "app", "-p"]);
                cmd.arg(dir).arg("-p").arg(self.source_dir()).arg("-o").arg(out);
            }
            Self::JavaScript => {
                // Run from the language's directory: ComponentizeJS maps it as the root the
                // handler's `../kafka-wasm.js` import resolves in.
                cmd.current_dir(self.source_dir()).arg(dir.join(self.entry())).arg("--wit").arg(&wit);
                cmd.args(["--world-name", "handler"]);
                if !JS_DISABLED_FEATURES.is_empty() {
                    cmd.arg("-d").args(JS_DISABLED_FEATURES);
                }
                cmd.arg("-o").arg(out);
            }
            Self::Go => {
                // The handler's Go module is put together in `target/handlers/go/.build/<handler>`
                // (under the output directory's lock); Go's caches are kept in the cache
                // directory, not in $HOME.
                let src = self.source_dir();
                let work = self.output_dir().join(".build").join(dir.file_name().unwrap_or_default());
                cmd.arg("build").arg("--lib").arg(src.join("sdk")).arg("--pkg").arg(src.join("pkg"));
                cmd.arg("--work").arg(work).arg(&wit).arg("handler").arg(dir).arg(out);
                cmd.env("GOCACHE", go_cache().join("build-cache")).env("GOMODCACHE", go_cache().join("mod-cache"));
            }
        }
        cmd
    }
}

/// Builds `language`'s handlers into `target/handlers/<language>/` unless the stamp there says
/// that nothing they depend on changed since the last build; returns that directory.
pub fn build(language: Language) -> anyhow::Result<PathBuf> {
    let out = language.output_dir();
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let _lock = lock(&out.join(".lock"))?;
    let handlers = language.handlers()?;
    let stamp = out.join(".stamp");
    let digest = inputs_digest(language)?;
    let built = handlers.iter().all(|(_, name)| out.join(format!("{name}.wasm")).is_file());
    if built && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == digest) {
        return Ok(out);
    }
    let tool = language.install()?;
    let started = std::time::Instant::now();
    // Both cores: every handler of the language at once.
    let mut children = Vec::new();
    for (dir, name) in &handlers {
        let dest = out.join(format!("{name}.wasm"));
        let tmp = dest.with_extension("wasm.tmp");
        let mut cmd = language.command(&tool, dir, &tmp);
        let shown = format!("{cmd:?}");
        let child = cmd.spawn().with_context(|| format!("cannot start {shown}"))?;
        children.push((child, shown, tmp, dest));
    }
    let mut failed = Vec::new();
    for (mut child, shown, tmp, dest) in children {
        let status = child.wait().with_context(|| format!("cannot wait for {shown}"))?;
        if status.success() {
            // Renamed whole, so a watcher never sees a half-written file.
            std::fs::rename(&tmp, &dest).with_context(|| format!("cannot write {}", dest.display()))?;
        } else {
            failed.push(format!("{shown} failed with {status}"));
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    std::fs::write(&stamp, &digest).with_context(|| format!("cannot write {}", stamp.display()))?;
    eprintln!(
        "xtask: built {} {} handlers in {:.1} s",
        handlers.len(),
        language.dir_name(),
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// The sha256 of what `language`'s components are built from: its directory (less what tools
/// and builds leave there), `wit/` and the build's options.
fn inputs_digest(language: Language) -> anyhow::Result<String> {
    let mut hash = Sha256::new();
    hash.update(language.recipe());
    for root in [language.source_dir(), repo_root().join("wit")] {
        hash_files(&mut hash, &root)?;
    }
    Ok(hex(&hash.finalize()))
}

/// Hashes every file under `root` (see `collect_files`): its path, length and bytes, in order.
fn hash_files(hash: &mut Sha256, root: &Path) -> anyhow::Result<()> {
    let mut files = Vec::new();
    collect_files(root, &mut files)?;
    files.sort();
    for file in files {
        let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        hash.update(file.strip_prefix(repo_root()).unwrap_or(&file).to_string_lossy().as_bytes());
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&bytes);
    }
    Ok(())
}

/// Where the Go build keeps what outlives a toolchain install: gocomp's cargo build directory and
/// Go's build and module caches (`<cache>/go/`).
fn go_cache() -> PathBuf {
    cache_dir().join("go")
}

/// Every file under `dir`, skipping `__pycache__`, `node_modules`, `target` (a build directory)
/// and hidden entries.
fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "__pycache__" || name == "node_modules" || name == "target" {
            continue;
        }
        if entry.file_type()?.is_dir() {
            collect_files(&entry.path(), files)?;
        } else {
            files.push(entry.path());
        }
    }
    Ok(())
}

/// Fails saying what to install when `program --version` (or its own argument, `go version`)
/// does not run or, given a least version, prints an older version than that (`v20.19.1`,
/// `Python 3.11.7`, `go version go1.26.8 linux/amd64`: the first `major.minor` in it).
fn require(&Program { name: program, version, min }: &Program, missing: &str) -> anyhow::Result<()> {
    // GOTOOLCHAIN=local: the Go installed, never one it would download.
    let out = match Command::new(program).arg(version).env("GOTOOLCHAIN", "local").output() {
        Ok(out) if out.status.success() => out,
        Ok(out) => bail!("`{program} {version}` failed with {}: {missing}", out.status),
        Err(e) => bail!("cannot run {program} ({e}): {missing}"),
    };
    let Some(min) = min else { return Ok(()) };
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.trim().trim_start_matches(|c: char| !c.is_ascii_digit());
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) if (major, minor) >= min => Ok(()),
        _ => bail!("{program} is {}: {missing}", text.trim()),
    }
}

/// An exclusive lock on `path` (created if missing), held until the file is dropped: another
/// process building or installing the same thing waits.
fn lock(path: &Path) -> anyhow::Result<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.lock().with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(file)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
