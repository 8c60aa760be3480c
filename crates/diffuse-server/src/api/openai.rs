//! The OpenAI Images API: `POST /v1/images/generations`, `POST /v1/images/edits` (multipart) and
//! `GET /v1/models`.
//!
//! Beyond OpenAI's fields, requests may carry `negative_prompt`, `steps`, `guidance`, `seed` (-1 = random)
//! and `scheduler` (an A1111 sampler name or a diffusers class), and edits `strength`. Unknown fields are
//! refused, as OpenAI refuses them. `n` images come from one torch CPU generator seeded once, as diffusers
//! draws `num_images_per_prompt`; `response_format` defaults to `b64_json`; `url`s point at
//! `/v1/jobs/{id}/images/{i}.png` on this server (kept for the last `retained_jobs` jobs).

use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::{header, HeaderMap};
use axum::Json;
use base64::Engine as _;
use diffuse::pipelines::{GenerationRequest, InitImage};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};

use super::input::{parse_json, parse_seed, parse_size, Draft, FieldNames, Seed};
use super::uploads::{self, MaskRule};
use super::wait::run_to_end;
use super::SharedState;
use crate::error::ApiError;
use crate::jobs::job::{Job, JobStatus};
use crate::jobs::spec::{RngKind, SeedMode};

const FIELDS: FieldNames = FieldNames {
    steps: "steps",
    guidance: "guidance",
    width: "size",
    height: "size",
    images: "n",
    scheduler: "scheduler",
    strength: "strength",
    image: "image",
    mask: "mask",
};

/// How images come back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ResponseFormat {
    /// Base64 PNGs in the response.
    #[default]
    B64Json,
    /// URLs on this server.
    Url,
}

/// The body of `POST /v1/images/generations`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerationsBody {
    prompt: String,
    model: Option<String>,
    n: Option<usize>,
    size: Option<String>,
    response_format: Option<ResponseFormat>,
    output_format: Option<String>,
    background: Option<String>,
    stream: Option<bool>,
    #[serde(rename = "quality")]
    _quality: Option<IgnoredAny>,
    #[serde(rename = "style")]
    _style: Option<IgnoredAny>,
    #[serde(rename = "user")]
    _user: Option<IgnoredAny>,
    #[serde(rename = "moderation")]
    _moderation: Option<IgnoredAny>,
    #[serde(rename = "output_compression")]
    _output_compression: Option<IgnoredAny>,
    #[serde(rename = "safety_identifier")]
    _safety_identifier: Option<IgnoredAny>,
    #[serde(rename = "partial_images")]
    _partial_images: Option<IgnoredAny>,
    negative_prompt: Option<String>,
    steps: Option<usize>,
    guidance: Option<f64>,
    seed: Option<Seed>,
    scheduler: Option<String>,
}

/// OpenAI options this server cannot honour.
fn check_output(
    output_format: Option<&str>,
    background: Option<&str>,
    stream: Option<bool>,
) -> Result<(), ApiError> {
    if let Some(format) = output_format.filter(|f| *f != "png") {
        return Err(ApiError::bad_field(
            "output_format",
            format!("{format:?}: only \"png\" is produced"),
        ));
    }
    if let Some(background) = background.filter(|b| *b == "transparent") {
        return Err(ApiError::bad_field(
            "background",
            format!("{background:?}: images are opaque; use \"auto\" or \"opaque\""),
        ));
    }
    if stream == Some(true) {
        return Err(ApiError::bad_field(
            "stream",
            "streaming is not supported here; use POST /v1/jobs and its events",
        ));
    }
    Ok(())
}

/// `POST /v1/images/generations`.
pub async fn generations(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: GenerationsBody = parse_json(&body)?;
    check_output(
        body.output_format.as_deref(),
        body.background.as_deref(),
        body.stream,
    )?;
    let model = state.registry.get(body.model.as_deref(), "model")?;
    let (width, height) = parse_size(body.size.as_deref())?;
    let defaults = GenerationRequest::default();
    let draft = Draft {
        model,
        request: GenerationRequest {
            prompt: body.prompt,
            negative_prompt: body.negative_prompt.unwrap_or_default(),
            steps: body.steps.unwrap_or(defaults.steps),
            guidance_scale: body.guidance.unwrap_or(defaults.guidance_scale),
            width,
            height,
            ..defaults
        },
        images: body.n.unwrap_or(1),
        seed: body.seed.unwrap_or(Seed(None)),
        seed_mode: SeedMode::Batch,
        rng: RngKind::Cpu,
        scheduler: body.scheduler,
        sampler_label: None,
        schedule_type: None,
    };
    let spec = draft.into_spec(&state.limits, &FIELDS)?;
    let (job, status) = run_to_end(&state.engine, spec).await?;
    Ok(Json(respond(
        &state,
        &job,
        &status,
        body.response_format.unwrap_or_default(),
        &headers,
    )))
}

