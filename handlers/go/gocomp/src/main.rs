//! gocomp: builds a Go handler into a WebAssembly component of a WIT world, with the Bytecode
//! Alliance crates as libraries (no wasm-tools or wit-bindgen binaries needed), offline.
//!
//! ```text
//! gocomp bindgen WIT WORLD OUTDIR
//!     the world's Go bindings (wit-bindgen-go), as the module `wit_component`
//! gocomp componentize WIT WORLD CORE.wasm OUT.wasm
//!     embed the world's component type into the core module and wrap it with the
//!     wasi_snapshot_preview1 reactor adapter (wit-component)
//! gocomp build [--lib DIR]... --pkg DIR --work DIR WIT WORLD HANDLER_DIR OUT.wasm
//!     all of it: in the work directory (emptied first), the bindings; the handler's .go files
//!     as the package of the world's export (export_<namespace>_<package>_<interface>); each
//!     --lib DIR as the package wit_component/<its directory's name>; a go.mod that takes
//!     go.bytecodealliance.org/pkg from the --pkg directory; then `go build` for wasip1 (a
//!     reactor: -buildmode=c-shared) and componentize
//! ```
//!
//! `go build` runs with `GOTOOLCHAIN=local`, `GOPROXY=off`, `GOWORK=off`, `GOENV=off`,
//! `GOFLAGS=-mod=readonly -buildvcs=false` and `-trimpath`, so it uses the Go on `PATH` (or
//! `$GO`), never the network, and the output depends only on the sources and the Go version.
//! The caller chooses `GOCACHE` and `GOMODCACHE`.

use anyhow::{Context, Result, bail};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use wit_bindgen_core::Files;
use wit_component::{ComponentEncoder, StringEncoding, embed_component_metadata};
use wit_parser::{Resolve, WorldId};

const USAGE: &str = "usage:
  gocomp bindgen WIT WORLD OUTDIR
  gocomp componentize WIT WORLD CORE.wasm OUT.wasm
  gocomp build [--lib DIR]... --pkg DIR --work DIR WIT WORLD HANDLER_DIR OUT.wasm";

/// The module wit-bindgen-go's runtime support comes from; `--pkg` replaces it.
const PKG_MODULE: &str = "go.bytecodealliance.org/pkg";

fn main() -> Result<()> {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let Some(command) = args.first().and_then(|a| a.to_str()) else { bail!("{USAGE}") };
    let rest: Vec<PathBuf> = args[1..].iter().map(PathBuf::from).collect();
    match (command, rest.as_slice()) {
        ("bindgen", [wit, world, out]) => bindgen(wit, text(world)?, out),
        ("componentize", [wit, world, core, out]) => {
            let size = componentize(wit, text(world)?, core, out)?;
            eprintln!("gocomp: wrote {} ({size} bytes)", out.display());
            Ok(())
        }
        ("build", _) => build(&rest),
        _ => bail!("{USAGE}"),
    }
}

fn text(arg: &Path) -> Result<&str> {
    arg.to_str().with_context(|| format!("{} is not UTF-8", arg.display()))
}

fn load(wit: &Path, world: &str) -> Result<(Resolve, WorldId)> {
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve.push_path(wit).with_context(|| format!("cannot parse {}", wit.display()))?;
    let id = resolve.select_world(&[pkg], Some(world))?;
    Ok((resolve, id))
}

