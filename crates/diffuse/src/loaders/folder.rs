//! A diffusers pipeline: `model_index.json` plus one subfolder per component — or a single-file checkpoint
//! read through a pipeline's configurations (a folder's, or ones built into the binary), as diffusers'
//! `from_single_file` reads one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use serde::de::DeserializeOwned;

use super::json::{parse_json, read_json};
use super::key_maps::legacy_vae_attention_keys;
use super::model_index::ModelIndex;
use super::single_file::builtin::{self, BuiltinConfig};
use super::single_file::SingleFile;
use super::weights::{find_weight_files, TensorRecord, Variant, WeightFiles};
use crate::device::Quantization;
use crate::models::clap::{ClapTextConfig, ClapTextModel, RobertaTokenizer};
use crate::models::clip::config::ClipTextConfig;
use crate::models::clip::text_model::ClipTextModel;
use crate::models::clip::tokenizer::ClipTokenizer;
use crate::models::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::models::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::models::vocoder::{HifiGan, HifiGanConfig};
use crate::schedulers::SchedulerConfig;
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
    /// The UNet's quantization, if any (the text encoders and VAE keep `dtype`).
    pub quantize: Option<Quantization>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            variant: Variant::Default,
            quantize: None,
        }
    }
}

/// Where a pipeline's configuration files (`model_index.json`, component configs, tokenizers, scheduler
/// config) come from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A diffusers pipeline folder.
    Folder(PathBuf),
    /// A Hub repo's configurations built into the binary.
    Builtin(&'static BuiltinConfig),
}

impl ConfigSource {
    /// The folder, or the built-in configuration's `<built-in REPO>` label.
    pub fn label(&self) -> PathBuf {
        match self {
            Self::Folder(dir) => dir.clone(),
            Self::Builtin(config) => config.label(),
        }
    }
}

/// Where a pipeline's weights come from.
#[derive(Debug, Clone)]
enum WeightSource {
    /// The component folders of the configuration folder.
    Folder,
    /// A single-file checkpoint.
    SingleFile(Arc<SingleFile>),
}

/// An opened pipeline: a diffusers folder, or a single-file checkpoint with the configurations it is read
/// through.
#[derive(Debug, Clone)]
pub struct PipelineFolder {
    root: PathBuf,
    index: ModelIndex,
    configs: ConfigSource,
    weights: WeightSource,
}

