//! The models the server was started with, loaded once; requests can name only these.

use std::path::PathBuf;
use std::sync::Arc;

use diffuse::loaders::hash::model_hash;
use diffuse::loaders::hub::resolve_model;
use diffuse::loaders::tiny_vae::{expand_shorthand, load_tiny_decoder};
use diffuse::loaders::{LoadOptions, PipelineFolder, Variant};
use diffuse::pipelines::audio::AUDIO_PIPELINES;
use diffuse::pipelines::{AudioLdm, StableDiffusion};

use crate::config::ModelSpec;
use crate::error::{ApiError, ServerError};

/// A served pipeline: images (Stable Diffusion) or audio (AudioLDM), as its `model_index.json` says.
pub enum Pipeline {
    /// Text-to-image, image-to-image and inpainting.
    Image(Box<StableDiffusion>),
    /// Text-to-audio.
    Audio(Box<AudioLdm>),
}

/// One loaded model.
pub struct LoadedModel {
    /// The name requests use.
    pub name: String,
    /// The loaded pipeline, shared by every worker.
    pub pipeline: Pipeline,
    /// When it was loaded (Unix seconds).
    pub loaded_at: u64,
    /// A1111's short model hash, recorded in the PNG parameters.
    pub hash: Option<String>,
}

impl LoadedModel {
    /// The image pipeline, or a 400 naming `param` for an audio model.
    pub fn image(&self, param: &str) -> Result<&StableDiffusion, ApiError> {
        match &self.pipeline {
            Pipeline::Image(pipeline) => Ok(pipeline.as_ref()),
            Pipeline::Audio(_) => Err(ApiError::bad_field(
                param,
                format!(
                    "{:?} is an audio model (AudioLDM): submit it to POST /v1/jobs with \"audio_length_s\"",
                    self.name
                ),
            )),
        }
    }

    /// Whether the model generates audio.
    pub fn is_audio(&self) -> bool {
        matches!(self.pipeline, Pipeline::Audio(_))
    }

    /// The scheduler configuration generations default to.
    pub fn scheduler(&self) -> &diffuse::schedulers::SchedulerConfig {
        match &self.pipeline {
            Pipeline::Image(pipeline) => &pipeline.scheduler,
            Pipeline::Audio(pipeline) => &pipeline.scheduler,
        }
    }

    /// An audio model's default length in seconds; `None` for an image model.
    pub fn default_audio_length_s(&self) -> Option<f64> {
        match &self.pipeline {
            Pipeline::Image(_) => None,
            Pipeline::Audio(pipeline) => Some(pipeline.default_audio_length_s()),
        }
    }

    /// The multiple every image side must be (the VAE factor); for an audio model, that of its spectrogram.
    pub fn size_multiple(&self) -> usize {
        match &self.pipeline {
            Pipeline::Image(pipeline) => pipeline.vae_scale_factor(),
            Pipeline::Audio(pipeline) => pipeline.vae_scale_factor(),
        }
    }

    /// The default output (width, height): an image's, or an audio model's spectrogram as pictured (frames × mel
    /// bins).
    pub fn default_size(&self) -> (usize, usize) {
        match &self.pipeline {
            Pipeline::Image(pipeline) => pipeline.default_size(),
            Pipeline::Audio(pipeline) => pipeline
                .plan(&diffuse::pipelines::AudioRequest::default())
                .map(|plan| {
                    (
                        plan.latent_shape[3] * pipeline.vae_scale_factor(),
                        plan.frames,
                    )
                })
                .unwrap_or((0, 0)),
        }
    }

    /// A1111's title: "name [hash]", or the name alone when the hash is unknown.
    pub fn title(&self) -> String {
        match &self.hash {
            Some(hash) => format!("{} [{hash}]", self.name),
            None => self.name.clone(),
        }
    }

    /// The diffusers class of the model's own scheduler.
    pub fn scheduler_class(&self) -> String {
        self.scheduler().class_name.clone().unwrap_or_default()
    }
}

/// What every served model gets besides its weights.
#[derive(Debug, Clone, Default)]
pub struct ModelExtras {
    /// The folder LoRAs are named from.
    pub lora_dir: Option<PathBuf>,
    /// The folder of textual-inversion embeddings.
    pub embeddings_dir: Option<PathBuf>,
    /// TAESD for live previews (a folder, a Hub id or `taesd`).
    pub preview_decoder: Option<String>,
}

/// The served models, in the order given; the first is the default.
pub struct Registry {
    models: Vec<Arc<LoadedModel>>,
}

impl Registry {
    /// Loads every model (slow: call off the async runtime).
    pub fn load(
        specs: &[ModelSpec],
        opts: &LoadOptions,
        extras: &ModelExtras,
    ) -> Result<Self, ServerError> {
        let loaded_at = crate::clock::unix_seconds() as u64;
        let models = specs
            .iter()
            .map(|spec| {
                let load = || -> diffuse::Result<(Pipeline, Option<String>)> {
                    // Whatever `diffuse generate --model` takes: a folder, a Hub id or a single file.
                    let path = resolve_model(&spec.path.to_string_lossy(), Variant::Default)?;
                    let folder = PipelineFolder::open_path(&path, None)?;
                    if AUDIO_PIPELINES.contains(&folder.index().class_name.as_str()) {
                        let pipeline = AudioLdm::load(&folder, opts)?;
                        return Ok((
                            Pipeline::Audio(Box::new(pipeline)),
                            model_hash(&folder).ok(),
                        ));
                    }
                    let pipeline = StableDiffusion::load(&folder, opts)?;
                    let pipeline = match &extras.lora_dir {
                        Some(dir) => pipeline.with_lora_dir(dir),
                        None => pipeline,
                    };
                    let pipeline = match &extras.embeddings_dir {
                        Some(dir) => pipeline.with_embeddings_dir(dir),
                        None => pipeline,
                    };
                    let pipeline = match &extras.preview_decoder {
                        Some(spec) => {
                            let spec = expand_shorthand(spec, pipeline.text.second.is_some());
                            let decoder = load_tiny_decoder(spec, opts, "preview decoder")?;
                            pipeline.with_preview_decoder(decoder)?
                        }
                        None => pipeline,
                    };
                    Ok((
                        Pipeline::Image(Box::new(pipeline)),
                        model_hash(&folder).ok(),
                    ))
                };
                let (pipeline, hash) = load().map_err(|source| ServerError::Load {
                    name: spec.name.clone(),
                    source: Box::new(source),
                })?;
                Ok(Arc::new(LoadedModel {
                    name: spec.name.clone(),
                    pipeline,
                    loaded_at,
                    hash,
                }))
            })
            .collect::<Result<Vec<_>, ServerError>>()?;
        Ok(Self { models })
    }

    /// Every model, the default first.
    pub fn all(&self) -> &[Arc<LoadedModel>] {
        &self.models
    }

    /// The model named `name` (the default when `None` or empty); `param` names the request field in errors.
    pub fn get(&self, name: Option<&str>, param: &str) -> Result<Arc<LoadedModel>, ApiError> {
        let wanted = name.map(str::trim).filter(|n| !n.is_empty());
        let found = match wanted {
            None => self.models.first(),
            Some(n) => self.models.iter().find(|m| m.name == n),
        };
        found.cloned().ok_or_else(|| {
            ApiError::bad_field(
                param,
                format!(
                    "unknown model {:?}; this server has: {}",
                    wanted.unwrap_or_default(),
                    self.names().join(", ")
                ),
            )
        })
    }

    /// The model names.
    pub fn names(&self) -> Vec<&str> {
        self.models.iter().map(|m| m.name.as_str()).collect()
    }
}
