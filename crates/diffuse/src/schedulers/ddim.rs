//! `DDIMScheduler` (Song et al. 2020), with eta for stochastic steps.

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig, TimestepRequest, TimestepSpacing};
use super::ops::{self, alpha_at, div, lincomb, scale, vp_add_noise};
use super::schedule::{self, LINEAR_DEFAULTS};
use super::{Scheduler, SchedulerOutput};
use crate::rng::{randn_tensor, NoiseSource};
use crate::Result;

/// diffusers' `DDIMScheduler`.
struct Ddim {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    n_train: usize,
    num_inference_steps: usize,
    timesteps: Vec<f64>,
    prediction: PredictionType,
    clip: Option<f32>,
    threshold: Option<(f64, f64)>,
    eta: f32,
}

/// Builds a DDIM scheduler from `config`, its timesteps set by `request`.
pub(crate) fn build(
    config: &SchedulerConfig,
    request: &TimestepRequest,
) -> Result<Box<dyn Scheduler>> {
    let n = config.steps_only("DDIMScheduler", request)?;
    let n_train = config.train_timesteps()?;
    let alphas_cumprod = schedule::alphas_cumprod_for(config, LINEAR_DEFAULTS, n_train)?;
    let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) {
        1.0
    } else {
        alphas_cumprod[0]
    };
    let prediction = config.prediction(&[
        PredictionType::Epsilon,
        PredictionType::Sample,
        PredictionType::VPrediction,
    ])?;
    let spacing = config.spacing(TimestepSpacing::Leading)?;
    schedule::check_steps(n, n_train)?;
    let timesteps = schedule::spaced_timesteps(spacing, n_train, n, config.offset(), true);
    Ok(Box::new(Ddim {
        alphas_cumprod,
        final_alpha_cumprod,
        n_train,
        num_inference_steps: n,
        timesteps,
        prediction,
        clip: config.clip_range(),
        threshold: config.threshold_options(),
        eta: config.eta.unwrap_or(0.0) as f32,
    }))
}

impl Scheduler for Ddim {
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
        let prev_t = t - (self.n_train / self.num_inference_steps) as f64;
        let a_t = alpha_at(&self.alphas_cumprod, t)?;
        let a_prev = if prev_t >= 0.0 {
            alpha_at(&self.alphas_cumprod, prev_t)?
        } else {
            self.final_alpha_cumprod
        };
        let b_t = 1.0 - a_t;
        let (mut x0, eps) = match self.prediction {
            PredictionType::Epsilon => (
                div(&(&sample - scale(&model_output, b_t.sqrt())?)?, a_t.sqrt())?,
                model_output.clone(),
            ),
            PredictionType::Sample => (
                model_output.clone(),
                div(&(&sample - scale(&model_output, a_t.sqrt())?)?, b_t.sqrt())?,
            ),
            PredictionType::VPrediction => (
                lincomb(&[(a_t.sqrt(), &sample), (-b_t.sqrt(), &model_output)])?,
                lincomb(&[(a_t.sqrt(), &model_output), (b_t.sqrt(), &sample)])?,
            ),
        };
        if let Some((ratio, max)) = self.threshold {
            x0 = ops::threshold_sample(&x0, ratio, max)?;
        } else if let Some(range) = self.clip {
            x0 = x0.clamp(-range, range)?;
        }
        let b_prev = 1.0 - a_prev;
        let variance = b_prev / b_t * (1.0 - a_t / a_prev);
        let std_dev = self.eta * variance.sqrt();
        let direction = scale(&eps, (1.0 - a_prev - std_dev * std_dev).sqrt())?;
        let mut prev = (scale(&x0, a_prev.sqrt())? + direction)?;
        if self.eta > 0.0 {
            let z = randn_tensor(
                noise,
                model_output.dims(),
                model_output.device(),
                model_output.dtype(),
            )?;
            prev = (prev + scale(&z, std_dev)?)?;
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
