//! The OpenAI Images API: `POST /v1/images/generations`, `POST /v1/images/edits` and
//! `/v1/images/variations` (multipart), `GET /v1/models` and `/v1/models/{id}`.
//!
//! Beyond OpenAI's fields, requests may carry `negative_prompt`, `steps`, `guidance`, `seed` (-1 = random)
//! and `scheduler` (an A1111 sampler name or a diffusers class), and edits `strength`. Unknown fields are
//! refused, as OpenAI refuses them. `n` images come from one torch CPU generator seeded once, as diffusers
//! draws `num_images_per_prompt`; `response_format` defaults to `b64_json`; `url`s point at
//! `/v1/jobs/{id}/images/{i}.png` on this server (kept for the last `retained_jobs` jobs).

mod edits;

pub use edits::{edits, variations};

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::Json;
use base64::Engine as _;
use diffuse::pipelines::GenerationRequest;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};

use super::input::{parse_json, parse_size, Draft, FieldNames, Seed};
use super::wait::run_to_end;
use super::SharedState;
use crate::error::ApiError;
use crate::jobs::job::{Job, JobStatus};
use crate::jobs::spec::{RngKind, SeedMode};
use crate::registry::LoadedModel;

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
pub(super) enum ResponseFormat {
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
pub(super) fn check_output(
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
    let model = served_model(&state, body.model.as_deref())?;
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
    };
    let spec = draft.into_spec(&state.limits, &FIELDS)?;
    let (job, status) = run_to_end(&state.engine, spec).await?;
    Ok(Json(
        respond(
            &state,
            &job,
            &status,
            body.response_format.unwrap_or_default(),
            &headers,
        )
        .await,
    ))
}

/// The model an OpenAI request names: a served model, or one an alias maps the name to; an unknown name is
/// refused listing the served ones and how to map it.
pub(super) fn served_model(
    state: &SharedState,
    name: Option<&str>,
) -> Result<Arc<LoadedModel>, ApiError> {
    let wanted = name.map(str::trim).filter(|n| !n.is_empty());
    let Some(wanted) = wanted else {
        return state.registry.get(None, "model");
    };
    if let Ok(model) = state.registry.get(Some(wanted), "model") {
        return Ok(model);
    }
    let alias = |key: &str| {
        state
            .openai_aliases
            .iter()
            .find(|(alias, _)| alias == key)
            .map(|(_, model)| model.as_str())
    };
    match alias(wanted).or_else(|| alias("*")) {
        Some(model) => state.registry.get(Some(model), "model"),
        None => Err(ApiError::bad_field(
            "model",
            format!(
                "unknown model {wanted:?}; this server has: {} (the server can answer OpenAI model names \
                 with one: diffuse serve --openai-model-alias {wanted}=MODEL)",
                state.registry.names().join(", ")
            ),
        )),
    }
}

/// The OpenAI response; with `b64_json` the job is forgotten at once, with `url` it is kept for its images.
pub(super) async fn respond(
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
        // The images are in the answer: nothing is lost if the broker cannot delete them now (they expire).
        let _ = state.engine.forget(&job.id).await;
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

/// `GET /v1/models`: the served models, with their default size and scheduler.
pub async fn models(State(state): State<SharedState>) -> Json<Value> {
    let data: Vec<Value> = state.registry.all().iter().map(|m| describe(m)).collect();
    Json(json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{id}`: one served model; 404 naming the served ones otherwise.
pub async fn model(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let model = state.registry.get(Some(&id), "model").map_err(|_| {
        ApiError::not_found(format!(
            "unknown model {id:?}; this server has: {}",
            state.registry.names().join(", ")
        ))
        .with_param("model")
    })?;
    Ok(Json(describe(&model)))
}

/// A model as OpenAI's model object, with its default size and scheduler.
fn describe(m: &LoadedModel) -> Value {
    let (width, height) = m.default_size();
    json!({
        "id": m.name,
        "object": "model",
        "created": m.loaded_at,
        "owned_by": "diffuse",
        "default_width": width,
        "default_height": height,
        "size_multiple": m.size_multiple(),
        "scheduler": m.scheduler_class(),
        "kind": if m.is_audio() { "audio" } else { "image" },
        "default_audio_length_s": m.default_audio_length_s(),
    })
}
