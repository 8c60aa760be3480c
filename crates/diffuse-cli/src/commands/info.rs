//! `diffuse info PATH`: describe a pipeline folder.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use diffuse::loaders::summary::PipelineSummary;
use diffuse::loaders::PipelineFolder;

/// Arguments of `diffuse info`.
#[derive(Args)]
pub struct InfoArgs {
    /// A diffusers pipeline folder.
    path: PathBuf,
}

/// Prints the summary of the folder.
pub fn run(args: InfoArgs) -> Result<()> {
    let folder = PipelineFolder::open(&args.path)?;
    print!("{}", PipelineSummary::of(&folder)?);
    Ok(())
}
