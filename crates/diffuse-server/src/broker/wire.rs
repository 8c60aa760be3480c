//! A validated job as it travels through the broker: JSON naming the model, never a path, and holding only the
//! fields the API sets. A worker decodes it and validates it again against its own models and limits before it
//! runs anything.

use std::sync::Arc;

use base64::Engine as _;
use diffuse::pipelines::{
    AudioRequest, GenerationRequest, InitImage, LoraChoice, LoraSource, Output, PromptSyntax,
    RgbImage,
};
use diffuse::schedulers::SchedulerConfig;
use serde::{Deserialize, Serialize};

use crate::api::input::{AudioDraft, Draft, Seed};
use crate::api::native::FIELDS;
use crate::config::Limits;
use crate::error::ApiError;
use crate::jobs::spec::{JobSpec, RngKind, SeedMode, Work};
use crate::registry::Registry;

/// A job on the wire.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireJob {
    /// The served model's name.
    pub model: String,
    /// A1111's short hash of the model the API validated the job against; a worker whose model of that name
    /// has another hash refuses the job rather than draw another image.
    pub model_hash: Option<String>,
    /// What to generate.
    pub work: WireWork,
    /// Outputs in all.
    pub images: usize,
    /// The first seed.
    pub seed: u64,
    /// How seeds map to images.
    pub seed_mode: SeedMode,
    /// The generator.
    pub rng: RngKind,
}

/// The generation request of a [`WireJob`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WireWork {
    /// An image generation.
    Image(WireImage),
    /// An audio generation.
    Audio(WireAudio),
}

/// [`GenerationRequest`]'s fields that the API sets.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireImage {
    prompt: String,
    negative_prompt: String,
    steps: usize,
    guidance_scale: f64,
    guidance_rescale: f64,
    clip_skip: Option<usize>,
    width: Option<usize>,
    height: Option<usize>,
    eta: f64,
    scheduler: Option<SchedulerConfig>,
    init: Option<WireInit>,
    plain_prompt: bool,
    loras: Vec<WireLora>,
}

/// An image-to-image or inpainting input: raw RGB bytes, base64.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireInit {
    image: WirePixels,
    strength: f64,
    mask: Option<WirePixels>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePixels {
    width: usize,
    height: usize,
    rgb: String,
}

/// A LoRA by name in the worker's LoRA folder.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireLora {
    name: String,
    text_encoder_weight: f64,
    unet_weight: f64,
}

/// [`AudioRequest`]'s fields that the API sets.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireAudio {
    prompt: String,
    negative_prompt: String,
    audio_length_s: Option<f64>,
    steps: usize,
    guidance_scale: f64,
    num_waveforms: usize,
    eta: f64,
    scheduler: Option<SchedulerConfig>,
}

impl WirePixels {
    fn of(image: &RgbImage) -> Self {
        Self {
            width: image.width,
            height: image.height,
            rgb: base64::engine::general_purpose::STANDARD.encode(&image.pixels),
        }
    }

    fn decode(self, field: &str) -> Result<RgbImage, ApiError> {
        let pixels = base64::engine::general_purpose::STANDARD
            .decode(self.rgb.as_bytes())
            .map_err(|e| ApiError::bad_field(field, format!("not base64: {e}")))?;
        if pixels.len() != self.width * self.height * 3 {
            return Err(ApiError::bad_field(
                field,
                format!(
                    "{} bytes for a {}×{} RGB image ({} expected)",
                    pixels.len(),
                    self.width,
                    self.height,
                    self.width * self.height * 3
                ),
            ));
        }
        Ok(RgbImage {
            width: self.width,
            height: self.height,
            pixels,
        })
    }
}

