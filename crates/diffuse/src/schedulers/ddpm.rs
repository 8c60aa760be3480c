//! `DDPMScheduler` (Ho et al. 2020): ancestral sampling with fixed variances.

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig, TimestepRequest, TimestepSpacing};
use super::ops::{self, alpha_at, div, lincomb, scale, vp_add_noise};
use super::schedule::{self, DDPM_DEFAULTS};
use super::{Scheduler, SchedulerOutput};
use crate::rng::{randn_tensor, NoiseSource};
use crate::{Error, Result};

/// DDPM's fixed variance choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variance {
    /// `fixed_small`: the posterior variance.
    Small,
    /// `fixed_small_log`: the posterior variance, via its log (`exp(0.5 * log(var))` is the std).
    SmallLog,
    /// `fixed_large`: beta_t.
    Large,
}

/// diffusers' `DDPMScheduler`.
struct Ddpm {
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
    prediction: PredictionType,
    variance: Variance,
    clip: Option<f32>,
    threshold: Option<(f64, f64)>,
}

/// Builds a DDPM scheduler from `config`, its timesteps set by `request`.
pub(crate) fn build(
    config: &SchedulerConfig,
    request: &TimestepRequest,
) -> Result<Box<dyn Scheduler>> {
    let n_train = config.train_timesteps()?;
    let alphas_cumprod = schedule::alphas_cumprod_for(config, DDPM_DEFAULTS, n_train)?;
    let variance = match config.variance_type.as_deref() {
        None | Some("fixed_small") => Variance::Small,
        Some("fixed_small_log") => Variance::SmallLog,
        Some("fixed_large") => Variance::Large,
        Some(other) => {
            return Err(config.unsupported(
                "variance_type",
                other,
                "fixed_small, fixed_small_log, fixed_large (learned variances need a model that predicts them)",
            ))
        }
    };
    let prediction = config.prediction(&[
        PredictionType::Epsilon,
        PredictionType::Sample,
        PredictionType::VPrediction,
    ])?;
    let spacing = config.spacing(TimestepSpacing::Leading)?;
    let timesteps = match request {
        TimestepRequest::Timesteps(custom) => {
            if custom.windows(2).any(|w| w[1] >= w[0]) {
                return Err(Error::invalid(
                    "timesteps",
                    "custom timesteps must be in descending order",
                ));
            }
            if custom.first().is_some_and(|&t| t >= n_train as f64) {
                return Err(Error::invalid(
                    "timesteps",
                    format!("must start below num_train_timesteps ({n_train})"),
                ));
            }
            custom.iter().map(|t| t.trunc()).collect()
        }
        _ => {
            let n = config.steps_only("DDPMScheduler", request)?;
            schedule::check_steps(n, n_train)?;
            schedule::spaced_timesteps(spacing, n_train, n, config.offset(), true)
        }
    };
    Ok(Box::new(Ddpm {
        alphas_cumprod,
        timesteps,
        prediction,
        variance,
        clip: config.clip_range(),
        threshold: config.threshold_options(),
    }))
}

impl Ddpm {
    /// `previous_timestep`: the next timestep of the schedule, or -1 after the last.
    fn previous_timestep(&self, t: f64) -> Result<f64> {
        let i = self
            .timesteps
            .iter()
            .position(|&v| v == t)
            .ok_or_else(|| ops::unknown_timestep(t))?;
        Ok(self.timesteps.get(i + 1).copied().unwrap_or(-1.0))
    }
}

impl Scheduler for Ddpm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &[]
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn order(&self) -> usize {
        1
    }

    fn set_begin_index(&mut self, _begin_index: usize) {}

    fn scale_model_input(&mut self, sample: &Tensor, _t: f64) -> Result<Tensor> {
        Ok(sample.clone())
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<SchedulerOutput> {
        let dtype = sample.dtype();
        let (model_output, sample) = (ops::f32(model_output)?, ops::f32(sample)?);
        let prev_t = self.previous_timestep(t)?;
        let a_t = alpha_at(&self.alphas_cumprod, t)?;
        let a_prev = if prev_t >= 0.0 {
            alpha_at(&self.alphas_cumprod, prev_t)?
        } else {
            1.0
        };
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let cur_alpha = a_t / a_prev;
        let cur_beta = 1.0 - cur_alpha;
        let mut x0 = match self.prediction {
            PredictionType::Epsilon => {
                div(&(&sample - scale(&model_output, b_t.sqrt())?)?, a_t.sqrt())?
            }
            PredictionType::Sample => model_output.clone(),
            PredictionType::VPrediction => {
                lincomb(&[(a_t.sqrt(), &sample), (-b_t.sqrt(), &model_output)])?
            }
        };
        if let Some((ratio, max)) = self.threshold {
            x0 = ops::threshold_sample(&x0, ratio, max)?;
        } else if let Some(range) = self.clip {
            x0 = x0.clamp(-range, range)?;
        }
        let c_x0 = a_prev.sqrt() * cur_beta / b_t;
        let c_sample = cur_alpha.sqrt() * b_prev / b_t;
        let mut prev = lincomb(&[(c_x0, &x0), (c_sample, &sample)])?;
        if t > 0.0 {
            let z = randn_tensor(
                noise,
                model_output.dims(),
                model_output.device(),
                model_output.dtype(),
            )?;
            let variance = ((1.0 - a_prev) / (1.0 - a_t) * cur_beta).max(1e-20);
            let std = match self.variance {
                Variance::Small => variance.sqrt(),
                Variance::SmallLog => (0.5 * variance.ln()).exp(),
                Variance::Large => cur_beta.sqrt(),
            };
            prev = (prev + scale(&z, std)?)?;
        }
        Ok(SchedulerOutput {
            prev_sample: prev.to_dtype(dtype)?,
            pred_original_sample: Some(x0),
        })
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor> {
        vp_add_noise(&self.alphas_cumprod, original, noise, t)
    }
}
