//! The native job API: submit (`POST /v1/jobs` → 202), watch (`GET /v1/jobs/{id}`, server-sent events at
//! `/v1/jobs/{id}/events`), fetch images, audio (`/v1/jobs/{id}/audio/{i}.wav`, for an audio model's jobs) and
//! previews, cancel (`DELETE`).
//!
//! Seeds follow diffusers: `n` images come from one torch CPU generator seeded once.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use diffuse::pipelines::{
    AudioRequest, GenerationRequest, InitImage, LoraChoice, LoraSource, PromptSyntax,
};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::{json, Value};

use super::input::{parse_json, AudioDraft, Draft, FieldNames, Seed};
use super::uploads::{self, MaskRule};
use super::SharedState;
use crate::error::ApiError;
use crate::jobs::job::{CancelReason, ImageOutput, Job, JobStatus};
use crate::jobs::spec::{RngKind, SeedMode};

/// The native API's field names (also the names a worker's re-validation of a brokered job reports).
pub(crate) const FIELDS: FieldNames = FieldNames {
    steps: "steps",
    guidance: "guidance",
    width: "width",
    height: "height",
    images: "n",
    scheduler: "scheduler",
    strength: "strength",
    image: "image",
    mask: "mask",
};

/// How a job's prompts are read.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum SyntaxName {
    /// AUTOMATIC1111's syntax.
    A1111,
    /// Plain text, as diffusers reads it.
    Plain,
}

/// The body of `POST /v1/jobs`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobBody {
    prompt: String,
    model: Option<String>,
    negative_prompt: Option<String>,
    width: Option<usize>,
    height: Option<usize>,
    steps: Option<usize>,
    guidance: Option<f64>,
    guidance_rescale: Option<f64>,
    clip_skip: Option<usize>,
    eta: Option<f64>,
    seed: Option<Seed>,
    scheduler: Option<String>,
    n: Option<usize>,
    /// `"a1111"` (the default: weights, BREAK, long prompts in chunks) or `"plain"` (as diffusers).
    prompt_syntax: Option<SyntaxName>,
    /// Base64 or a data URL: image-to-image, or inpainting with `mask`.
    image: Option<String>,
    /// Base64 or a data URL; white (or opaque, for an image with transparency) is repainted.
    mask: Option<String>,
    strength: Option<f64>,
    /// LoRAs from the server's LoRA folder, by name (besides the prompt's `<lora:NAME:W>` tags).
    loras: Option<Vec<LoraField>>,
    /// Audio models: seconds of audio (default: the model's).
    audio_length_s: Option<f64>,
}

impl JobBody {
    /// The first image-only field given, which an audio model refuses.
    fn image_only_field(&self) -> Option<&'static str> {
        [
            ("width", self.width.is_some()),
            ("height", self.height.is_some()),
            ("guidance_rescale", self.guidance_rescale.is_some()),
            ("clip_skip", self.clip_skip.is_some()),
            ("prompt_syntax", self.prompt_syntax.is_some()),
            ("image", self.image.is_some()),
            ("mask", self.mask.is_some()),
            ("strength", self.strength.is_some()),
            ("loras", self.loras.is_some()),
        ]
        .into_iter()
        .find_map(|(name, given)| given.then_some(name))
    }
}

/// An audio job: AudioLDM's defaults (10 steps, guidance 2.5) where the body gives none.
fn audio_spec(
    state: &SharedState,
    model: std::sync::Arc<crate::registry::LoadedModel>,
    body: JobBody,
) -> Result<crate::jobs::spec::JobSpec, ApiError> {
    if let Some(field) = body.image_only_field() {
        return Err(ApiError::bad_field(
            field,
            format!("an image option; {:?} is an audio model, which takes prompt, negative_prompt, audio_length_s, steps, guidance, eta, seed, scheduler and n", model.name),
        ));
    }
    let defaults = AudioRequest::default();
    let draft = AudioDraft {
        model,
        request: AudioRequest {
            prompt: body.prompt,
            negative_prompt: body.negative_prompt.unwrap_or_default(),
            audio_length_s: body.audio_length_s,
            steps: body.steps.unwrap_or(defaults.steps),
            guidance_scale: body.guidance.unwrap_or(defaults.guidance_scale),
            num_waveforms: body.n.unwrap_or(1),
            eta: body.eta.unwrap_or(0.0),
            ..defaults
        },
        scheduler: body.scheduler,
        seed: body.seed.unwrap_or(Seed(None)),
    };
    draft.into_spec(&state.limits, &FIELDS)
}

/// One entry of `loras`: a name in the server's LoRA folder (never a path) and its weight (default 1), or
/// separate text encoder and UNet weights.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoraField {
    name: String,
    weight: Option<f64>,
    text_encoder_weight: Option<f64>,
    unet_weight: Option<f64>,
}

