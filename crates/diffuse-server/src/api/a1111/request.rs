//! The body of A1111's `txt2img` and `img2img`, and what it means here.
//!
//! Fields A1111 clients always send with their defaults (hires fix off, no scripts, …) are accepted; one that
//! asks for something this server does not do (e.g. `enable_hr: true`) is refused with a 400 naming it, rather
//! than silently ignored. `inpainting_fill`, `mask_blur`, `inpaint_full_res` and `resize_mode` are not
//! applied: inpainting is diffusers'. Other unknown fields are ignored, as A1111 ignores them.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::settings::Settings;
use crate::api::input::Seed;
use crate::error::ApiError;
use crate::registry::Registry;

/// The JSON fields this server reads.
#[derive(Deserialize)]
pub struct A1111Body {
    /// The prompt.
    pub prompt: Option<String>,
    /// The negative prompt.
    pub negative_prompt: Option<String>,
    /// Steps (A1111's default: 50).
    pub steps: Option<usize>,
    /// Guidance scale (default 7).
    pub cfg_scale: Option<f64>,
    /// Output width (default 512).
    pub width: Option<usize>,
    /// Output height (default 512).
    pub height: Option<usize>,
    /// The seed (-1 = random); image `i` uses `seed + i`.
    pub seed: Option<Seed>,
    /// The sampler (A1111 name or diffusers class).
    pub sampler_name: Option<String>,
    /// The old name of `sampler_name`.
    pub sampler_index: Option<String>,
    /// The schedule type: "Automatic", "Karras", "Exponential", "SGM Uniform", ... (A1111's labels or names).
    pub scheduler: Option<String>,
    /// Images per batch.
    pub batch_size: Option<usize>,
    /// Batches.
    pub n_iter: Option<usize>,
    /// img2img strength (default 0.75).
    pub denoising_strength: Option<f64>,
    /// DDIM's η.
    pub eta: Option<f64>,
    /// img2img input, base64 (one image).
    pub init_images: Option<Vec<String>>,
    /// Inpainting mask, base64.
    pub mask: Option<String>,
    /// 1 repaints the black area instead of the white one.
    pub inpainting_mask_invert: Option<u8>,
    /// Settings for this request (model, clip skip, RNG).
    pub override_settings: Option<Map<String, Value>>,
    /// Whether to return the images (default true).
    pub send_images: Option<bool>,
    enable_hr: Option<bool>,
    restore_faces: Option<bool>,
    tiling: Option<bool>,
    subseed_strength: Option<f64>,
    styles: Option<Vec<String>>,
    script_name: Option<String>,
    alwayson_scripts: Option<Map<String, Value>>,
    s_churn: Option<f64>,
}

/// The sampler a request selects.
#[derive(Debug, Default, PartialEq)]
pub struct SamplerChoice {
    /// The scheduler name to build (e.g. "DPM++ 2M Karras"); none for the model's own.
    pub scheduler: Option<String>,
}

impl A1111Body {
    /// Refuses options that would change the image in ways this server does not reproduce.
    pub fn refuse_unsupported(&self) -> Result<(), ApiError> {
        let refuse = |field: &str, what: &str| {
            Err(ApiError::bad_field(
                field,
                format!("{what} is not supported"),
            ))
        };
        if self.enable_hr == Some(true) {
            return refuse("enable_hr", "hires fix");
        }
        if self.restore_faces == Some(true) {
            return refuse("restore_faces", "face restoration");
        }
        if self.tiling == Some(true) {
            return refuse("tiling", "tiling");
        }
        if self.subseed_strength.is_some_and(|s| s != 0.0) {
            return refuse("subseed_strength", "a variation seed");
        }
        if self.styles.as_ref().is_some_and(|s| !s.is_empty()) {
            return refuse("styles", "a saved style");
        }
        if self
            .script_name
            .as_ref()
            .is_some_and(|s| !s.trim().is_empty())
        {
            return refuse("script_name", "a script");
        }
        if self
            .alwayson_scripts
            .as_ref()
            .is_some_and(|s| !s.is_empty())
        {
            return refuse("alwayson_scripts", "an extension script");
        }
        if self.s_churn.is_some_and(|s| s != 0.0) {
            return refuse("s_churn", "s_churn");
        }
        Ok(())
    }

    /// The server-wide `settings` with `override_settings` applied.
    pub fn settings(
        &self,
        mut settings: Settings,
        registry: &Registry,
    ) -> Result<Settings, ApiError> {
        if let Some(values) = &self.override_settings {
            settings.apply(values, "override_settings.", registry)?;
        }
        Ok(settings)
    }

    /// The sampler, from `sampler_name` (or `sampler_index`) and `scheduler`.
    pub fn sampler(&self) -> Result<SamplerChoice, ApiError> {
        let name = [&self.sampler_name, &self.sampler_index]
            .into_iter()
            .flatten()
            .map(|s| s.trim())
            .find(|s| !s.is_empty())
            .map(str::to_string);
        let schedule = self
            .scheduler
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty() && !s.eq_ignore_ascii_case("automatic"));
        // The library reads a schedule type after the sampler name, as A1111 splits "DPM++ 2M Karras"; one
        // it cannot honor is refused when the job is drafted, naming sampler_name.
        let scheduler = match (name, schedule) {
            (name, None) => name,
            (Some(name), Some(schedule)) => {
                // A schedule type the sampler cannot take is the `scheduler` field's fault.
                let base = diffuse::schedulers::SchedulerConfig::default();
                let combined = format!("{name} {schedule}");
                let sampler_ok = diffuse::schedulers::scheduler_config_for(&name, &base).is_ok();
                if let (true, Err(e)) = (
                    sampler_ok,
                    diffuse::schedulers::scheduler_config_for(&combined, &base),
                ) {
                    return Err(ApiError::bad_field("scheduler", e.to_string()));
                }
                Some(combined)
            }
            (None, Some(schedule)) => {
                return Err(ApiError::bad_field(
                    "scheduler",
                    format!("{schedule:?} needs a sampler_name to apply to"),
                ))
            }
        };
        Ok(SamplerChoice { scheduler })
    }
}
