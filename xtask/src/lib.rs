//! Build helpers shared by the `cargo xtask` commands and by tests that need compiled components:
//! the wasm32-wasip2 target check and the builds of the handler and fixture workspaces, and of the
//! Python, JavaScript and Go handlers (`languages`).

pub mod attack;
pub mod bench;
pub mod demo;
pub mod deploy;
pub mod e2e;
pub mod languages;
pub mod ledger;
pub mod probe;

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The target handlers are compiled for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// The repository root (the workspace that holds `xtask/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// The target directory of the root workspace (`CARGO_TARGET_DIR` or `<root>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join("target"),
    }
}

/// The cargo to run: the one that runs us, when there is one.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs `cmd`, failing with its command line when it does not succeed.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// Adds the wasm32-wasip2 target with rustup when it is not installed.
pub fn ensure_wasm_target() -> anyhow::Result<()> {
    let sysroot = Command::new("rustc").args(["--print", "sysroot"]).output().context("cannot run rustc")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib").join(WASM_TARGET).exists() {
        return Ok(());
    }
    eprintln!("xtask: installing the {WASM_TARGET} target with rustup");
    run(Command::new("rustup").args(["target", "add", WASM_TARGET]))
}

/// Serialises builds started from one process (tests run in parallel threads).
static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Builds the component workspace at `<root>/<workspace>` in release for wasm32-wasip2 and copies
/// each `<crate>.wasm` to `<target>/<workspace>/<crate-name>.wasm` (underscores become hyphens).
/// Returns that output directory.
pub fn build_components(workspace: &str) -> anyhow::Result<PathBuf> {
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    ensure_wasm_target()?;
    let root = repo_root();
    let wasm_target_dir = target_dir().join("wasm");
    let mut cmd = cargo();
    cmd.current_dir(root.join(workspace))
        .args(["build", "--release", "--target", WASM_TARGET, "--target-dir"])
        .arg(&wasm_target_dir)
        // Flags meant for the host build must not leak into the guest build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    run(&mut cmd)?;
    let built = wasm_target_dir.join(WASM_TARGET).join("release");
    let out = target_dir().join(workspace);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    for entry in std::fs::read_dir(&built).with_context(|| format!("cannot list {}", built.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wasm") {
            let name = path.file_name().map(|n| n.to_string_lossy().replace('_', "-")).unwrap_or_default();
            let dest = out.join(name);
            // Copy to a temporary name and rename, so a watcher never sees a half-written file.
            let tmp = dest.with_extension("wasm.tmp");
            std::fs::copy(&path, &tmp).with_context(|| format!("cannot copy {}", path.display()))?;
            std::fs::rename(&tmp, &dest).with_context(|| format!("cannot write {}", dest.display()))?;
        }
    }
    Ok(out)
}

/// Builds the handlers into `target/handlers/` and returns that directory: the Rust ones as
/// `<name>.wasm`, the Python, JavaScript and Go ones as `python/<name>.wasm`, `js/<name>.wasm`
/// and `go/<name>.wasm` (those only when their sources, `wit/` or toolchain changed; see
/// [`languages`]).
pub fn build_handlers() -> anyhow::Result<PathBuf> {
    let dir = build_components("handlers")?;
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for language in languages::Language::ALL {
        languages::build(language)?;
    }
    Ok(dir)
}

/// Builds the sandbox test fixtures into `target/test-fixtures/` and returns that directory.
pub fn build_test_fixtures() -> anyhow::Result<PathBuf> {
    build_components("test-fixtures")
}

/// The current time, `YYYY-MM-DD HH:MM` (UTC), from `date` (no clock crate for one line).
pub fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Replaces what lies between the markers `begin` and `end` in the document at `path` with
/// `body` (the markers stay), so a command can keep its figures in a hand-written document.
pub fn replace_generated(path: &Path, begin: &str, end: &str, body: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (Some(from), Some(to)) = (text.find(begin), text.find(end)) else {
        bail!("{} has no generated section (markers {begin:?} … {end:?})", path.display());
    };
    let out = format!("{}{begin}\n\n{}\n\n{}", &text[..from], body.trim(), &text[to..]);
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}
