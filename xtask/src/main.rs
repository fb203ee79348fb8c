//! `cargo xtask`: the project's automation. `build-handlers` builds the handler components;
//! `test` runs every check CI runs.

use anyhow::bail;
use xtask::{build_handlers, build_test_fixtures, cargo, repo_root, run};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  build-handlers   build the handler components into target/handlers/ (Rust), target/handlers/python/,
                   target/handlers/js/ and target/handlers/go/ (toolchains installed into
                   ~/.cache/kafka-wasm once; Go 1.25 or newer needed)
  demo             run the whole system locally (embedded broker unless KAFKA_BROKERS is set)
                   [--users N] create N users; [--exit] exit once their chains complete
                   [--timeout SECS] how long --exit waits (default 120)
                   [--language rust|python|js|go] which build of the handlers the host runs
  test             run every check: fmt, clippy, handler builds, all tests, the demo's full chain,
                   the end-to-end suite on Tansu (installed into ~/.cache/kafka-wasm when missing),
                   the attack suite
  e2e              only the end-to-end suite on Tansu
  attack           the fault suite: kill -9, broker outage, request errors, producer down,
                   rebalance storm, SIGTERM under load, on real processes; [--soak] many more cycles; [--write-docs] put the
                   figures in docs/RELIABILITY.md
  bench            run every benchmark (about 10 minutes), print PASS/FAIL per performance target,
                   write docs/BENCHMARKS.md and docs/bench.svg";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("build-handlers") => {
            let dir = build_handlers()?;
            println!("handlers built into {}", dir.display());
            Ok(())
        }
        Some("test") => test(),
        Some("e2e") => xtask::e2e::run(&*stop_flag()?),
        Some("bench") => xtask::bench::run(&*stop_flag()?),
        Some("attack") => xtask::attack::run(xtask::attack::Options::parse(&args[1..])?, &*stop_flag()?).map(drop),
        Some("demo") => xtask::demo::run(xtask::demo::Options::parse(&args[1..])?, stop_flag()?),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}\n\n{USAGE}"),
        None => bail!("{USAGE}"),
    }
}

/// Every check, in the order that fails fastest.
fn test() -> anyhow::Result<()> {
    let root = repo_root();
    step("format");
    for manifest in ["Cargo.toml", "handlers/Cargo.toml", "test-fixtures/Cargo.toml"] {
        run(cargo().current_dir(&root).args(["fmt", "--all", "--check", "--manifest-path", manifest]))?;
    }
    step("build handlers and fixtures");
    build_handlers()?;
    build_test_fixtures()?;
    step("clippy");
    run(cargo().current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]))?;
    for ws in ["handlers", "test-fixtures"] {
        let target_dir = xtask::target_dir().join("wasm");
        run(cargo()
            .current_dir(root.join(ws))
            .args(["clippy", "--release", "--target", xtask::WASM_TARGET, "--target-dir"])
            .arg(target_dir)
            .args(["--", "-D", "warnings"]))?;
    }
    step("deployment checks: cfn-lint on the addons, hadolint on the Dockerfile");
    xtask::deploy::lint()?;
    step("tests");
    run(cargo().current_dir(&root).args(["test", "--workspace"]))?;
    // The SDK's own unit tests (its packed-records decoder) run natively: they call no import.
    run(cargo().current_dir(root.join("handlers")).args(["test", "-p", "handler-sdk", "--lib"]))?;
    step("demo: the full chain for 50 users through real processes on the embedded broker, Python handlers");
    let options = xtask::demo::Options {
        users: Some(50),
        exit: true,
        timeout: std::time::Duration::from_secs(180),
        language: Some(xtask::languages::Language::Python),
    };
    xtask::demo::run(options, stop_flag()?)?;
    step("end-to-end suite on a real broker (Tansu)");
    xtask::e2e::run(&*stop_flag()?)?;
    step("attack suite: faults injected into real processes under load");
    xtask::attack::run(xtask::attack::Options { soak: false, write_docs: false }, &*stop_flag()?)?;
    Ok(())
}

/// Set by Ctrl-C or SIGTERM; the demo stops its children when it is.
fn stop_flag() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    static FLAG: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> = std::sync::OnceLock::new();
    if let Some(flag) = FLAG.get() {
        return Ok(flag.clone());
    }
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handler_flag = flag.clone();
    ctrlc::set_handler(move || handler_flag.store(true, std::sync::atomic::Ordering::Relaxed))?;
    Ok(FLAG.get_or_init(|| flag).clone())
}

fn step(name: &str) {
    eprintln!("\n==> xtask test: {name}");
}
