//! AUTOMATIC1111's web UI API (`/sdapi/v1/...`), as its clients use it.
//!
//! `txt2img` and `img2img` answer `{images, parameters, info}` with A1111's semantics: `batch_size × n_iter`
//! images, image `i` drawn with seed `seed + i` on its own generator; the generator is A1111's default "GPU"
//! (torch's CUDA Philox stream, A1111's "NV") unless `override_settings.randn_source` is "CPU".

pub mod listings;
mod request;
pub mod settings;
mod status;

pub use status::{
    interrupt, options, png_info, progress, samplers, schedulers, scripts, sd_models, set_options,
    skip,
};

use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use diffuse::pipelines::{GenerationRequest, InitImage};
use serde_json::{json, Value};

use super::input::{parse_json, Draft, FieldNames, Seed};
use super::uploads::{self, MaskRule};
use super::wait::run_to_end;
use super::SharedState;
use crate::config::Limits;
use crate::error::ApiError;
use crate::jobs::job::JobStatus;
use crate::jobs::spec::{JobSpec, SeedMode};
use request::A1111Body;

const FIELDS: FieldNames = FieldNames {
    steps: "steps",
    guidance: "cfg_scale",
    width: "width",
    height: "height",
    images: "batch_size",
    scheduler: "sampler_name",
    strength: "denoising_strength",
    image: "init_images",
    mask: "mask",
};

/// `POST /sdapi/v1/txt2img`.
pub async fn txt2img(
    State(state): State<SharedState>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    run(state, &body, false).await
}

/// `POST /sdapi/v1/img2img`: `init_images[0]`, optionally `mask` (white = repaint).
pub async fn img2img(
    State(state): State<SharedState>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    run(state, &body, true).await
}

async fn run(state: SharedState, raw: &[u8], img2img: bool) -> Result<Json<Value>, ApiError> {
    let body: A1111Body = parse_json(raw)?;
    body.refuse_unsupported()?;
    let settings = body.settings(state.a1111_settings(), &state.registry)?;
    let sampler = body.sampler()?;
    let model = state.registry.get(
        settings.model.as_deref(),
        "override_settings.sd_model_checkpoint",
    )?;
    let init = if img2img {
        let upload = Upload {
            images: body.init_images.clone(),
            mask: body.mask.clone(),
            invert: body.inpainting_mask_invert,
            strength: body.denoising_strength,
        };
        let limits = state.limits.clone();
        Some(uploads::off_runtime(move || upload.decode(&limits)).await?)
    } else {
        None
    };
    let batch_size = body.batch_size.unwrap_or(1);
    let n_iter = body.n_iter.unwrap_or(1);
    if n_iter == 0 {
        return Err(ApiError::bad_field("n_iter", "0: at least one batch"));
    }
    let defaults = GenerationRequest::default();
    let draft = Draft {
        model,
        request: GenerationRequest {
            prompt: body.prompt.clone().unwrap_or_default(),
            negative_prompt: body.negative_prompt.clone().unwrap_or_default(),
            steps: body.steps.unwrap_or(50),
            guidance_scale: body.cfg_scale.unwrap_or(7.0),
            clip_skip: settings.clip_skip,
            width: Some(body.width.unwrap_or(512)),
            height: Some(body.height.unwrap_or(512)),
            eta: body.eta.unwrap_or(0.0),
            init,
            ..defaults
        },
        images: batch_size.saturating_mul(n_iter),
        seed: body.seed.unwrap_or(Seed(None)),
        seed_mode: SeedMode::PerImage,
        rng: settings.rng(),
        scheduler: sampler.scheduler,
    };
    let spec = draft.into_spec(&state.limits, &FIELDS)?;
    let info_base = info_base(&spec, batch_size);
    let (job, status) = run_to_end(&state.engine, spec).await?;
    // The images are in the answer: nothing is lost if the broker cannot delete them now (they expire).
    let _ = state.engine.forget(&job.id).await;
    let images: Vec<String> = if body.send_images.unwrap_or(true) {
        status
            .outputs
            .iter()
            .map(|image| base64::engine::general_purpose::STANDARD.encode(&image.png))
            .collect()
    } else {
        Vec::new()
    };
    let mut parameters: Value = serde_json::from_slice(raw).unwrap_or_else(|_| json!({}));
    if let Some(object) = parameters.as_object_mut() {
        // A1111 does not echo the input images.
        object.insert("init_images".into(), Value::Null);
        object.insert("mask".into(), Value::Null);
    }
    Ok(Json(json!({
        "images": images,
        "parameters": parameters,
        "info": info(info_base, &status).to_string(),
    })))
}