impl LoraField {
    fn choice(self) -> Result<LoraChoice, ApiError> {
        let name = self.name.trim();
        if name.is_empty()
            || name.contains(['/', '\\'])
            || name.contains("..")
            || name.contains(':')
        {
            return Err(ApiError::bad_field(
                "loras",
                format!("{:?}: a LoRA is named by its file stem in the server's LoRA folder, never by a path", self.name),
            ));
        }
        let weight = self.weight.unwrap_or(1.0);
        Ok(LoraChoice {
            source: LoraSource::Name(name.to_string()),
            text_encoder_weight: self.text_encoder_weight.unwrap_or(weight),
            unet_weight: self.unet_weight.unwrap_or(weight),
        })
    }
}

/// `POST /v1/jobs`: queues a generation and answers 202 with its id.
pub async fn create(
    State(state): State<SharedState>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body: JobBody = parse_json(&body)?;
    let model = state.registry.get(body.model.as_deref(), "model")?;
    if model.is_audio() || body.audio_length_s.is_some() {
        let spec = audio_spec(&state, model, body)?;
        return submitted(&state, spec).await;
    }
    let init = match body.image.clone() {
        Some(text) => {
            let (mask, strength, limits) = (body.mask.clone(), body.strength, state.limits.clone());
            Some(
                uploads::off_runtime(move || {
                    let decoded =
                        uploads::decode(&uploads::base64_bytes(&text, "image")?, "image", &limits)?;
                    let image = uploads::to_rgb(&decoded);
                    let mask = match &mask {
                        Some(text) => {
                            let decoded = uploads::decode(
                                &uploads::base64_bytes(text, "mask")?,
                                "mask",
                                &limits,
                            )?;
                            Some(uploads::to_mask(
                                &decoded,
                                MaskRule::OpaqueOrWhiteRepaints,
                                image.width,
                                image.height,
                            ))
                        }
                        None => None,
                    };
                    let strength = strength.unwrap_or(if mask.is_some() { 1.0 } else { 0.8 });
                    Ok(InitImage {
                        image,
                        strength,
                        mask,
                    })
                })
                .await?,
            )
        }
        None if body.mask.is_some() => {
            return Err(ApiError::bad_field("mask", "needs an image to inpaint"))
        }
        None if body.strength.is_some() => {
            return Err(ApiError::bad_field("strength", "needs an image"))
        }
        None => None,
    };
    let loras = body
        .loras
        .unwrap_or_default()
        .into_iter()
        .map(LoraField::choice)
        .collect::<Result<Vec<_>, _>>()?;
    let defaults = GenerationRequest::default();
    let draft = Draft {
        model,
        request: GenerationRequest {
            prompt: body.prompt,
            negative_prompt: body.negative_prompt.unwrap_or_default(),
            steps: body.steps.unwrap_or(defaults.steps),
            guidance_scale: body.guidance.unwrap_or(defaults.guidance_scale),
            guidance_rescale: body.guidance_rescale.unwrap_or(0.0),
            clip_skip: body.clip_skip.filter(|k| *k > 0),
            width: body.width,
            height: body.height,
            eta: body.eta.unwrap_or(0.0),
            init,
            prompt_syntax: match body.prompt_syntax {
                Some(SyntaxName::Plain) => PromptSyntax::Plain,
                Some(SyntaxName::A1111) | None => PromptSyntax::A1111,
            },
            loras,
            ..defaults
        },
        images: body.n.unwrap_or(1),
        seed: body.seed.unwrap_or(Seed(None)),
        seed_mode: SeedMode::Batch,
        rng: RngKind::Cpu,
        scheduler: body.scheduler,
    };
    let spec = draft.into_spec(&state.limits, &FIELDS)?;
    submitted(&state, spec).await
}

/// Queues `spec` and answers 202 with the job, its seed and its URL.
async fn submitted(
    state: &SharedState,
    spec: crate::jobs::spec::JobSpec,
) -> Result<Response, ApiError> {
    let seed = spec.seed;
    let job = state.engine.submit(spec).await?;
    let url = format!("/v1/jobs/{}", job.id);
    let mut body = describe(state, &job, &job.status(), false);
    if let Some(object) = body.as_object_mut() {
        object.insert("seed".into(), json!(seed));
    }
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, url)], Json(body)).into_response())
}

async fn find(state: &SharedState, id: &str) -> Result<std::sync::Arc<Job>, ApiError> {
    state.engine.find(id).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "no job {id:?} (finished jobs are kept for a while)"
        ))
    })
}

