//! `diffuse info PATH`: describe a pipeline folder, or print the generation parameters stored in a PNG.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use diffuse::loaders::summary::PipelineSummary;
use diffuse::loaders::PipelineFolder;
use diffuse::pipelines::images::read_png_parameters;

/// Arguments of `diffuse info`.
#[derive(Args)]
pub struct InfoArgs {
    /// A diffusers pipeline folder, or a PNG written by diffuse or AUTOMATIC1111.
    path: PathBuf,
}

/// Prints the folder's summary, or the PNG's `parameters` text.
pub fn run(args: InfoArgs) -> Result<()> {
    if args.path.is_file() {
        let text = read_png_parameters(&args.path)?.with_context(|| {
            format!("{}: no `parameters` text in this PNG", args.path.display())
        })?;
        println!("{text}");
        return Ok(());
    }
    let folder = PipelineFolder::open(&args.path)?;
    print!("{}", PipelineSummary::of(&folder)?);
    Ok(())
}
