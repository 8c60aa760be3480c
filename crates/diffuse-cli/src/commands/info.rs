//! `diffuse info PATH`: describe a pipeline folder or single-file checkpoint, or print the generation
//! parameters stored in a PNG; `diffuse info --system`: describe the machine and the kernels' choices on it.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use diffuse::loaders::hub::resolve_config;
use diffuse::loaders::summary::PipelineSummary;
use diffuse::loaders::PipelineFolder;
use diffuse::pipelines::images::read_image_parameters;

/// Arguments of `diffuse info`.
#[derive(Args)]
pub struct InfoArgs {
    /// A diffusers pipeline folder, a single-file checkpoint (.safetensors), a PNG, JPEG or WebP image written by
    /// diffuse or AUTOMATIC1111, or a WAV file written by diffuse.
    #[arg(required_unless_present = "system")]
    path: Option<PathBuf>,
    /// Describe this machine instead: CPU model, features, topology, caches, memory, and which kernel paths
    /// diffuse takes here and why.
    #[arg(long, conflicts_with = "path")]
    system: bool,
    /// For a single-file checkpoint: the diffusers folder or Hub id whose configs describe it (default: built in).
    #[arg(long)]
    config: Option<String>,
}

/// Prints the folder's or checkpoint's summary, or the image's generation parameters.
pub fn run(args: InfoArgs) -> Result<()> {
    let Some(path) = args.path.filter(|_| !args.system) else {
        print!(
            "{}",
            diffuse::system::SystemInfo::detect()
                .with_dot_rates()
                .with_dtype_speed()?
        );
        return Ok(());
    };
    if is_wav(&path) {
        let text = diffuse::pipelines::wav::read_wav_parameters(&path)?.with_context(|| {
            format!(
                "{}: no generation parameters in this WAV file",
                path.display()
            )
        })?;
        println!("{text}");
        return Ok(());
    }
    if is_image(&path) {
        let text = read_image_parameters(&path)?.with_context(|| {
            format!("{}: no generation parameters in this image", path.display())
        })?;
        println!("{text}");
        return Ok(());
    }
    let config = args.config.as_deref().map(resolve_config).transpose()?;
    let folder = PipelineFolder::open_path(&path, config)?;
    print!("{}", PipelineSummary::of(&folder)?);
    Ok(())
}

/// Whether `path` is a file starting with a WAV header.
fn is_wav(path: &Path) -> bool {
    let mut head = [0u8; 12];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|_| diffuse::pipelines::wav::is_wav(&head))
}

/// Whether `path` is a file starting with a PNG, JPEG or WebP signature.
fn is_image(path: &Path) -> bool {
    let mut signature = [0u8; 12];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut signature))
        .is_ok_and(|_| {
            signature.starts_with(b"\x89PNG\r\n\x1a\n")
                || signature.starts_with(&[0xFF, 0xD8])
                || (signature.starts_with(b"RIFF") && &signature[8..] == b"WEBP")
        })
}
