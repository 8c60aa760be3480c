//! `diffuse info PATH`: describe a pipeline folder or single-file checkpoint, or print the generation
//! parameters stored in a PNG.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use diffuse::loaders::hub::resolve_config;
use diffuse::loaders::summary::PipelineSummary;
use diffuse::loaders::PipelineFolder;
use diffuse::pipelines::images::read_png_parameters;

/// Arguments of `diffuse info`.
#[derive(Args)]
pub struct InfoArgs {
    /// A diffusers pipeline folder, a single-file checkpoint (.safetensors), or a PNG written by diffuse or
    /// AUTOMATIC1111.
    path: PathBuf,
    /// For a single-file checkpoint: the diffusers folder or Hub id whose configs describe it (default: built in).
    #[arg(long)]
    config: Option<String>,
}

/// Prints the folder's or checkpoint's summary, or the PNG's `parameters` text.
pub fn run(args: InfoArgs) -> Result<()> {
    if is_png(&args.path) {
        let text = read_png_parameters(&args.path)?.with_context(|| {
            format!("{}: no `parameters` text in this PNG", args.path.display())
        })?;
        println!("{text}");
        return Ok(());
    }
    let config = args.config.as_deref().map(resolve_config).transpose()?;
    let folder = PipelineFolder::open_path(&args.path, config)?;
    print!("{}", PipelineSummary::of(&folder)?);
    Ok(())
}

/// Whether `path` is a file starting with the PNG signature.
fn is_png(path: &Path) -> bool {
    let mut signature = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut signature))
        .is_ok_and(|_| signature == *b"\x89PNG\r\n\x1a\n")
}
