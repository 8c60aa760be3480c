//! Turning each API's request into a job: JSON with errors that name the field, seeds, limits, schedulers.

use std::sync::Arc;

use diffuse::pipelines::{AudioRequest, GenerationRequest, RequestField};
use diffuse::schedulers::{scheduler_config_for, SchedulerConfig, TimestepRequest};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::config::Limits;
use crate::error::ApiError;
use crate::jobs::spec::{JobSpec, RngKind, SeedMode, Work};
use crate::registry::LoadedModel;
use crate::registry::Pipeline;

/// Parses a JSON body; errors name the field (`n`, `override_settings.randn_source`, …) and what was wrong.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = format!("invalid JSON body: {inner}");
        if path.is_empty() || path == "." {
            ApiError::bad_request(message)
        } else {
            ApiError::bad_field(path, message)
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    Ok(value)
}

/// A seed as clients send it: a whole number ≥ 0, or -1 for a random one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seed(pub Option<u64>);

impl Seed {
    /// The seed to use: the given one, or a random 32-bit one (as A1111 draws them).
    pub fn resolve(self) -> u64 {
        self.0
            .unwrap_or_else(|| crate::jobs::store::random_u64() & 0xFFFF_FFFF)
    }
}

impl<'de> Deserialize<'de> for Seed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Seed;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a whole number from 0 to 2^64 - 1, or -1 for a random seed")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Seed, E> {
                Ok(Seed(Some(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Seed, E> {
                match v {
                    -1 => Ok(Seed(None)),
                    v if v >= 0 => Ok(Seed(Some(v as u64))),
                    _ => Err(E::custom(format!(
                        "{v}: a seed is ≥ 0, or -1 for a random one"
                    ))),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Parses a seed given as text (multipart forms).
pub fn parse_seed(text: &str, field: &str) -> Result<Seed, ApiError> {
    match text.trim().parse::<i128>() {
        Ok(-1) => Ok(Seed(None)),
        Ok(v) if (0..=u64::MAX as i128).contains(&v) => Ok(Seed(Some(v as u64))),
        _ => Err(ApiError::bad_field(
            field,
            format!("{text:?}: a seed is a whole number ≥ 0, or -1 for a random one"),
        )),
    }
}

/// The request field names an API uses, so that errors name the field the client sent.
pub struct FieldNames {
    /// Denoising steps.
    pub steps: &'static str,
    /// Guidance scale.
    pub guidance: &'static str,
    /// Output width.
    pub width: &'static str,
    /// Output height.
    pub height: &'static str,
    /// Image count.
    pub images: &'static str,
    /// Scheduler / sampler.
    pub scheduler: &'static str,
    /// Image-to-image strength.
    pub strength: &'static str,
    /// Input image.
    pub image: &'static str,
    /// Inpainting mask.
    pub mask: &'static str,
}

impl FieldNames {
    /// This API's name for a request field the library's error is about; `None` where the field is named alike.
    fn rename(&self, field: RequestField) -> Option<&'static str> {
        match field {
            RequestField::Steps => Some(self.steps),
            RequestField::GuidanceScale => Some(self.guidance),
            RequestField::Width => Some(self.width),
            RequestField::Height | RequestField::Size => Some(self.height),
            RequestField::NumImages | RequestField::NumWaveforms => Some(self.images),
            RequestField::Strength => Some(self.strength),
            RequestField::Mask => Some(self.mask),
            RequestField::Prompt
            | RequestField::NegativePrompt
            | RequestField::GuidanceRescale
            | RequestField::ClipSkip
            | RequestField::Eta
            | RequestField::Latents
            | RequestField::Loras
            | RequestField::AudioLength => None,
        }
    }
}

/// A generation request plus everything a job needs besides it, before validation.
pub struct Draft {
    /// The model.
    pub model: Arc<LoadedModel>,
    /// The generation (its `num_images` is set from `images` and `seed_mode`).
    pub request: GenerationRequest,
    /// Images in all.
    pub images: usize,
    /// The seed.
    pub seed: Seed,
    /// How seeds map to images.
    pub seed_mode: SeedMode,
    /// The generator.
    pub rng: RngKind,
    /// A scheduler name (A1111 sampler or diffusers class), or none for the model's own.
    pub scheduler: Option<String>,
}

impl Draft {
    /// Checks the draft against the limits and the model, and makes the job's spec.
    pub fn into_spec(mut self, limits: &Limits, fields: &FieldNames) -> Result<JobSpec, ApiError> {
        let request = &mut self.request;
        check_limits(
            limits,
            fields,
            [&request.prompt, &request.negative_prompt],
            request.steps,
            (self.images, "images"),
        )?;
        let pipeline = self.model.image("model")?;
        let (width, height) = pipeline
            .output_size(request)
            .map_err(|e| rename_error(e, fields))?;
        check_size(&self.model, width, height, limits, fields)?;
        request.width = Some(width);
        request.height = Some(height);
        request.num_images = match self.seed_mode {
            SeedMode::Batch => self.images,
            SeedMode::PerImage => 1,
        };
        if let Some(name) = self.scheduler.as_deref().map(str::trim) {
            if !name.is_empty() {
                request.scheduler = Some(
                    scheduler_config_for(name, &pipeline.scheduler)
                        .map_err(|e| ApiError::bad_field(fields.scheduler, e.to_string()))?,
                );
            }
        }
        pipeline
            .check(request)
            .map_err(|e| rename_error(e, fields))?;
        check_schedule(&pipeline.scheduler, request, fields)?;
        Ok(JobSpec {
            model: self.model,
            work: Work::Image(self.request),
            images: self.images,
            seed: self.seed.resolve(),
            seed_mode: self.seed_mode,
            rng: self.rng,
        })
    }
}

/// An audio generation request before validation (native API only).
pub struct AudioDraft {
    /// The model, which must be an audio model.
    pub model: Arc<LoadedModel>,
    /// The generation; `num_waveforms` is the job's count.
    pub request: AudioRequest,
    /// A scheduler name, or none for the model's own.
    pub scheduler: Option<String>,
    /// The seed.
    pub seed: Seed,
}

impl AudioDraft {
    /// Checks the draft against the limits and the model, and makes the job's spec.
    pub fn into_spec(mut self, limits: &Limits, fields: &FieldNames) -> Result<JobSpec, ApiError> {
        let Pipeline::Audio(pipeline) = &self.model.pipeline else {
            return Err(ApiError::bad_field(
                "audio_length_s",
                format!(
                    "{:?} is an image model; only an audio model (AudioLDM) takes audio_length_s",
                    self.model.name
                ),
            ));
        };
        let request = &mut self.request;
        check_limits(
            limits,
            fields,
            [&request.prompt, &request.negative_prompt],
            request.steps,
            (request.num_waveforms, "waveforms"),
        )?;
        if let Some(name) = self
            .scheduler
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            request.scheduler = Some(
                scheduler_config_for(name, &pipeline.scheduler)
                    .map_err(|e| ApiError::bad_field(fields.scheduler, e.to_string()))?,
            );
        }
        pipeline
            .plan(request)
            .map_err(|e| rename_error(e, fields))?;
        let images = request.num_waveforms;
        Ok(JobSpec {
            model: self.model,
            work: Work::Audio(self.request),
            images,
            seed: self.seed.resolve(),
            seed_mode: SeedMode::Batch,
            rng: RngKind::Cpu,
        })
    }
}

/// The server's limits every generation request meets: prompt and negative prompt lengths, steps, and the
/// number of outputs (`count`, named `what` in the message).
fn check_limits(
    limits: &Limits,
    fields: &FieldNames,
    texts: [&String; 2],
    steps: usize,
    (count, what): (usize, &str),
) -> Result<(), ApiError> {
    for (name, text) in ["prompt", "negative_prompt"].into_iter().zip(texts) {
        let chars = text.chars().count();
        if chars > limits.max_prompt_chars {
            return Err(ApiError::bad_field(
                name,
                format!("{chars} characters; at most {}", limits.max_prompt_chars),
            ));
        }
    }
    if steps == 0 || steps > limits.max_steps {
        return Err(ApiError::bad_field(
            fields.steps,
            format!("{steps}: must be from 1 to {}", limits.max_steps),
        ));
    }
    if count == 0 || count > limits.max_images {
        return Err(ApiError::bad_field(
            fields.images,
            format!("{count} {what}: must be from 1 to {}", limits.max_images),
        ));
    }
    Ok(())
}

/// Builds the schedule once, as the pipeline will, so that a step count the scheduler refuses, or a strength
/// that leaves no step to run, is the client's 400 before the job is queued.
fn check_schedule(
    model_scheduler: &SchedulerConfig,
    request: &GenerationRequest,
    fields: &FieldNames,
) -> Result<(), ApiError> {
    let mut config = request
        .scheduler
        .clone()
        .unwrap_or_else(|| model_scheduler.clone());
    config.eta = Some(request.eta);
    config
        .build(&TimestepRequest::Steps(request.steps))
        .map_err(|e| ApiError::bad_field(fields.scheduler, e.to_string()))?;
    if let Some(init) = &request.init {
        if ((request.steps as f64 * init.strength) as usize) < 1 {
            return Err(ApiError::bad_field(
                fields.strength,
                format!(
                    "{} × {} steps leaves no step to run; raise it or the steps",
                    init.strength, request.steps
                ),
            ));
        }
    }
    Ok(())
}

/// A library error as this API reports it: a 400 naming the API's own field for the request field it is about.
pub fn rename_error(error: diffuse::Error, fields: &FieldNames) -> ApiError {
    let field = RequestField::of(&error);
    let mut api = ApiError::from(error);
    if let Some(name) = field.and_then(|f| fields.rename(f)) {
        api.param = Some(name.to_string());
    }
    api
}

fn check_size(
    model: &LoadedModel,
    width: usize,
    height: usize,
    limits: &Limits,
    fields: &FieldNames,
) -> Result<(), ApiError> {
    let f = model.image("model")?.vae_scale_factor();
    for (field, value) in [(fields.width, width), (fields.height, height)] {
        if value == 0 || value % f != 0 || value > limits.max_side {
            return Err(ApiError::bad_field(
                field,
                format!(
                    "{width}×{height}: each side must be a positive multiple of {f}, at most {} \
                     (this server's limit; diffuse serve --max-side raises it)",
                    limits.max_side
                ),
            ));
        }
    }
    if width * height > limits.max_pixels {
        return Err(ApiError::bad_field(
            fields.width,
            format!(
                "{width}×{height} is {} pixels; at most {} (this server's limit; diffuse serve \
                 --max-pixels raises it)",
                width * height,
                limits.max_pixels
            ),
        ));
    }
    Ok(())
}

/// Parses OpenAI's `size`: "WIDTHxHEIGHT", or "auto" / absent for the default.
pub fn parse_size(size: Option<&str>) -> Result<(Option<usize>, Option<usize>), ApiError> {
    let Some(text) = size
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "auto")
    else {
        return Ok((None, None));
    };
    let parsed = text
        .split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)));
    match parsed {
        Some((w, h)) => Ok((Some(w), Some(h))),
        None => Err(ApiError::bad_field(
            "size",
            format!("{text:?}: expected WIDTHxHEIGHT (e.g. 512x512) or \"auto\""),
        )),
    }
}
