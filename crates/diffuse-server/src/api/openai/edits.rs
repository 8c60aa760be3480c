//! `POST /v1/images/edits` and `/v1/images/variations`: OpenAI's multipart image edits (image-to-image, or
//! inpainting with a mask) and variations (image-to-image without a prompt).

use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::HeaderMap;
use axum::Json;
use diffuse::pipelines::{GenerationRequest, InitImage};
use serde_json::Value;

use super::{check_output, respond, ResponseFormat, FIELDS};
use crate::api::input::{parse_seed, parse_size, Draft, Seed};
use crate::api::uploads::{self, MaskRule};
use crate::api::wait::run_to_end;
use crate::api::SharedState;
use crate::error::ApiError;
use crate::jobs::spec::{RngKind, SeedMode};

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
    if form.prompt.is_none() {
        return Err(ApiError::bad_field("prompt", "required"));
    }
    run(state, headers, form, true).await
}

/// `POST /v1/images/variations`: image-to-image of the input with no prompt (or the optional `prompt`), at
/// `strength` (default 0.8, diffusers' image-to-image default).
pub async fn variations(
    State(state): State<SharedState>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<Value>, ApiError> {
    let multipart = multipart.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let form = EditForm::read(multipart).await?;
    if form.mask.is_some() {
        return Err(ApiError::bad_field(
            "mask",
            "variations take no mask; inpaint with /v1/images/edits",
        ));
    }
    run(state, headers, form, false).await
}

/// Runs an edit or (without `masks`) a variation: the image's transparency is a mask only for edits.
async fn run(
    state: SharedState,
    headers: HeaderMap,
    form: EditForm,
    masks: bool,
) -> Result<Json<Value>, ApiError> {
    check_output(
        form.output_format.as_deref(),
        form.background.as_deref(),
        form.stream,
    )?;
    let image_bytes = form
        .image
        .ok_or_else(|| ApiError::bad_field("image", "required"))?;
    let model = super::served_model(&state, form.model.as_deref())?;
    let (mask_bytes, limits) = (form.mask, state.limits.clone());
    let (image, mask) = uploads::off_runtime(move || {
        let decoded = uploads::decode(&image_bytes, "image", &limits)?;
        let image = uploads::to_rgb(&decoded);
        let mask = match &mask_bytes {
            Some(bytes) => {
                let mask = uploads::decode(bytes, "mask", &limits)?;
                Some(uploads::to_mask(
                    &mask,
                    MaskRule::TransparentRepaints,
                    image.width,
                    image.height,
                ))
            }
            None if masks && uploads::has_transparency(&decoded) => Some(uploads::to_mask(
                &decoded,
                MaskRule::TransparentRepaints,
                image.width,
                image.height,
            )),
            None => None,
        };
        Ok((image, mask))
    })
    .await?;
    let f = model.image("model")?.vae_scale_factor();
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
            prompt: form.prompt.unwrap_or_default(),
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
    };
    let spec = draft.into_spec(&state.limits, &FIELDS)?;
    let (job, status) = run_to_end(&state.engine, spec).await?;
    Ok(Json(
        respond(
            &state,
            &job,
            &status,
            form.response_format.unwrap_or_default(),
            &headers,
        )
        .await,
    ))
}
