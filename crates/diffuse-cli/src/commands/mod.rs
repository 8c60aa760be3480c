//! One module per subcommand: parse arguments, call the library, print.

use std::path::PathBuf;

use anyhow::{bail, Result};

pub mod bench;
pub mod generate;
pub mod info;
pub mod serve;
pub mod train;

/// The model used when `--model` is not given: `DIFFUSE_MODEL` if set, else the bundled model in the source
/// tree this binary was built from.
pub fn default_model() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("DIFFUSE_MODEL").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let bundled = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/diffuse-tiny"
    ));
    if bundled.join("model_index.json").is_file() {
        return Ok(bundled);
    }
    bail!(
        "no --model given and the bundled model is not at {}; pass --model FOLDER_OR_HUB_ID or set DIFFUSE_MODEL",
        bundled.display()
    )
}
