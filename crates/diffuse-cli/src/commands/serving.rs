//! What `diffuse serve` and `diffuse worker` share: the models and their extras, the request limits, and the
//! broker.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use diffuse::device::Quantization;
use diffuse::loaders::LoadOptions;
use diffuse_server::{BrokerConfig, Limits, ModelSpec};

/// The served models and what requests may add to them.
#[derive(Args)]
pub struct ModelArgs {
    /// A model to serve, `MODEL` or `NAME=MODEL`: a diffusers folder, a Hub id (from the local cache) or a
    /// single `.safetensors` checkpoint; repeat for several, the first is the default. Without it: the
    /// bundled model.
    #[arg(long = "model", value_name = "[NAME=]MODEL")]
    pub models: Vec<String>,
    /// The folder LoRAs are named from: `<lora:NAME:W>` prompt tags and the native API's `loras` field
    /// resolve NAME to NAME.safetensors there (subfolders included); requests never give paths.
    #[arg(long, value_name = "DIR")]
    pub lora_dir: Option<std::path::PathBuf>,
    /// The folder of textual-inversion embeddings (`.safetensors`), each used where a prompt names its file's
    /// stem, on every API.
    #[arg(long, value_name = "DIR")]
    pub embeddings_dir: Option<std::path::PathBuf>,
    /// Draw live previews with TAESD (diffusers' `AutoencoderTiny`) instead of the cheap latent projection: a
    /// folder, a Hub id, or `taesd` for madebyollin/taesd (taesdxl on SDXL models). Final images still come
    /// from each model's VAE.
    #[arg(long, id = "preview decoder", value_name = "FOLDER|HUB_ID|taesd")]
    pub preview_decoder: Option<String>,
    /// Quantize the models' UNets: `int8` runs their large linear layers and convolutions with int8 weights and
    /// activations, and their attention scores over 2048 keys or more in int8, on the CPU's VNNI instructions (faster; images close to, not equal to, f32's). Needs
    /// AVX512-VNNI.
    #[arg(long, value_name = "int8")]
    pub quantize: Option<String>,
}

impl ModelArgs {
    /// How the models load: f32 on the CPU, quantized as `--quantize` says.
    pub fn load_options(&self) -> Result<LoadOptions> {
        let quantize = self
            .quantize
            .as_deref()
            .map(Quantization::from_name)
            .transpose();
        let opts = LoadOptions {
            quantize: quantize.map_err(|e| super::flags::with_flags::<Self>(e.into()))?,
            ..LoadOptions::default()
        };
        if let Some(q) = opts.quantize {
            q.check(&opts.device, opts.dtype)
                .map_err(|e| super::flags::with_flags::<Self>(e.into()))?;
        }
        Ok(opts)
    }

    /// The models to load (the default one when none is named), after checking the folders' flags.
    pub fn specs(&self) -> Result<Vec<ModelSpec>> {
        for (flag, dir) in [
            ("--lora-dir", &self.lora_dir),
            ("--embeddings-dir", &self.embeddings_dir),
        ] {
            if let Some(dir) = dir {
                if !dir.is_dir() {
                    anyhow::bail!("invalid {flag}: {} is not a folder", dir.display());
                }
            }
        }
        // A folder or Hub id is checked now, so that its error names the flag (`taesd` depends on each model).
        if let Some(spec) = self.preview_decoder.as_deref().filter(|s| *s != "taesd") {
            diffuse::loaders::hub::resolve_model_folder(spec, "preview decoder")
                .with_context(|| format!("--preview-decoder {spec}"))?;
        }
        if self.models.is_empty() {
            let path = super::default_model()?;
            return Ok(vec![ModelSpec::parse(&path.to_string_lossy())?]);
        }
        Ok(self
            .models
            .iter()
            .map(|m| ModelSpec::parse(m))
            .collect::<Result<_, _>>()?)
    }
}

/// Limits on what one request may ask for.
#[derive(Args)]
pub struct LimitArgs {
    /// Most images per request.
    #[arg(long, default_value_t = Limits::default().max_images)]
    pub max_images: usize,
    /// Most denoising steps per request.
    #[arg(long, default_value_t = Limits::default().max_steps)]
    pub max_steps: usize,
    /// Largest output width or height.
    #[arg(long, default_value_t = Limits::default().max_side)]
    pub max_side: usize,
    /// Largest output width × height.
    #[arg(long, default_value_t = Limits::default().max_pixels)]
    pub max_pixels: usize,
}

impl LimitArgs {
    /// The limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_images: self.max_images,
            max_steps: self.max_steps,
            max_side: self.max_side,
            max_pixels: self.max_pixels,
            ..Limits::default()
        }
    }
}

/// How jobs are delivered through the broker.
#[derive(Args)]
pub struct DeliveryArgs {
    /// Seconds a finished job's state and images are kept in the broker.
    #[arg(long, default_value_t = 24 * 3600, value_name = "SECONDS")]
    pub result_ttl: u64,
    /// Seconds without a heartbeat after which a running job's worker is taken for stopped and the job is
    /// given to another worker.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub claim_after: u64,
    /// Deliveries of a job whose workers keep stopping before it fails for good.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
}

impl DeliveryArgs {
    /// The broker's settings for `url`.
    pub fn config(&self, url: String) -> BrokerConfig {
        BrokerConfig {
            url,
            result_ttl: Duration::from_secs(self.result_ttl),
            claim_after: Duration::from_secs(self.claim_after),
            max_attempts: self.max_attempts,
        }
    }
}