/// The OpenAI response; with `b64_json` the job is forgotten at once, with `url` it is kept for its images.
fn respond(
    state: &SharedState,
    job: &Job,
    status: &JobStatus,
    format: ResponseFormat,
    headers: &HeaderMap,
) -> Value {
    let base = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|host| format!("http://{host}"))
        .unwrap_or_default();
    let data: Vec<Value> = status
        .outputs
        .iter()
        .enumerate()
        .map(|(i, image)| match format {
            ResponseFormat::B64Json => json!({
                "b64_json": base64::engine::general_purpose::STANDARD.encode(&image.png),
                "revised_prompt": job.prompt,
            }),
            ResponseFormat::Url => json!({
                "url": format!("{base}/v1/jobs/{}/images/{i}.png", job.id),
                "revised_prompt": job.prompt,
            }),
        })
        .collect();
    if format == ResponseFormat::B64Json {
        state.engine.store.remove(&job.id);
    }
    let size = status
        .outputs
        .first()
        .map(|image| format!("{}x{}", image.width, image.height));
    json!({
        "created": status.created_at as u64,
        "data": data,
        "output_format": "png",
        "size": size,
    })
}

/// The fields of an edit, read from the multipart form.
#[derive(Default)]
struct EditForm {
    image: Option<Vec<u8>>,
    mask: Option<Vec<u8>>,
    prompt: Option<String>,
    model: Option<String>,
    n: Option<usize>,
    size: Option<String>,
    response_format: Option<ResponseFormat>,
    output_format: Option<String>,
    background: Option<String>,
    stream: Option<bool>,
    negative_prompt: Option<String>,
    steps: Option<usize>,
    guidance: Option<f64>,
    seed: Option<Seed>,
    scheduler: Option<String>,
    strength: Option<f64>,
}

fn parse_field<T: std::str::FromStr>(text: &str, field: &str, what: &str) -> Result<T, ApiError> {
    text.trim()
        .parse()
        .map_err(|_| ApiError::bad_field(field, format!("{text:?}: expected {what}")))
}

impl EditForm {
    async fn read(mut multipart: Multipart) -> Result<Self, ApiError> {
        let mut form = EditForm::default();
        let failed = |e: axum::extract::multipart::MultipartError| {
            ApiError::new(e.status(), format!("multipart body: {}", e.body_text()))
        };
        while let Some(field) = multipart.next_field().await.map_err(failed)? {
            let name = field.name().unwrap_or_default().to_string();
            match name.as_str() {
                "image" | "image[]" | "mask" => {
                    let bytes = field.bytes().await.map_err(failed)?.to_vec();
                    let slot = if name == "mask" {
                        &mut form.mask
                    } else {
                        &mut form.image
                    };
                    if slot.replace(bytes).is_some() {
                        return Err(ApiError::bad_field(name, "give one image only"));
                    }
                }
                _ => {
                    let text = field.text().await.map_err(failed)?;
                    form.set(&name, text)?;
                }
            }
        }
        Ok(form)
    }

