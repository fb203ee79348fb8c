//! The `host` command's subcommands for handler authors: `invoke` runs one record through a
//! handler with the real runtime and limits; `check` validates a component against the contract.

pub mod check;
pub mod invoke;

use crate::config::HandlerSettings;
use crate::runtime::HandlerLimits;
use std::path::Path;

/// Exit code for bad usage or a file that is not a valid handler.
pub const EXIT_USAGE: u8 = 2;

/// Reads the limits of a `<topic>.toml` handler settings file (unknown keys rejected).
pub fn read_limits(path: &Path) -> anyhow::Result<HandlerLimits> {
    let text = crate::config::read_settings_file(path).map_err(anyhow::Error::msg)?;
    HandlerSettings::default()
        .overlay(&text)
        .map(|s| s.limits)
        .map_err(|e| anyhow::anyhow!("invalid handler settings in {}: {e}", path.display()))
}
