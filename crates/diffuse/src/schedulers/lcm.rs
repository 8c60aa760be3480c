//! `LCMScheduler` (Luo et al. 2023): latent consistency models' multistep sampling.

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig, TimestepRequest};
use super::ops::{self, alpha_at, div, lincomb, scale, vp_add_noise};
use super::schedule::{self, LCM_DEFAULTS};
use super::step_index::{Missing, StepIndex};
use super::{Scheduler, SchedulerOutput};
use crate::rng::{randn_tensor, NoiseSource};
use crate::{Error, Result};

/// diffusers' `LCMScheduler`.
struct Lcm {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    num_inference_steps: usize,
    prediction: PredictionType,
    clip: Option<f32>,
    threshold: Option<(f64, f64)>,
    timestep_scaling: f32,
    index: StepIndex,
}

/// Builds an LCM scheduler from `config`, its timesteps set by `request`.
pub(crate) fn build(
    config: &SchedulerConfig,
    request: &TimestepRequest,
) -> Result<Box<dyn Scheduler>> {
    let n_train = config.train_timesteps()?;
    let alphas_cumprod = schedule::alphas_cumprod_for(config, LCM_DEFAULTS, n_train)?;
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
    let timesteps = distilled_timesteps(config, request, "LCMScheduler", n_train)?;
    Ok(Box::new(Lcm {
        alphas_cumprod,
        final_alpha_cumprod,
        num_inference_steps: timesteps.len(),
        timesteps,
        prediction,
        clip: config.clip_range(),
        threshold: config.threshold_options(),
        timestep_scaling: config.timestep_scaling.unwrap_or(10.0) as f32,
        index: StepIndex::default(),
    }))
}

/// LCM's and TCD's timesteps: `num_inference_steps` picked evenly from the `original_inference_steps`-step
/// distillation schedule, or custom descending timesteps (truncated to whole numbers).
pub(super) fn distilled_timesteps(
    config: &SchedulerConfig,
    request: &TimestepRequest,
    class: &str,
    n_train: usize,
) -> Result<Vec<f64>> {
    let original_steps = config.original_inference_steps.unwrap_or(50);
    if original_steps == 0 || original_steps > n_train {
        return Err(config.unsupported(
            "original_inference_steps",
            original_steps,
            &format!("between 1 and num_train_timesteps ({n_train})"),
        ));
    }
    let k = n_train / original_steps;
    let origin: Vec<f64> = (1..=original_steps).map(|i| (i * k) as f64 - 1.0).collect();
    Ok(match request {
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
            let n = config.steps_only(class, request)?;
            schedule::check_steps(n, n_train)?;
            if n > original_steps {
                return Err(Error::invalid(
                    "steps",
                    format!("{n} cannot exceed original_inference_steps ({original_steps})"),
                ));
            }
            let descending: Vec<f64> = origin.iter().rev().copied().collect();
            let step = descending.len() as f64 / n as f64;
            (0..n)
                .map(|i| descending[(i as f64 * step).floor() as usize])
                .collect()
        }
    })
}

impl Scheduler for Lcm {
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

    fn set_begin_index(&mut self, begin_index: usize) {
        self.index.set_begin(begin_index);
    }

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
        let i = self.index.get_or_init(&self.timesteps, t, Missing::Error)?;
        let dtype = sample.dtype();
        let (model_output, sample) = (ops::f32(model_output)?, ops::f32(sample)?);
        let prev_t = self.timesteps.get(i + 1).copied().unwrap_or(t);
        let a_t = alpha_at(&self.alphas_cumprod, t)?;
        let a_prev = if prev_t >= 0.0 {
            alpha_at(&self.alphas_cumprod, prev_t)?
        } else {
            self.final_alpha_cumprod
        };
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let scaled = t as f32 * self.timestep_scaling;
        let c_skip = 0.25 / (scaled * scaled + 0.25);
        let c_out = scaled / (scaled * scaled + 0.25).sqrt();
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
        let denoised = lincomb(&[(c_out, &x0), (c_skip, &sample)])?;
        let prev = if i + 1 != self.num_inference_steps {
            let z = randn_tensor(
                noise,
                model_output.dims(),
                model_output.device(),
                denoised.dtype(),
            )?;
            lincomb(&[(a_prev.sqrt(), &denoised), (b_prev.sqrt(), &z)])?
        } else {
            denoised.clone()
        };
        self.index.advance();
        Ok(SchedulerOutput {
            prev_sample: prev.to_dtype(dtype)?,
            pred_original_sample: Some(denoised),
        })
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor> {
        vp_add_noise(&self.alphas_cumprod, original, noise, t)
    }
}
