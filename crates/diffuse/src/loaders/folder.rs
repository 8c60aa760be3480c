//! A diffusers pipeline folder: `model_index.json` plus one subfolder per component.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::json::read_json;
use super::key_maps::legacy_vae_attention_keys;
use super::model_index::ModelIndex;
use super::weights::{find_weight_files, Variant, WeightFiles};
use crate::models::clip::config::ClipTextConfig;
use crate::models::clip::text_model::ClipTextModel;
use crate::models::clip::tokenizer::ClipTokenizer;
use crate::models::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::models::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::{Error, Result};

/// How to load weights: the compute dtype, the device, and which stored variant to prefer.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The dtype the models compute in; stored f32/f16/bf16 tensors are converted to it.
    pub dtype: DType,
    /// Where the weights go.
    pub device: Device,
    /// Which weight files to prefer.
    pub variant: Variant,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            variant: Variant::Default,
        }
    }
}

/// An opened diffusers pipeline folder.
#[derive(Debug, Clone)]
pub struct PipelineFolder {
    root: PathBuf,
    index: ModelIndex,
}

impl PipelineFolder {
    /// Opens the folder at `root`, reading its `model_index.json`.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::Io {
                path: root.to_path_buf(),
                cause: std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder"),
            });
        }
        let index = ModelIndex::read(&root.join("model_index.json"))?;
        Ok(Self {
            root: root.to_path_buf(),
            index,
        })
    }

    /// The folder's path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The parsed `model_index.json`.
    pub fn index(&self) -> &ModelIndex {
        &self.index
    }

    /// The subfolder of component `name`, which must be listed in `model_index.json` and exist.
    pub fn component_dir(&self, name: &str) -> Result<PathBuf> {
        if self.index.class_of(name).is_none() {
            return Err(Error::Json {
                path: self.root.join("model_index.json"),
                message: format!("no component `{name}` is listed"),
            });
        }
        let dir = self.root.join(name);
        if !dir.is_dir() {
            return Err(Error::Io {
                path: dir,
                cause: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "component folder listed in model_index.json is missing",
                ),
            });
        }
        Ok(dir)
    }

    /// Reads `unet/config.json`.
    pub fn unet_config(&self) -> Result<UNet2DConditionConfig> {
        read_json(&self.component_dir("unet")?.join("config.json"))
    }

    /// Reads `vae/config.json`.
    pub fn vae_config(&self) -> Result<AutoencoderKLConfig> {
        read_json(&self.component_dir("vae")?.join("config.json"))
    }

    /// Reads `<name>/config.json` of a text encoder (`text_encoder` or `text_encoder_2`).
    pub fn text_encoder_config(&self, name: &str) -> Result<ClipTextConfig> {
        read_json(&self.component_dir(name)?.join("config.json"))
    }

    /// The weight files of component `name` (`diffusion_pytorch_model*` or `model*`).
    pub fn weight_files(&self, name: &str, variant: Variant) -> Result<WeightFiles> {
        let dir = self.component_dir(name)?;
        let stem = if name.starts_with("text_encoder") {
            "model"
        } else {
            "diffusion_pytorch_model"
        };
        WeightFiles::open(&find_weight_files(&dir, stem, variant)?)
    }

    /// Loads the UNet.
    pub fn load_unet(&self, opts: &LoadOptions) -> Result<UNet2DConditionModel> {
        let cfg = self.unet_config()?;
        let vb = self
            .weight_files("unet", opts.variant)?
            .var_builder(opts.dtype, &opts.device);
        UNet2DConditionModel::new(vb, &cfg)
    }

    /// Loads the VAE (old checkpoints' `query`/`key`/`value`/`proj_attn` names are mapped).
    pub fn load_vae(&self, opts: &LoadOptions) -> Result<AutoencoderKL> {
        let cfg = self.vae_config()?;
        let files = self.weight_files("vae", opts.variant)?;
        let names: Vec<String> = files.stored().into_iter().map(|(n, _, _)| n).collect();
        let vb = files
            .with_keys(legacy_vae_attention_keys(&names))
            .var_builder(opts.dtype, &opts.device);
        AutoencoderKL::new(vb, &cfg)
    }

    /// Loads text encoder `name`, with its projection when `model_index.json` names
    /// `CLIPTextModelWithProjection`.
    pub fn load_text_encoder(&self, name: &str, opts: &LoadOptions) -> Result<ClipTextModel> {
        let cfg = self.text_encoder_config(name)?;
        let class = self.index.class_of(name).unwrap_or_default();
        let with_projection = match class {
            "CLIPTextModel" => false,
            "CLIPTextModelWithProjection" => true,
            other => {
                return Err(Error::unsupported(
                    "model_index.json",
                    name,
                    other,
                    "CLIPTextModel or CLIPTextModelWithProjection",
                ))
            }
        };
        let vb = self
            .weight_files(name, opts.variant)?
            .var_builder(opts.dtype, &opts.device);
        ClipTextModel::new(vb, &cfg, with_projection)
    }

    /// Loads tokenizer `name` (`tokenizer` or `tokenizer_2`).
    pub fn load_tokenizer(&self, name: &str) -> Result<ClipTokenizer> {
        ClipTokenizer::from_folder(self.component_dir(name)?)
    }
}
