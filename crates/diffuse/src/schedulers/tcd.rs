//! `TCDScheduler` (Zheng et al. 2024, trajectory consistency distillation): LCM's timesteps, and a step
//! that goes to an intermediate timestep `s = ⌊(1 − γ)·t_prev⌋` and adds back noise to `t_prev`; `eta` is the
//! paper's γ (0 deterministic, 1 fully stochastic).

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig, TimestepRequest};
use super::lcm::distilled_timesteps;
use super::ops::{self, alpha_at, div, lincomb, predict_x0, scale, vp_add_noise};
use super::schedule::{self, LCM_DEFAULTS};
use super::step_index::{Missing, StepIndex};
use super::{Scheduler, SchedulerOutput};
use crate::rng::{randn_tensor, NoiseSource};
use crate::{Error, Result};

/// `step`'s default γ in diffusers, for a scheduler used without a pipeline's `eta`.
const DEFAULT_GAMMA: f64 = 0.3;

/// diffusers' `TCDScheduler`.
struct Tcd {
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
    num_inference_steps: usize,
    prediction: PredictionType,
    gamma: f32,
    index: StepIndex,
}

/// Builds a TCD scheduler from `config`, its timesteps set by `request`; `config.eta` is γ.
pub(crate) fn build(
    config: &SchedulerConfig,
    request: &TimestepRequest,
) -> Result<Box<dyn Scheduler>> {
    let n_train = config.train_timesteps()?;
    let alphas_cumprod = schedule::alphas_cumprod_for(config, LCM_DEFAULTS, n_train)?;
    let prediction = config.prediction(&[
        PredictionType::Epsilon,
        PredictionType::Sample,
        PredictionType::VPrediction,
    ])?;
    let gamma = config.eta.unwrap_or(DEFAULT_GAMMA);
    if !(0.0..=1.0).contains(&gamma) {
        return Err(Error::invalid(
            "eta",
            format!("{gamma}: TCD's eta (the paper's gamma) must be in [0, 1]"),
        ));
    }
    let timesteps = distilled_timesteps(config, request, "TCDScheduler", n_train)?;
    Ok(Box::new(Tcd {
        alphas_cumprod,
        num_inference_steps: timesteps.len(),
        timesteps,
        prediction,
        gamma: gamma as f32,
        index: StepIndex::default(),
    }))
}

impl Scheduler for Tcd {
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
        let prev_t = self.timesteps.get(i + 1).copied().unwrap_or(0.0);
        // torch: floor((1 - eta) * prev_timestep) on a float32 tensor.
        let s = ((1.0 - self.gamma) * prev_t as f32).floor() as f64;
        let a_t = alpha_at(&self.alphas_cumprod, t)?;
        let a_prev = alpha_at(&self.alphas_cumprod, prev_t)?;
        let a_s = alpha_at(&self.alphas_cumprod, s)?;
        let (b_t, b_s) = (1.0 - a_t, 1.0 - a_s);
        let x0 = predict_x0(
            self.prediction,
            &model_output,
            &sample,
            a_t.sqrt(),
            b_t.sqrt(),
        )?;
        let eps = match self.prediction {
            PredictionType::Epsilon => model_output.clone(),
            PredictionType::Sample => div(&(&sample - scale(&x0, a_t.sqrt())?)?, b_t.sqrt())?,
            PredictionType::VPrediction => {
                lincomb(&[(a_t.sqrt(), &model_output), (b_t.sqrt(), &sample)])?
            }
        };
        let noised = lincomb(&[(a_s.sqrt(), &x0), (b_s.sqrt(), &eps)])?;
        let prev = if self.gamma > 0.0 && i + 1 != self.num_inference_steps {
            let z = randn_tensor(
                noise,
                model_output.dims(),
                model_output.device(),
                noised.dtype(),
            )?;
            let ratio = a_prev / a_s;
            lincomb(&[(ratio.sqrt(), &noised), ((1.0 - ratio).sqrt(), &z)])?
        } else {
            noised
        };
        self.index.advance();
        Ok(SchedulerOutput {
            prev_sample: prev.to_dtype(dtype)?,
            pred_original_sample: Some(x0),
        })
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor> {
        vp_add_noise(&self.alphas_cumprod, original, noise, t)
    }
}