/// Writes the Go bindings of `world` into `out`.
fn bindgen(wit: &Path, world: &str, out: &Path) -> Result<()> {
    let (mut resolve, id) = load(wit, world)?;
    let mut files = Files::default();
    // Not run through gofmt: the sources, so the binary's line tables, must not depend on
    // whether gofmt is on PATH. Quiet: it would print an empty line of no warnings.
    let opts = wit_bindgen_go::Opts { format: wit_bindgen_go::Format::False, quiet: true, ..Default::default() };
    opts.build().generate(&mut resolve, id, &mut files)?;
    for (name, contents) in files.iter() {
        let path = out.join(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Makes the core module `core` a component of `world` at `out`; returns its size.
fn componentize(wit: &Path, world: &str, core: &Path, out: &Path) -> Result<usize> {
    let (resolve, id) = load(wit, world)?;
    let mut module = std::fs::read(core).with_context(|| format!("cannot read {}", core.display()))?;
    embed_component_metadata(&mut module, &resolve, id, StringEncoding::UTF8, false)?;
    let component = ComponentEncoder::default()
        .validate(true)
        .module(&module)?
        .adapter(
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?
        .encode()?;
    std::fs::write(out, &component).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(component.len())
}

fn build(args: &[PathBuf]) -> Result<()> {
    let (mut libs, mut pkg, mut work, mut positional) = (Vec::new(), None, None, Vec::new());
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().cloned().with_context(|| format!("{flag} needs a directory\n{USAGE}"));
        match arg.to_str() {
            Some("--lib") => libs.push(value("--lib")?),
            Some("--pkg") => pkg = Some(value("--pkg")?),
            Some("--work") => work = Some(value("--work")?),
            _ => positional.push(arg.clone()),
        }
    }
    let (Some(pkg), Some(work), [wit, world, handler, out]) = (pkg, work, positional.as_slice()) else {
        bail!("{USAGE}");
    };
    let world = text(world)?;

    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("cannot empty {}", work.display()))?;
    }
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    bindgen(wit, world, &work)?;

    // The package the generated exports call into is the handler's.
    let exports =
        std::fs::read_to_string(work.join("wit_exports.go")).context("the bindings have no wit_exports.go")?;
    let export: Vec<&str> = exports
        .lines()
        .filter_map(|line| line.trim().strip_prefix("\"wit_component/")?.strip_suffix('"'))
        .filter(|package| package.starts_with("export_"))
        .collect();
    let [export] = export.as_slice() else {
        bail!("world {world} should export one interface, the handler's; its bindings call {export:?}");
    };
    if copy_go_files(handler, &work.join(export))? == 0 {
        bail!("{} holds no .go file", handler.display());
    }
    for lib in &libs {
        let name = lib.file_name().with_context(|| format!("{} has no name", lib.display()))?;
        if copy_go_files(lib, &work.join(name))? == 0 {
            bail!("{} holds no .go file", lib.display());
        }
    }

    // wit-bindgen-go's go.mod requires the runtime package's version; take it from --pkg.
    let pkg = std::path::absolute(&pkg).with_context(|| format!("cannot resolve {}", pkg.display()))?;
    if !pkg.join("go.mod").is_file() {
        bail!("{} is not the {PKG_MODULE} module (no go.mod)", pkg.display());
    }
    let go_mod = work.join("go.mod");
    let mut module = std::fs::read_to_string(&go_mod).context("the bindings have no go.mod")?;
    module.push_str(&format!("\nreplace {PKG_MODULE} => {}\n", pkg.display()));
    std::fs::write(&go_mod, module).with_context(|| format!("cannot write {}", go_mod.display()))?;

    let go = std::env::var_os("GO").unwrap_or_else(|| "go".into());
    let mut cmd = Command::new(&go);
    cmd.current_dir(&work)
        .args(["build", "-trimpath", "-buildmode=c-shared", "-ldflags=-checklinkname=0", "-o", "core.wasm", "."])
        .env("GOOS", "wasip1")
        .env("GOARCH", "wasm")
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOWORK", "off")
        .env("GOENV", "off")
        .env("GOFLAGS", "-mod=readonly -buildvcs=false")
        .env_remove("GOEXPERIMENT")
        .env_remove("GOWASM");
    let status = cmd.status().with_context(|| format!("cannot run {} (is Go installed?)", go.to_string_lossy()))?;
    if !status.success() {
        bail!("go build in {} failed with {status}", work.display());
    }
    componentize(wit, world, &work.join("core.wasm"), out)?;
    Ok(())
}

/// Copies the `.go` files of `from` (tests left out) and its assembly stubs into `to`; returns
/// how many `.go` files.
fn copy_go_files(from: &Path, to: &Path) -> Result<usize> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut count = 0;
    for entry in std::fs::read_dir(from).with_context(|| format!("cannot list {}", from.display()))? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let go = name.ends_with(".go") && !name.ends_with("_test.go");
        if path.is_file() && (go || name.ends_with(".s")) {
            std::fs::copy(&path, to.join(&name)).with_context(|| format!("cannot copy {}", path.display()))?;
            count += usize::from(go);
        }
    }
    Ok(count)
}
