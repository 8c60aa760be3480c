//! A1111's informational endpoints: samplers, schedulers, models, options, scripts, progress, interrupt and
//! PNG info.

use axum::extract::{Query, State};
use axum::Json;
use base64::Engine as _;
use diffuse::metadata::GenerationParameters;
use diffuse::pipelines::images::image_parameters;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::input::parse_json;
use crate::api::uploads::base64_bytes;
use crate::api::SharedState;
use crate::error::ApiError;
use crate::jobs::job::{EarlyEnd, JobState};

/// `GET /sdapi/v1/samplers`: the A1111 sampler names this server runs, with their aliases.
pub async fn samplers() -> Json<Value> {
    let names: Vec<Value> = diffuse::schedulers::a1111_samplers()
        .into_iter()
        .map(|(name, aliases)| json!({"name": name, "aliases": aliases, "options": {}}))
        .collect();
    Json(Value::Array(names))
}

/// `GET /sdapi/v1/schedulers`: the schedule types accepted as `scheduler`, by A1111's name and label.
pub async fn schedulers() -> Json<Value> {
    let types: Vec<Value> = diffuse::schedulers::schedule_types()
        .into_iter()
        .map(|(label, names)| {
            let name = names.first().copied().unwrap_or(label);
            json!({"name": name, "label": label, "aliases": names.get(1..).unwrap_or(&[]), "default_rho": -1.0,
                   "need_inner_model": false})
        })
        .collect();
    Json(Value::Array(types))
}

/// `GET /sdapi/v1/sd-models`: the served models, titled "name [hash]" as A1111 titles them (paths are never
/// shown).
pub async fn sd_models(State(state): State<SharedState>) -> Json<Value> {
    let models: Vec<Value> = state
        .registry
        .all()
        .iter()
        .map(|model| {
            json!({
                "title": model.title(),
                "model_name": model.name,
                "hash": model.hash,
                "sha256": null,
                "filename": model.name,
                "config": null,
            })
        })
        .collect();
    Json(Value::Array(models))
}

/// `GET /sdapi/v1/options`: the settings that mean something here, as `POST` last set them.
pub async fn options(State(state): State<SharedState>) -> Json<Value> {
    Json(state.a1111_settings().to_json(&state.registry))
}

/// `POST /sdapi/v1/options`: sets server-wide defaults of A1111 requests (`sd_model_checkpoint`,
/// `CLIP_stop_at_last_layers`, `sd_vae`, `samples_format`, `randn_source`); answers `null`, as A1111 does.
/// Every key is checked before any is set.
pub async fn set_options(
    State(state): State<SharedState>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let values: serde_json::Map<String, Value> = parse_json(&body)?;
    let mut current = state
        .a1111
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut settings = current.clone();
    settings.apply(&values, "", &state.registry)?;
    *current = settings;
    Ok(Json(Value::Null))
}

/// `GET /sdapi/v1/scripts`: none.
pub async fn scripts() -> Json<Value> {
    Json(json!({"txt2img": [], "img2img": []}))
}

/// The query of `GET /sdapi/v1/progress`.
#[derive(Deserialize)]
pub struct ProgressQuery {
    #[serde(default)]
    skip_current_image: bool,
}

/// `GET /sdapi/v1/progress`: the oldest running job's progress and preview.
pub async fn progress(
    State(state): State<SharedState>,
    Query(query): Query<ProgressQuery>,
) -> Json<Value> {
    let active = state.engine.store.active();
    let running = active
        .iter()
        .map(|job| (job, job.status()))
        .filter(|(_, s)| s.state == JobState::Running)
        .min_by(|a, b| a.1.created_at.total_cmp(&b.1.created_at));
    let Some((job, status)) = running else {
        return Json(json!({
            "progress": 0.0,
            "eta_relative": 0.0,
            "state": {
                "skipped": false, "interrupted": false, "stopping_generation": false, "job": "",
                "job_count": active.len(), "job_timestamp": "0", "job_no": 0,
                "sampling_step": 0, "sampling_steps": 0,
            },
            "current_image": null,
            "textinfo": null,
        }));
    };
    let fraction = status.fraction();
    let elapsed = crate::clock::unix_seconds() - status.started_at.unwrap_or(status.created_at);
    let eta = if fraction > 0.0 {
        elapsed / fraction - elapsed
    } else {
        0.0
    };
    let image = status
        .preview
        .as_ref()
        .filter(|_| !query.skip_current_image)
        .map(|png| base64::engine::general_purpose::STANDARD.encode(png.as_slice()));
    Json(json!({
        "progress": fraction,
        "eta_relative": eta.max(0.0),
        "state": {
            "skipped": job.early_end() == Some(EarlyEnd::Skip),
            "interrupted": job.cancel_reason().is_some() || job.early_end() == Some(EarlyEnd::Interrupt),
            "stopping_generation": false,
            "job": job.id,
            "job_count": active.len(),
            "job_timestamp": crate::clock::a1111_timestamp(status.created_at),
            "job_no": 0,
            "sampling_step": status.step,
            "sampling_steps": status.total_steps,
        },
        "current_image": image,
        "textinfo": null,
    }))
}

/// `POST /sdapi/v1/interrupt`: the running jobs end their current images as they stand and run no more; their
/// clients get 200 with the images made so far, as A1111 answers.
pub async fn interrupt(State(state): State<SharedState>) -> Result<Json<Value>, ApiError> {
    let stopped = state.engine.end_running_early(true).await?;
    Ok(Json(json!({"interrupted": stopped})))
}

/// `POST /sdapi/v1/skip`: the running jobs end their current images as they stand and go on with the next;
/// answers `null`, as A1111 does.
pub async fn skip(State(state): State<SharedState>) -> Result<Json<Value>, ApiError> {
    state.engine.end_running_early(false).await?;
    Ok(Json(Value::Null))
}

/// The body of `POST /sdapi/v1/png-info`.
#[derive(Deserialize)]
struct PngInfoBody {
    image: String,
}

/// `POST /sdapi/v1/png-info`: the `parameters` text of a PNG, and its fields.
pub async fn png_info(body: axum::body::Bytes) -> Result<Json<Value>, ApiError> {
    let body: PngInfoBody = parse_json(&body)?;
    let bytes = base64_bytes(&body.image, "image")?;
    let text = image_parameters(&bytes)
        .map_err(|e| ApiError::bad_field("image", e.to_string()))?
        .unwrap_or_default();
    let parameters = GenerationParameters::parse(&text)
        .map(|p| {
            json!({
                "Prompt": p.prompt,
                "Negative prompt": p.negative_prompt,
                "Steps": p.steps.to_string(),
                "Sampler": p.sampler,
                "CFG scale": p.cfg_scale.to_string(),
                "Seed": p.seed.to_string(),
                "Size-1": p.width.to_string(),
                "Size-2": p.height.to_string(),
                "Model": p.model,
                "RNG": p.rng.as_str(),
            })
        })
        .unwrap_or_else(|_| json!({}));
    Ok(Json(json!({
        "info": text,
        "items": {"parameters": text},
        "parameters": parameters,
    })))
}
