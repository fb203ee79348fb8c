//! `cargo xtask`: the project's automation. `build-handlers` builds the handler components;
//! `test` runs every check CI runs.

use anyhow::bail;
use xtask::{build_handlers, build_test_fixtures, cargo, repo_root, run};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  build-handlers   build the handler components into target/handlers/
  test             run every check: fmt, clippy, handler builds, all tests";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("build-handlers") => {
            let dir = build_handlers()?;
            println!("handlers built into {}", dir.display());
            Ok(())
        }
        Some("test") => test(),
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
    run(cargo().current_dir(&root).args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    for ws in ["handlers", "test-fixtures"] {
        let target_dir = xtask::target_dir().join("wasm");
        run(cargo()
            .current_dir(root.join(ws))
            .args(["clippy", "--release", "--target", xtask::WASM_TARGET, "--target-dir"])
            .arg(target_dir)
            .args(["--", "-D", "warnings"]))?;
    }
    step("tests");
    run(cargo().current_dir(&root).args(["test", "--workspace"]))?;
    Ok(())
}

fn step(name: &str) {
    eprintln!("\n==> xtask test: {name}");
}
