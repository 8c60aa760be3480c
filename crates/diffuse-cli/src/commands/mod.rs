//! One module per subcommand: parse arguments, call the library, print.

use std::path::PathBuf;

use anyhow::Result;

pub mod bench;
mod flags;
pub mod generate;
pub mod info;
pub mod serve;
mod serving;
pub mod train;
pub mod worker;

/// The model used when `--model` is not given: `DIFFUSE_MODEL` if set, else the bundled model (inside the
/// binary, written out to the cache on first use).
pub fn default_model() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("DIFFUSE_MODEL").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    crate::bundled::bundled_model()
}