/// img2img's uploads, taken from the body to be decoded off the runtime.
struct Upload {
    images: Option<Vec<String>>,
    mask: Option<String>,
    invert: Option<u8>,
    strength: Option<f64>,
}

impl Upload {
    fn decode(self, limits: &Limits) -> Result<InitImage, ApiError> {
        let first = match self.images.as_deref() {
            Some([one]) => one,
            Some([]) | None => {
                return Err(ApiError::bad_field("init_images", "required: one image"))
            }
            Some(_) => return Err(ApiError::bad_field("init_images", "give one image only")),
        };
        let decoded = uploads::decode(
            &uploads::base64_bytes(first, "init_images")?,
            "init_images",
            limits,
        )?;
        let image = uploads::to_rgb(&decoded);
        let mask = match self.mask.as_deref().filter(|m| !m.is_empty()) {
            Some(text) => {
                let decoded =
                    uploads::decode(&uploads::base64_bytes(text, "mask")?, "mask", limits)?;
                let mut mask = uploads::to_mask(
                    &decoded,
                    MaskRule::OpaqueOrWhiteRepaints,
                    image.width,
                    image.height,
                );
                match self.invert.unwrap_or(0) {
                    0 => {}
                    1 => uploads::invert(&mut mask),
                    other => {
                        return Err(ApiError::bad_field(
                            "inpainting_mask_invert",
                            format!("{other}: expected 0 or 1"),
                        ))
                    }
                }
                Some(mask)
            }
            None => None,
        };
        Ok(InitImage {
            image,
            strength: self.strength.unwrap_or(0.75),
            mask,
        })
    }
}

/// The fields of A1111's `info` known before the job runs.
fn info_base(spec: &JobSpec, batch_size: usize) -> Value {
    let Some((request, _)) = spec.image() else {
        return json!({});
    };
    let (sampler, schedule_type) = spec.sampler();
    json!({
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "seed": spec.seed,
        "subseed": -1,
        "subseed_strength": 0,
        "width": request.width,
        "height": request.height,
        "sampler_name": sampler,
        "scheduler": schedule_type.unwrap_or("Automatic"),
        "cfg_scale": request.guidance_scale,
        "steps": request.steps,
        "batch_size": batch_size,
        "restore_faces": false,
        "face_restoration_model": null,
        "sd_model_name": spec.model.name,
        "sd_model_hash": spec.model.hash,
        "sd_vae_name": null,
        "sd_vae_hash": null,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": request.init.as_ref().map(|i| i.strength),
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "styles": [],
        "clip_skip": request.clip_skip.map_or(1, |k| k + 1),
        "is_using_inpainting_conditioning": false,
        "version": concat!("diffuse ", env!("CARGO_PKG_VERSION")),
    })
}

/// A1111's `info`: the base plus the per-image lists.
fn info(mut base: Value, status: &JobStatus) -> Value {
    let count = status.outputs.len();
    let seeds: Vec<u64> = status.outputs.iter().map(|o| o.seed).collect();
    let infotexts: Vec<&str> = status.outputs.iter().map(|o| o.infotext.as_str()).collect();
    if let Some(object) = base.as_object_mut() {
        let prompt = object.get("prompt").cloned().unwrap_or(Value::Null);
        let negative = object
            .get("negative_prompt")
            .cloned()
            .unwrap_or(Value::Null);
        object.insert("all_prompts".into(), json!(vec![prompt; count]));
        object.insert("all_negative_prompts".into(), json!(vec![negative; count]));
        object.insert("all_seeds".into(), json!(seeds));
        object.insert("all_subseeds".into(), json!(vec![-1; count]));
        object.insert("infotexts".into(), json!(infotexts));
        object.insert(
            "job_timestamp".into(),
            json!(crate::clock::a1111_timestamp(status.created_at)),
        );
    }
    base
}
