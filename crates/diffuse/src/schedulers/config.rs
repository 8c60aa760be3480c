//! `scheduler_config.json`: the options every diffusers scheduler reads, and the parsed enums.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{names, Scheduler};
use crate::{Error, Result};

/// What a generation asks of `set_timesteps`: a step count, or a custom schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum TimestepRequest {
    /// `num_inference_steps`.
    Steps(usize),
    /// Custom timesteps, in descending order (DDPM, Euler, Heun, DPM-Solver, LCM accept them).
    Timesteps(Vec<f64>),
    /// Custom sigmas, ending with the final sigma (Euler and UniPC accept them).
    Sigmas(Vec<f64>),
}

/// A scheduler's configuration, read straight from `scheduler/scheduler_config.json`.
///
/// Every field is optional: a missing one takes the default of the class being built, as diffusers'
/// `from_config` does. Unknown keys are ignored. Enumerated values are kept as strings and checked by
/// [`SchedulerConfig::build`], which names the key and value it cannot honor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// The diffusers class, e.g. `"EulerDiscreteScheduler"`.
    #[serde(rename = "_class_name", skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Training timesteps (T).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_train_timesteps: Option<usize>,
    /// First beta of the training schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta_start: Option<f64>,
    /// Last beta of the training schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta_end: Option<f64>,
    /// `linear`, `scaled_linear`, `squaredcos_cap_v2` (DDPM also `sigmoid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta_schedule: Option<String>,
    /// Explicit betas, overriding `beta_schedule`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trained_betas: Option<Vec<f64>>,
    /// `epsilon`, `v_prediction` or `sample`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction_type: Option<String>,
    /// `linspace`, `leading` or `trailing`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestep_spacing: Option<String>,
    /// Added to the `leading` timesteps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps_offset: Option<i64>,
    /// Rescale the betas to zero terminal SNR.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rescale_betas_zero_snr: Option<bool>,
    /// Clip the predicted clean sample to `clip_sample_range`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_sample: Option<bool>,
    /// The clip range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_sample_range: Option<f64>,
    /// Dynamic thresholding of the predicted clean sample.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thresholding: Option<bool>,
    /// The quantile of dynamic thresholding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic_thresholding_ratio: Option<f64>,
    /// The upper bound of the dynamic threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_max_value: Option<f64>,
    /// Use alpha_cumprod = 1 past the last step (DDIM, PNDM, LCM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_alpha_to_one: Option<bool>,
    /// PNDM: skip the Runge-Kutta warm-up (PLMS only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_prk_steps: Option<bool>,
    /// DDPM's variance type; DPM-Solver's `learned`/`learned_range`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variance_type: Option<String>,
    /// Karras sigmas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_karras_sigmas: Option<bool>,
    /// Exponential sigmas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_exponential_sigmas: Option<bool>,
    /// Beta-distributed sigmas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_beta_sigmas: Option<bool>,
    /// DPM-Solver: uniform logSNR steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_lu_lambdas: Option<bool>,
    /// Flow-matching sigmas (unsupported: diffuse targets the SD family).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_flow_sigmas: Option<bool>,
    /// Lower bound of the Karras/exponential/beta sigmas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigma_min: Option<f64>,
    /// Upper bound of the Karras/exponential/beta sigmas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigma_max: Option<f64>,
    /// Euler: `linear` or `log_linear` sigma interpolation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interpolation_type: Option<String>,
    /// Euler: `discrete` or `continuous` timesteps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestep_type: Option<String>,
    /// The last sigma: `zero` or `sigma_min`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_sigmas_type: Option<String>,
    /// Multistep solvers' order (1-3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub solver_order: Option<usize>,
    /// DPM-Solver's `dpmsolver++` or `sde-dpmsolver++`; DEIS's `deis`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm_type: Option<String>,
    /// `midpoint`/`heun` (DPM-Solver), `bh1`/`bh2` (UniPC), `logrho` (DEIS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub solver_type: Option<String>,
    /// Use lower-order steps at the end of short schedules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lower_order_final: Option<bool>,
    /// DPM-Solver: a first-order last step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub euler_at_final: Option<bool>,
    /// DPM-Solver: clip lambda from below (cosine schedules).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda_min_clipped: Option<f64>,
    /// UniPC: predict x0 (UniPC's data-prediction form).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predict_x0: Option<bool>,
    /// UniPC: the steps without a corrector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disable_corrector: Option<Vec<usize>>,
    /// LCM: the distillation schedule's step count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_inference_steps: Option<usize>,
    /// LCM: the boundary-condition time scaling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestep_scaling: Option<f64>,
    /// Dynamic shifting for flow models (unsupported).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_dynamic_shifting: Option<bool>,
    /// Flow shift (used only with flow sigmas).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_shift: Option<f64>,
    /// DDIM's eta: a generation option (diffusers passes it to `step`), not a key diffusers saves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta: Option<f64>,
    /// Where this configuration came from, for error messages.
    #[serde(skip)]
    pub origin: String,
    /// Keys the file did not hold that the pipeline set for its own scheduler. diffusers lists such keys in
    /// `_use_default_values`, so `from_config` gives the next scheduler the class defaults for them instead.
    #[serde(skip)]
    pub(crate) filled_by_pipeline: FilledByPipeline,
}

