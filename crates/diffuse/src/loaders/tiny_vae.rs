//! TAESD (diffusers' `AutoencoderTiny`) folders: `config.json` and `diffusion_pytorch_model.safetensors`, local or
//! from the Hub (madebyollin/taesd for SD 1.x/2.x, madebyollin/taesdxl for SDXL).

use std::path::Path;

use super::hub::resolve_model_folder;
use super::json::read_json;
use super::weights::{find_weight_files, WeightFiles};
use super::LoadOptions;
use crate::models::vae::{AutoencoderTinyConfig, TinyDecoder};
use crate::{Error, Result};

/// `spec` with the shorthand `taesd` written out: madebyollin/taesd for SD 1.x/2.x latents, madebyollin/taesdxl
/// for SDXL's; anything else is returned as is.
pub fn expand_shorthand(spec: &str, sdxl: bool) -> &str {
    match spec {
        "taesd" if sdxl => "madebyollin/taesdxl",
        "taesd" => "madebyollin/taesd",
        other => other,
    }
}

/// Loads the decoder of the `AutoencoderTiny` at `spec` (a folder or a Hub id) in `opts`' dtype and device;
/// `what` names the setting in errors.
pub fn load_tiny_decoder(spec: &str, opts: &LoadOptions, what: &str) -> Result<TinyDecoder> {
    let folder = resolve_model_folder(spec, what)?;
    load_from_folder(&folder, opts)
}

fn load_from_folder(folder: &Path, opts: &LoadOptions) -> Result<TinyDecoder> {
    let config_path = folder.join("config.json");
    let class: serde_json::Value = read_json(&config_path)?;
    let class = class
        .get("_class_name")
        .and_then(|c| c.as_str())
        .unwrap_or("(none)");
    if class != "AutoencoderTiny" {
        return Err(Error::unsupported(
            config_path.display().to_string(),
            "_class_name",
            class,
            "AutoencoderTiny (TAESD)",
        ));
    }
    let config: AutoencoderTinyConfig = read_json(&config_path)?;
    let files = find_weight_files(folder, "diffusion_pytorch_model", opts.variant)?;
    let vb = WeightFiles::open(&files)?.var_builder(opts.dtype, &opts.device);
    TinyDecoder::new(vb, &config, &config_path.display().to_string())
}