    fn set(&mut self, name: &str, text: String) -> Result<(), ApiError> {
        match name {
            "prompt" => self.prompt = Some(text),
            "model" => self.model = Some(text),
            "n" => self.n = Some(parse_field(&text, name, "a whole number")?),
            "size" => self.size = Some(text),
            "response_format" => {
                self.response_format = Some(match text.trim() {
                    "b64_json" => ResponseFormat::B64Json,
                    "url" => ResponseFormat::Url,
                    other => {
                        return Err(ApiError::bad_field(
                            name,
                            format!("{other:?}: expected \"b64_json\" or \"url\""),
                        ))
                    }
                })
            }
            "output_format" => self.output_format = Some(text),
            "background" => self.background = Some(text),
            "stream" => self.stream = Some(parse_field(&text, name, "true or false")?),
            "negative_prompt" => self.negative_prompt = Some(text),
            "steps" => self.steps = Some(parse_field(&text, name, "a whole number")?),
            "guidance" => self.guidance = Some(parse_field(&text, name, "a number")?),
            "seed" => self.seed = Some(parse_seed(&text, name)?),
            "scheduler" => self.scheduler = Some(text),
            "strength" => self.strength = Some(parse_field(&text, name, "a number")?),
            "quality" | "user" | "input_fidelity" | "moderation" | "output_compression"
            | "safety_identifier" | "partial_images" => {}
            other => {
                return Err(ApiError::bad_field(
                    other,
                    format!("unrecognized request argument {other:?}"),
                ))
            }
        }
        Ok(())
    }
}

/// `POST /v1/images/edits`: image-to-image, or inpainting with a mask (transparent = edit; without a mask,
/// the image's own transparency is the mask, as OpenAI's dall-e-2 does).
pub async fn edits(
    State(state): State<SharedState>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<Value>, ApiError> {
    let multipart = multipart.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let form = EditForm::read(multipart).await?;
    check_output(
        form.output_format.as_deref(),
        form.background.as_deref(),
        form.stream,
    )?;
    let prompt = form
        .prompt
        .ok_or_else(|| ApiError::bad_field("prompt", "required"))?;
    let image_bytes = form
        .image
        .ok_or_else(|| ApiError::bad_field("image", "required"))?;
    let model = state.registry.get(form.model.as_deref(), "model")?;
    let decoded = uploads::decode(&image_bytes, "image", &state.limits)?;
    let image = uploads::to_rgb(&decoded);
    let mask = match &form.mask {
        Some(bytes) => {
            let mask = uploads::decode(bytes, "mask", &state.limits)?;
            Some(uploads::to_mask(
                &mask,
                MaskRule::TransparentRepaints,
                image.width,
                image.height,
            ))
        }
        None if uploads::has_transparency(&decoded) => Some(uploads::to_mask(
            &decoded,
            MaskRule::TransparentRepaints,
            image.width,
            image.height,
        )),
        None => None,
    };
    let f = model.pipeline.vae_scale_factor();
    let (width, height) = match parse_size(form.size.as_deref())? {
        (Some(w), Some(h)) => (w, h),
        _ => (image.width / f * f, image.height / f * f),
    };
    // diffusers' defaults: inpainting repaints fully (1.0), image-to-image keeps some of the input (0.8).
    let strength = form
        .strength
        .unwrap_or(if mask.is_some() { 1.0 } else { 0.8 });
    let defaults = GenerationRequest::default();
    let draft = Draft {
        model,
        request: GenerationRequest {
            prompt,
            negative_prompt: form.negative_prompt.unwrap_or_default(),
            steps: form.steps.unwrap_or(defaults.steps),
            guidance_scale: form.guidance.unwrap_or(defaults.guidance_scale),
            width: Some(width),
            height: Some(height),
            init: Some(InitImage {
                image,
                strength,
                mask,
            }),
            ..defaults
        },
        images: form.n.unwrap_or(1),
        seed: form.seed.unwrap_or(Seed(None)),
        seed_mode: SeedMode::Batch,
        rng: RngKind::Cpu,
        scheduler: form.scheduler,
        sampler_label: None,
        schedule_type: None,
    };
    let spec = draft.into_spec(&state.limits, &FIELDS)?;
    let (job, status) = run_to_end(&state.engine, spec).await?;
    Ok(Json(respond(
        &state,
        &job,
        &status,
        form.response_format.unwrap_or_default(),
        &headers,
    )))
}

/// `GET /v1/models`: the served models, with their default size and scheduler.
pub async fn models(State(state): State<SharedState>) -> Json<Value> {
    let data: Vec<Value> = state
        .registry
        .all()
        .iter()
        .map(|m| {
            let (width, height) = m.default_size();
            json!({
                "id": m.name,
                "object": "model",
                "created": m.loaded_at,
                "owned_by": "diffuse",
                "default_width": width,
                "default_height": height,
                "size_multiple": m.pipeline.vae_scale_factor(),
                "scheduler": m.scheduler_class(),
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}