/// Which of the keys diffusers' Stable Diffusion pipelines rewrite were missing from the file and set by
/// the pipeline (see [`SchedulerConfig::filled_by_pipeline`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct FilledByPipeline {
    pub(crate) steps_offset: bool,
    pub(crate) clip_sample: bool,
}

impl SchedulerConfig {
    /// Reads `scheduler_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut config: Self = crate::loaders::json::read_json(path)?;
        config.origin = path.display().to_string();
        Ok(config)
    }

    /// Parses a scheduler configuration from JSON text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let mut config: Self =
            crate::loaders::json::parse_json(text, Path::new("scheduler config"))?;
        config.origin = "scheduler config".into();
        Ok(config)
    }

    /// Makes a fresh scheduler for one generation, its timesteps set as `request` asks.
    ///
    /// Errors name the class, key or value that cannot be honored: an unknown `_class_name`, an unsupported
    /// option, or a custom schedule the class does not accept.
    pub fn build(&self, request: &TimestepRequest) -> Result<Box<dyn Scheduler>> {
        let class = self.class_name.as_deref().ok_or_else(|| {
            Error::unsupported(
                self.source(),
                "_class_name",
                "(missing)",
                names::class_list(),
            )
        })?;
        let build = names::builder_for_class(class).ok_or_else(|| {
            Error::unsupported(self.source(), "_class_name", class, names::class_list())
        })?;
        build(self, request)
    }

    /// The name used in error messages.
    pub(crate) fn source(&self) -> String {
        if self.origin.is_empty() {
            "scheduler config".into()
        } else {
            self.origin.clone()
        }
    }

    /// An [`Error::Unsupported`] for `key` = `value` in this configuration.
    pub(crate) fn unsupported(
        &self,
        key: &str,
        value: impl std::fmt::Display,
        expected: &str,
    ) -> Error {
        Error::unsupported(self.source(), key, value, expected)
    }

    /// Fails if a flag that this scheduler does not implement is set.
    pub(crate) fn reject_flag(&self, key: &str, value: Option<bool>) -> Result<()> {
        if value == Some(true) {
            return Err(self.unsupported(key, "true", "false (not supported by diffuse)"));
        }
        Ok(())
    }

    /// `prediction_type`, defaulting to epsilon, limited to `allowed`.
    pub(crate) fn prediction(&self, allowed: &[PredictionType]) -> Result<PredictionType> {
        let value = self.prediction_type.as_deref().unwrap_or("epsilon");
        let parsed = match value {
            "epsilon" => Some(PredictionType::Epsilon),
            "v_prediction" => Some(PredictionType::VPrediction),
            "sample" => Some(PredictionType::Sample),
            _ => None,
        };
        match parsed {
            Some(p) if allowed.contains(&p) => Ok(p),
            _ => {
                let names: Vec<&str> = allowed.iter().map(|p| p.as_str()).collect();
                Err(self.unsupported("prediction_type", value, &names.join(", ")))
            }
        }
    }

    /// `timestep_spacing`, with the class's default.
    pub(crate) fn spacing(&self, default: TimestepSpacing) -> Result<TimestepSpacing> {
        match self.timestep_spacing.as_deref() {
            None => Ok(default),
            Some("linspace") => Ok(TimestepSpacing::Linspace),
            Some("leading") => Ok(TimestepSpacing::Leading),
            Some("trailing") => Ok(TimestepSpacing::Trailing),
            Some(other) => {
                Err(self.unsupported("timestep_spacing", other, "linspace, leading, trailing"))
            }
        }
    }

    /// `num_train_timesteps`, default 1000, at least 2.
    pub(crate) fn train_timesteps(&self) -> Result<usize> {
        let n = self.num_train_timesteps.unwrap_or(1000);
        if n < 2 {
            return Err(self.unsupported("num_train_timesteps", n, "at least 2"));
        }
        Ok(n)
    }

    /// `steps_offset`, default 0.
    pub(crate) fn offset(&self) -> i64 {
        self.steps_offset.unwrap_or(0)
    }

    /// The sigma schedule chosen by `use_karras_sigmas`, `use_exponential_sigmas`, `use_beta_sigmas`.
    pub(crate) fn sigma_schedule(&self) -> Result<SigmaSchedule> {
        let flags = [
            (self.use_karras_sigmas, SigmaSchedule::Karras),
            (self.use_exponential_sigmas, SigmaSchedule::Exponential),
            (self.use_beta_sigmas, SigmaSchedule::Beta),
        ];
        let set: Vec<SigmaSchedule> = flags
            .iter()
            .filter(|(flag, _)| *flag == Some(true))
            .map(|(_, s)| *s)
            .collect();
        match set.as_slice() {
            [] => Ok(SigmaSchedule::Interpolated),
            [one] => Ok(*one),
            _ => Err(self.unsupported(
                "use_karras_sigmas/use_exponential_sigmas/use_beta_sigmas",
                "more than one set",
                "at most one of them",
            )),
        }
    }

    /// `final_sigmas_type`: true for `sigma_min`, false for `zero`.
    pub(crate) fn final_sigma_is_min(&self) -> Result<bool> {
        match self.final_sigmas_type.as_deref() {
            None | Some("zero") => Ok(false),
            Some("sigma_min") => Ok(true),
            Some(other) => Err(self.unsupported("final_sigmas_type", other, "zero, sigma_min")),
        }
    }

    /// `clip_sample_range` when `clip_sample` is on (missing, it takes the class's default).
    pub(crate) fn clip_range(&self) -> Option<f32> {
        let class_default = self
            .class_name
            .as_deref()
            .and_then(names::clip_sample_default);
        self.clip_sample
            .or(class_default)
            .unwrap_or(false)
            .then(|| self.clip_sample_range.unwrap_or(1.0) as f32)
    }

    /// The keys the file lacked that the pipeline set for its own scheduler (diffusers lists them in the
    /// config's `_use_default_values`, and `from_config` drops them).
    pub fn pipeline_filled_keys(&self) -> Vec<&'static str> {
        let filled = self.filled_by_pipeline;
        [
            (filled.steps_offset, "steps_offset"),
            (filled.clip_sample, "clip_sample"),
        ]
        .into_iter()
        .filter_map(|(set, key)| set.then_some(key))
        .collect()
    }

    /// The configuration `from_config` hands to a new scheduler: keys the pipeline filled in go back to
    /// missing, so the new class's defaults apply.
    pub(crate) fn for_from_config(&self) -> Self {
        let mut config = self.clone();
        if config.filled_by_pipeline.steps_offset {
            config.steps_offset = None;
        }
        if config.filled_by_pipeline.clip_sample {
            config.clip_sample = None;
        }
        config.filled_by_pipeline = FilledByPipeline::default();
        config
    }

    /// `(dynamic_thresholding_ratio, sample_max_value)` when `thresholding` is on.
    pub(crate) fn threshold_options(&self) -> Option<(f64, f64)> {
        (self.thresholding == Some(true)).then(|| {
            (
                self.dynamic_thresholding_ratio.unwrap_or(0.995),
                self.sample_max_value.unwrap_or(1.0),
            )
        })
    }

    /// Checks `request` is a step count and returns it: the classes without custom schedules.
    pub(crate) fn steps_only(&self, class: &str, request: &TimestepRequest) -> Result<usize> {
        match request {
            TimestepRequest::Steps(n) => Ok(*n),
            TimestepRequest::Timesteps(_) => Err(Error::invalid(
                "timesteps",
                format!("{class} does not accept custom timesteps"),
            )),
            TimestepRequest::Sigmas(_) => Err(Error::invalid(
                "sigmas",
                format!("{class} does not accept custom sigmas"),
            )),
        }
    }
}

/// What the denoising model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The noise.
    Epsilon,
    /// The velocity `alpha * noise - sigma * x0`.
    VPrediction,
    /// The clean sample.
    Sample,
}

impl PredictionType {
    /// The diffusers spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PredictionType::Epsilon => "epsilon",
            PredictionType::VPrediction => "v_prediction",
            PredictionType::Sample => "sample",
        }
    }
}

/// How inference timesteps are spread over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    /// Evenly from 0 to T-1, rounded.
    Linspace,
    /// Multiples of T // N, plus `steps_offset`.
    Leading,
    /// Evenly from T down, minus one.
    Trailing,
}

/// Which sigmas a sigma-based scheduler uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SigmaSchedule {
    /// The training sigmas interpolated at the timesteps.
    Interpolated,
    /// Karras et al. (rho = 7).
    Karras,
    /// Log-uniform.
    Exponential,
    /// Beta(0.6, 0.6) quantiles.
    Beta,
}
