//! A1111's settings: the server-wide defaults that `POST /sdapi/v1/options` sets (as A1111 clients switch
//! models), and that a request's `override_settings` override for itself.

use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::jobs::spec::RngKind;
use crate::registry::Registry;

/// The settings that mean something here.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `sd_model_checkpoint`: the served model's name; `None` is the server's default model.
    pub model: Option<String>,
    /// `CLIP_stop_at_last_layers` in diffusers' numbering (A1111's 2 is 1); `None` is A1111's 1.
    pub clip_skip: Option<usize>,
    /// `randn_source`: "GPU" (A1111's default: torch's CUDA stream, drawn here as "NV" draws it), "NV" or
    /// "CPU".
    pub randn_source: &'static str,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: None,
            clip_skip: None,
            randn_source: "GPU",
        }
    }
}

impl Settings {
    /// The generator `randn_source` names.
    pub fn rng(&self) -> RngKind {
        match self.randn_source {
            "CPU" => RngKind::Cpu,
            _ => RngKind::Philox,
        }
    }

    /// Applies every key of `values`; `prefix` ("override_settings." or "") names the fields in errors. Keys
    /// this server has no use for are ignored, as A1111 ignores unknown ones; values it cannot honor are
    /// refused naming the key.
    pub fn apply(
        &mut self,
        values: &Map<String, Value>,
        prefix: &str,
        registry: &Registry,
    ) -> Result<(), ApiError> {
        for (key, value) in values {
            self.set(key, value, &format!("{prefix}{key}"), registry)?;
        }
        Ok(())
    }

    fn set(
        &mut self,
        key: &str,
        value: &Value,
        field: &str,
        registry: &Registry,
    ) -> Result<(), ApiError> {
        let text = || {
            value
                .as_str()
                .map(str::trim)
                .ok_or_else(|| ApiError::bad_field(field, format!("{value}: expected a string")))
        };
        match key {
            "sd_model_checkpoint" => {
                // A1111 titles read "name [hash]"; clients send the title, the name or a hash-less title.
                let title = text()?;
                let name = title.split(" [").next().unwrap_or(title).trim();
                self.model = Some(registry.get(Some(name), field)?.name.clone());
            }
            "CLIP_stop_at_last_layers" => {
                let layers = value
                    .as_u64()
                    .filter(|n| (1..=12).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_field(field, format!("{value}: expected 1 to 12"))
                    })?;
                self.clip_skip = (layers > 1).then(|| layers as usize - 1);
            }
            "randn_source" => {
                self.randn_source = match text()? {
                    "GPU" => "GPU",
                    "NV" => "NV",
                    "CPU" => "CPU",
                    _ => {
                        return Err(ApiError::bad_field(
                            field,
                            format!("{value}: expected \"GPU\", \"NV\" or \"CPU\""),
                        ))
                    }
                }
            }
            // Every served model decodes with its own VAE: A1111's "Automatic" (and "None", the checkpoint's
            // own VAE) is all there is.
            "sd_vae" => {
                let vae = text()?;
                if !vae.eq_ignore_ascii_case("automatic") && !vae.eq_ignore_ascii_case("none") {
                    return Err(ApiError::bad_field(
                        field,
                        format!("{vae:?}: no separate VAE is served; \"Automatic\" uses the model's own"),
                    ));
                }
            }
            "samples_format" => {
                let format = text()?;
                if !format.eq_ignore_ascii_case("png") {
                    return Err(ApiError::bad_field(
                        field,
                        format!("{format:?}: this server writes PNG only"),
                    ));
                }
            }
            "eta_noise_seed_delta" if value.as_i64().is_some_and(|d| d != 0) => {
                return Err(ApiError::bad_field(field, "a seed delta is not supported"));
            }
            _ => {}
        }
        Ok(())
    }

    /// The settings as `GET /sdapi/v1/options` shows them.
    pub fn to_json(&self, registry: &Registry) -> Value {
        let model = registry
            .get(self.model.as_deref(), "sd_model_checkpoint")
            .ok();
        json!({
            "sd_model_checkpoint": model.as_ref().map(|m| m.title()),
            "CLIP_stop_at_last_layers": self.clip_skip.map_or(1, |k| k + 1),
            "randn_source": self.randn_source,
            "sd_vae": "Automatic",
            "samples_format": "png",
        })
    }
}