impl PipelineFolder {
    /// Opens the diffusers folder at `root`, reading its `model_index.json`.
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
            configs: ConfigSource::Folder(root.to_path_buf()),
            weights: WeightSource::Folder,
        })
    }

    /// Opens the single-file checkpoint `file`, configured by `config` (a diffusers folder's configurations,
    /// as diffusers' `config=`), or when `None` by the built-in configurations of the repo diffusers uses for
    /// the detected model (SD 1.5, SD 2.1 768-v, SDXL base 1.0; inpainting checkpoints need `config`).
    pub fn open_single_file(file: &Path, config: Option<ConfigSource>) -> Result<Self> {
        let checkpoint = SingleFile::open(file)?;
        let configs = match config {
            Some(source) => source,
            None => ConfigSource::Builtin(builtin::default_for(checkpoint.kind()).ok_or_else(|| {
                Error::invalid(
                    "config",
                    format!(
                        "{}: holds {}, whose configuration is not built in; give a diffusers folder or \
                         Hub id as `config` (diffusers uses {})",
                        file.display(),
                        checkpoint.kind(),
                        checkpoint.kind().default_config_repo()
                    ),
                )
            })?),
        };
        let index = match &configs {
            ConfigSource::Folder(dir) => {
                if !dir.is_dir() {
                    return Err(Error::Io {
                        path: dir.clone(),
                        cause: std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder"),
                    });
                }
                ModelIndex::read(&dir.join("model_index.json"))?
            }
            ConfigSource::Builtin(config) => {
                let text = config.file("model_index.json").unwrap_or("{}");
                ModelIndex::parse(text, &config.label().join("model_index.json"))?
            }
        };
        Ok(Self {
            root: file.to_path_buf(),
            index,
            configs,
            weights: WeightSource::SingleFile(Arc::new(checkpoint)),
        })
    }

    /// Opens `path`: a single-file checkpoint (configured by `config`, see
    /// [`PipelineFolder::open_single_file`]) or a diffusers folder (which takes no `config`).
    pub fn open_path(path: &Path, config: Option<ConfigSource>) -> Result<Self> {
        if path.is_dir() {
            return match config {
                None => Self::open(path),
                Some(_) => Err(Error::invalid(
                    "config",
                    format!(
                        "{} is a diffusers folder, which has its own configuration; a `config` applies to \
                         single-file checkpoints",
                        path.display()
                    ),
                )),
            };
        }
        Self::open_single_file(path, config)
    }

    /// The folder's path, or the single file's.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The parsed `model_index.json`.
    pub fn index(&self) -> &ModelIndex {
        &self.index
    }

    /// Where the configurations come from.
    pub fn config_source(&self) -> &ConfigSource {
        &self.configs
    }

    /// The single-file checkpoint the weights come from, if they do not come from component folders.
    pub fn single_file(&self) -> Option<&SingleFile> {
        match &self.weights {
            WeightSource::Folder => None,
            WeightSource::SingleFile(file) => Some(file),
        }
    }

    /// The subfolder of component `name` in the configuration folder, which must be listed in
    /// `model_index.json` and exist (built-in configurations have no folders).
    pub fn component_dir(&self, name: &str) -> Result<PathBuf> {
        self.check_listed(name)?;
        let root = match &self.configs {
            ConfigSource::Folder(dir) => dir,
            ConfigSource::Builtin(config) => {
                return Err(Error::invalid(
                    name,
                    format!("{} has no component folders", config.label().display()),
                ))
            }
        };
        let dir = root.join(name);
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

    fn check_listed(&self, name: &str) -> Result<()> {
        if self.index.class_of(name).is_none() {
            return Err(Error::Json {
                path: self.configs.label().join("model_index.json"),
                message: format!("no component `{name}` is listed"),
            });
        }
        Ok(())
    }

    /// Reads `<component>/<file>` of the configurations.
    pub(crate) fn read_config<T: DeserializeOwned>(
        &self,
        component: &str,
        file: &str,
    ) -> Result<T> {
        match &self.configs {
            ConfigSource::Folder(_) => read_json(&self.component_dir(component)?.join(file)),
            ConfigSource::Builtin(config) => {
                self.check_listed(component)?;
                let relative = format!("{component}/{file}");
                let path = config.label().join(&relative);
                let text = config.file(&relative).ok_or_else(|| Error::Io {
                    path: path.clone(),
                    cause: std::io::Error::new(std::io::ErrorKind::NotFound, "not built in"),
                })?;
                parse_json(text, &path)
            }
        }
    }

    /// Reads `unet/config.json`.
    pub fn unet_config(&self) -> Result<UNet2DConditionConfig> {
        self.read_config("unet", "config.json")
    }

    /// Reads `vae/config.json`.
    pub fn vae_config(&self) -> Result<AutoencoderKLConfig> {
        self.read_config("vae", "config.json")
    }

    /// Reads `<name>/config.json` of a text encoder (`text_encoder` or `text_encoder_2`).
    pub fn text_encoder_config(&self, name: &str) -> Result<ClipTextConfig> {
        self.read_config(name, "config.json")
    }

    /// Reads `scheduler/scheduler_config.json`. As diffusers loads each component as the class `model_index.json`
    /// names, that class wins over the file's own `_class_name` (whose other values it keeps).
    pub fn scheduler_config(&self) -> Result<SchedulerConfig> {
        let mut config = self.read_scheduler_config()?;
        if let Some(class) = self.index.class_of("scheduler") {
            if config.class_name.as_deref() != Some(class) {
                tracing::warn!(
                    "{}: model_index.json names the scheduler {class}, which diffusers loads with this file's \
                     values (its _class_name {:?} is ignored)",
                    config.origin,
                    config.class_name.as_deref().unwrap_or("(missing)")
                );
                config.class_name = Some(class.to_string());
            }
        }
        Ok(config)
    }

    fn read_scheduler_config(&self) -> Result<SchedulerConfig> {
        match &self.configs {
            ConfigSource::Folder(_) => SchedulerConfig::from_file(
                self.component_dir("scheduler")?
                    .join("scheduler_config.json"),
            ),
            ConfigSource::Builtin(config) => {
                let mut parsed: SchedulerConfig =
                    self.read_config("scheduler", "scheduler_config.json")?;
                parsed.origin = config
                    .label()
                    .join("scheduler/scheduler_config.json")
                    .display()
                    .to_string();
                Ok(parsed)
            }
        }
    }

    /// The weights of component `name` (`unet`, `vae`, `text_encoder`, `text_encoder_2`): its folder's
    /// `diffusion_pytorch_model*`/`model*` files, or the single file seen through that component's key map.
    pub fn weight_files(&self, name: &str, variant: Variant) -> Result<WeightFiles> {
        match &self.weights {
            WeightSource::Folder => {
                let dir = self.component_dir(name)?;
                let stem = if name.starts_with("text_encoder") || name == "vocoder" {
                    "model"
                } else {
                    "diffusion_pytorch_model"
                };
                WeightFiles::open(&find_weight_files(&dir, stem, variant)?)
            }
            WeightSource::SingleFile(file) => match name {
                "unet" => file.unet(&self.unet_config()?),
                "vae" => file.vae(&self.vae_config()?),
                n if n.starts_with("text_encoder") => {
                    file.text_encoder(n, &self.text_encoder_config(n)?)
                }
                other => Err(Error::invalid(
                    other,
                    "a single-file checkpoint holds only the UNet, VAE and text encoder weights",
                )),
            },
        }
    }

    /// Loads the UNet.
    pub fn load_unet(&self, opts: &LoadOptions) -> Result<UNet2DConditionModel> {
        self.load_unet_recorded(opts, &TensorRecord::default())
    }

    /// Loads the UNet, recording the tensors it is built from in `record`.
    pub(crate) fn load_unet_recorded(
        &self,
        opts: &LoadOptions,
        record: &TensorRecord,
    ) -> Result<UNet2DConditionModel> {
        let cfg = self.unet_config()?;
        if let Some(quantize) = opts.quantize {
            quantize.check(&opts.device, opts.dtype)?;
        }
        let files = self.weight_files("unet", opts.variant)?;
        crate::kernels::int8::building(opts.quantize, || {
            UNet2DConditionModel::new(record.var_builder(files, opts.dtype, &opts.device), &cfg)
        })
    }

    /// Loads the VAE (old diffusers checkpoints' `query`/`key`/`value`/`proj_attn` names are mapped).
    pub fn load_vae(&self, opts: &LoadOptions) -> Result<AutoencoderKL> {
        let cfg = self.vae_config()?;
        let files = self.weight_files("vae", opts.variant)?;
        let files = match self.weights {
            WeightSource::Folder => {
                let names: Vec<String> = files.stored().into_iter().map(|(n, _, _)| n).collect();
                files.with_keys(legacy_vae_attention_keys(&names))
            }
            WeightSource::SingleFile(_) => files,
        };
        AutoencoderKL::new(files.var_builder(opts.dtype, &opts.device), &cfg)
    }

    /// Loads text encoder `name`, with its projection when `model_index.json` names
    /// `CLIPTextModelWithProjection`.
    pub fn load_text_encoder(&self, name: &str, opts: &LoadOptions) -> Result<ClipTextModel> {
        self.load_text_encoder_recorded(name, opts, &TensorRecord::default())
    }

    /// Loads text encoder `name`, recording the tensors it is built from in `record`.
    pub(crate) fn load_text_encoder_recorded(
        &self,
        name: &str,
        opts: &LoadOptions,
        record: &TensorRecord,
    ) -> Result<ClipTextModel> {
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
        let files = self.weight_files(name, opts.variant)?;
        ClipTextModel::new(
            record.var_builder(files, opts.dtype, &opts.device),
            &cfg,
            with_projection,
        )
    }

    /// Loads AudioLDM's CLAP text encoder (`ClapTextModelWithProjection`) from component `name`.
    pub fn load_clap_text_encoder(&self, name: &str, opts: &LoadOptions) -> Result<ClapTextModel> {
        match self.index.class_of(name).unwrap_or_default() {
            "ClapTextModelWithProjection" => {}
            other => {
                return Err(Error::unsupported(
                    "model_index.json",
                    name,
                    other,
                    "ClapTextModelWithProjection",
                ))
            }
        }
        let cfg: ClapTextConfig = self.read_config(name, "config.json")?;
        let files = self.weight_files(name, opts.variant)?;
        ClapTextModel::new(files.var_builder(opts.dtype, &opts.device), &cfg)
    }

    /// Loads a RoBERTa tokenizer (AudioLDM's) from component `name`.
    pub fn load_roberta_tokenizer(&self, name: &str) -> Result<RobertaTokenizer> {
        RobertaTokenizer::from_folder(self.component_dir(name)?)
    }

    /// Reads `vocoder/config.json`.
    pub fn vocoder_config(&self) -> Result<HifiGanConfig> {
        self.read_config("vocoder", "config.json")
    }

    /// Loads the vocoder (`SpeechT5HifiGan`).
    pub fn load_vocoder(&self, opts: &LoadOptions) -> Result<HifiGan> {
        match self.index.class_of("vocoder").unwrap_or_default() {
            "SpeechT5HifiGan" => {}
            other => {
                return Err(Error::unsupported(
                    "model_index.json",
                    "vocoder",
                    other,
                    "SpeechT5HifiGan",
                ))
            }
        }
        let cfg = self.vocoder_config()?;
        let files = self.weight_files("vocoder", opts.variant)?;
        HifiGan::new(files.var_builder(opts.dtype, &opts.device), &cfg)
    }

    /// Loads tokenizer `name` (`tokenizer` or `tokenizer_2`).
    pub fn load_tokenizer(&self, name: &str) -> Result<ClipTokenizer> {
        match &self.configs {
            ConfigSource::Folder(_) => ClipTokenizer::from_folder(self.component_dir(name)?),
            ConfigSource::Builtin(config) => {
                self.check_listed(name)?;
                ClipTokenizer::from_files(&config.label().join(name), &|file: &str| {
                    Ok(config.file(&format!("{name}/{file}")).map(String::from))
                })
            }
        }
    }
}