impl WireJob {
    /// The wire form of a spec the API validated. A spec holding what no API sets (latents, paths) is refused.
    pub fn of(spec: &JobSpec) -> Result<Self, ApiError> {
        let unsupported = |what: &str| {
            ApiError::internal(format!(
                "a job with {what} cannot go through the broker (no API sets it)"
            ))
        };
        let work = match &spec.work {
            Work::Image(r) => {
                if r.latents.is_some() || r.output != Output::Images {
                    return Err(unsupported("latents"));
                }
                if !r.embeddings.is_empty() {
                    return Err(unsupported("embedding files"));
                }
                let loras = r
                    .loras
                    .iter()
                    .map(|choice| match &choice.source {
                        LoraSource::Name(name) => Ok(WireLora {
                            name: name.clone(),
                            text_encoder_weight: choice.text_encoder_weight,
                            unet_weight: choice.unet_weight,
                        }),
                        LoraSource::File(_) => Err(unsupported("a LoRA path")),
                    })
                    .collect::<Result<_, _>>()?;
                WireWork::Image(WireImage {
                    prompt: r.prompt.clone(),
                    negative_prompt: r.negative_prompt.clone(),
                    steps: r.steps,
                    guidance_scale: r.guidance_scale,
                    guidance_rescale: r.guidance_rescale,
                    clip_skip: r.clip_skip,
                    width: r.width,
                    height: r.height,
                    eta: r.eta,
                    scheduler: r.scheduler.clone(),
                    init: r.init.as_ref().map(|init| WireInit {
                        image: WirePixels::of(&init.image),
                        strength: init.strength,
                        mask: init.mask.as_ref().map(WirePixels::of),
                    }),
                    plain_prompt: r.prompt_syntax == PromptSyntax::Plain,
                    loras,
                })
            }
            Work::Audio(r) => {
                if r.latents.is_some() || r.output != Output::Images {
                    return Err(unsupported("latents"));
                }
                WireWork::Audio(WireAudio {
                    prompt: r.prompt.clone(),
                    negative_prompt: r.negative_prompt.clone(),
                    audio_length_s: r.audio_length_s,
                    steps: r.steps,
                    guidance_scale: r.guidance_scale,
                    num_waveforms: r.num_waveforms,
                    eta: r.eta,
                    scheduler: r.scheduler.clone(),
                })
            }
        };
        Ok(Self {
            model: spec.model.name.clone(),
            model_hash: spec.model.hash.clone(),
            work,
            images: spec.images,
            seed: spec.seed,
            seed_mode: spec.seed_mode,
            rng: spec.rng,
        })
    }

    /// The JSON text stored in the broker.
    pub fn to_json(&self) -> String {
        // Every field is a string, number, bool or list of them: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the JSON a server stored and validates it as the API does, against `registry`'s models and
    /// `limits`; the error names the field at fault.
    pub fn decode(json: &str, registry: &Registry, limits: &Limits) -> Result<JobSpec, ApiError> {
        let wire: WireJob = serde_json::from_str(json)
            .map_err(|e| ApiError::bad_request(format!("the brokered job is malformed: {e}")))?;
        wire.into_spec(registry, limits)
    }

    fn into_spec(self, registry: &Registry, limits: &Limits) -> Result<JobSpec, ApiError> {
        let model: Arc<_> = registry.get(Some(&self.model), "model")?;
        if let (Some(wanted), Some(have)) = (&self.model_hash, &model.hash) {
            if wanted != have {
                return Err(ApiError::internal(format!(
                    "the job was accepted for model {:?} with hash {wanted}, but this worker's {:?} has hash \
                     {have}: give servers and workers the same checkpoint under each name",
                    self.model, self.model
                )));
            }
        }
        let seed = Seed(Some(self.seed));
        match self.work {
            WireWork::Image(w) => {
                let init = match w.init {
                    Some(init) => Some(InitImage {
                        image: init.image.decode(FIELDS.image)?,
                        strength: init.strength,
                        mask: init.mask.map(|m| m.decode(FIELDS.mask)).transpose()?,
                    }),
                    None => None,
                };
                let request = GenerationRequest {
                    prompt: w.prompt,
                    negative_prompt: w.negative_prompt,
                    steps: w.steps,
                    guidance_scale: w.guidance_scale,
                    guidance_rescale: w.guidance_rescale,
                    clip_skip: w.clip_skip,
                    width: w.width,
                    height: w.height,
                    eta: w.eta,
                    scheduler: w.scheduler,
                    init,
                    prompt_syntax: if w.plain_prompt {
                        PromptSyntax::Plain
                    } else {
                        PromptSyntax::A1111
                    },
                    loras: w
                        .loras
                        .into_iter()
                        .map(|l| LoraChoice {
                            source: LoraSource::Name(l.name),
                            text_encoder_weight: l.text_encoder_weight,
                            unet_weight: l.unet_weight,
                        })
                        .collect(),
                    ..GenerationRequest::default()
                };
                Draft {
                    model,
                    request,
                    images: self.images,
                    seed,
                    seed_mode: self.seed_mode,
                    rng: self.rng,
                    scheduler: None,
                }
                .into_spec(limits, &FIELDS)
            }
            WireWork::Audio(w) => {
                if self.images != w.num_waveforms || self.seed_mode != SeedMode::Batch {
                    return Err(ApiError::bad_request(format!(
                        "the brokered audio job asks for {} outputs of {} waveforms",
                        self.images, w.num_waveforms
                    )));
                }
                let request = AudioRequest {
                    prompt: w.prompt,
                    negative_prompt: w.negative_prompt,
                    audio_length_s: w.audio_length_s,
                    steps: w.steps,
                    guidance_scale: w.guidance_scale,
                    num_waveforms: w.num_waveforms,
                    eta: w.eta,
                    scheduler: w.scheduler,
                    ..AudioRequest::default()
                };
                AudioDraft {
                    model,
                    request,
                    scheduler: None,
                    seed,
                }
                .into_spec(limits, &FIELDS)
            }
        }
    }
}