/// A job as JSON; `preview` adds the latest preview as a data URL.
fn describe(state: &SharedState, job: &Job, status: &JobStatus, preview: bool) -> Value {
    let base = format!("/v1/jobs/{}", job.id);
    let images: Vec<Value> = status
        .outputs
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let mut entry = json!({
                "url": format!("{base}/images/{i}.png"),
                "seed": image.seed,
                "width": image.width,
                "height": image.height,
                "parameters": image.infotext,
            });
            // An audio output's image is its spectrogram; the sound is the WAV.
            if let (Some(wav), Some(object)) = (&image.wav, entry.as_object_mut()) {
                object.insert(
                    "audio".into(),
                    json!({"url": format!("{base}/audio/{i}.wav"), "bytes": wav.len()}),
                );
            }
            entry
        })
        .collect();
    let preview = status.preview.as_ref().filter(|_| preview).map(|png| {
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(png.as_slice())
        )
    });
    json!({
        "id": job.id,
        "object": "job",
        "model": job.model,
        "prompt": job.prompt,
        "state": status.state,
        "progress": {"step": status.step, "total": status.total_steps, "fraction": status.fraction()},
        "queue_position": state.engine.queue_position(&job.id),
        "preview": preview,
        "images": images,
        "error": status.error.as_ref().map(|e| json!({
            "message": e.message, "param": e.param, "status": e.status.as_u16(),
        })),
        "created_at": status.created_at,
        "started_at": status.started_at,
        "finished_at": status.finished_at,
        "urls": {"self": base, "events": format!("{base}/events"), "preview": format!("{base}/preview")},
    })
}

/// `GET /v1/jobs/{id}`.
pub async fn get(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = find(&state, &id).await?;
    Ok(Json(describe(&state, &job, &job.status(), true)))
}

/// `DELETE /v1/jobs/{id}`: cancels a waiting or running job (202); forgets a finished one (200).
pub async fn delete(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = find(&state, &id).await?;
    if job.status().state.is_terminal() {
        state.engine.forget(&id).await?;
        return Ok((StatusCode::OK, Json(json!({"id": id, "deleted": true}))).into_response());
    }
    state.engine.cancel(&job, CancelReason::Requested).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(describe(&state, &job, &job.status(), false)),
    )
        .into_response())
}

fn png(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "image/png")], bytes).into_response()
}

/// What `pick` takes from output `file` (`{i}` followed by `extension`, which may be left out) of job `id`; a
/// 404 naming `what` when there is no such output or it holds none.
async fn output_part<T>(
    state: &SharedState,
    (id, file): (&str, &str),
    (extension, what): (&str, &str),
    pick: impl FnOnce(&ImageOutput) -> Option<T>,
) -> Result<T, ApiError> {
    let job = find(state, id).await?;
    let index: usize = file
        .strip_suffix(extension)
        .unwrap_or(file)
        .parse()
        .map_err(|_| ApiError::not_found(format!("no {what} {file:?}")))?;
    job.status()
        .outputs
        .get(index)
        .and_then(pick)
        .ok_or_else(|| ApiError::not_found(format!("job {id} has no {what} {index}")))
}

/// `GET /v1/jobs/{id}/images/{i}.png`.
pub async fn image(
    State(state): State<SharedState>,
    Path((id, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let bytes = output_part(&state, (&id, &file), (".png", "image"), |o| {
        Some(o.png.clone())
    })
    .await?;
    Ok(png(bytes))
}

/// `GET /v1/jobs/{id}/audio/{i}.wav`: an audio job's waveform.
pub async fn audio(
    State(state): State<SharedState>,
    Path((id, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let wav = output_part(&state, (&id, &file), (".wav", "audio"), |o| o.wav.clone()).await?;
    Ok(([(header::CONTENT_TYPE, "audio/wav")], wav).into_response())
}

/// `GET /v1/jobs/{id}/preview`: the latest preview PNG (404 before the first step).
pub async fn preview(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = find(&state, &id).await?;
    let preview = job
        .status()
        .preview
        .ok_or_else(|| ApiError::not_found(format!("job {id} has no preview yet")))?;
    Ok(png(preview.as_ref().clone()))
}

/// `GET /v1/jobs/{id}/events`: server-sent `status` events (the job's JSON with its preview) on every change,
/// the last one when the job ends.
pub async fn events(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let job = find(&state, &id).await?;
    let updates = job.subscribe();
    let detached = state.engine.detached();
    let stream = stream::unfold(
        Some((state, job, updates, detached, true)),
        |step| async move {
            let (state, job, mut updates, mut detached, first) = step?;
            if !first {
                // A brokered server that shuts down ends the stream; the job goes on elsewhere.
                tokio::select! {
                    changed = updates.changed() => changed.ok()?,
                    _ = detached.wait_for(|d| *d) => return None,
                }
            }
            let status = updates.borrow_and_update().clone();
            let event = Event::default()
                .event("status")
                .json_data(describe(&state, &job, &status, true))
                .unwrap_or_else(|_| Event::default().event("status"));
            let next =
                (!status.state.is_terminal()).then_some((state, job, updates, detached, false));
            Some((Ok(event), next))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// `GET /v1/schedulers`: every scheduler name requests may give.
pub async fn schedulers() -> Json<Value> {
    Json(json!({"data": diffuse::schedulers::known_scheduler_names()}))
}
