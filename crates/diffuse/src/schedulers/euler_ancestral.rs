//! `EulerAncestralDiscreteScheduler`: Euler steps with fresh noise each step ("Euler a").

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig, TimestepRequest, TimestepSpacing};
use super::k_common::{k_add_noise, k_init_noise_sigma, k_predict_x0, k_scale_input};
use super::ops::{self, div, scale};
use super::schedule::{self, LINEAR_DEFAULTS};
use super::step_index::{Missing, StepIndex};
use super::{Scheduler, SchedulerOutput};
use crate::rng::{randn_tensor, NoiseSource};
use crate::Result;

/// diffusers' `EulerAncestralDiscreteScheduler`.
struct EulerAncestral {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    prediction: PredictionType,
    index: StepIndex,
}

/// Builds an Euler Ancestral scheduler from `config`, its timesteps set by `request`.
pub(crate) fn build(
    config: &SchedulerConfig,
    request: &TimestepRequest,
) -> Result<Box<dyn Scheduler>> {
    let n = config.steps_only("EulerAncestralDiscreteScheduler", request)?;
    let n_train = config.train_timesteps()?;
    schedule::check_steps(n, n_train)?;
    let mut alphas_cumprod = schedule::alphas_cumprod_for(config, LINEAR_DEFAULTS, n_train)?;
    if config.rescale_betas_zero_snr == Some(true) {
        alphas_cumprod[n_train - 1] = 2f32.powi(-24);
    }
    let prediction = config.prediction(&[PredictionType::Epsilon, PredictionType::VPrediction])?;
    let spacing = config.spacing(TimestepSpacing::Linspace)?;
    let timesteps = schedule::as_f32(&schedule::spaced_timesteps(
        spacing,
        n_train,
        n,
        config.offset(),
        false,
    ));
    let train: Vec<f64> = schedule::train_sigmas(&alphas_cumprod)
        .iter()
        .map(|&s| s as f64)
        .collect();
    let mut sigmas: Vec<f64> = timesteps
        .iter()
        .map(|&t| schedule::np_interp(t, &train))
        .collect();
    sigmas.push(0.0);
    let sigmas = schedule::as_f32(&sigmas);
    Ok(Box::new(EulerAncestral {
        init_noise_sigma: k_init_noise_sigma(&sigmas, spacing),
        timesteps,
        sigmas,
        prediction,
        index: StepIndex::default(),
    }))
}

impl Scheduler for EulerAncestral {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn order(&self) -> usize {
        1
    }

    fn set_begin_index(&mut self, begin_index: usize) {
        self.index.set_begin(begin_index);
    }

    fn scale_model_input(&mut self, sample: &Tensor, t: f64) -> Result<Tensor> {
        let i = self.index.get_or_init(&self.timesteps, t, Missing::Error)?;
        k_scale_input(sample, self.sigmas[i] as f32)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<SchedulerOutput> {
        let i = self.index.get_or_init(&self.timesteps, t, Missing::Error)?;
        let dtype = model_output.dtype();
        let (model_output, sample) = (ops::f32(model_output)?, ops::f32(sample)?);
        let sigma = self.sigmas[i] as f32;
        let x0 = k_predict_x0(self.prediction, &model_output, &sample, sigma)?;
        let sigma_to = self.sigmas[i + 1] as f32;
        let sigma_up =
            (sigma_to * sigma_to * (sigma * sigma - sigma_to * sigma_to) / (sigma * sigma)).sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
        let derivative = div(&(&sample - &x0)?, sigma)?;
        let prev = (&sample + scale(&derivative, sigma_down - sigma)?)?;
        let z = randn_tensor(
            noise,
            model_output.dims(),
            model_output.device(),
            model_output.dtype(),
        )?;
        let prev = (prev + scale(&z, sigma_up)?)?;
        self.index.advance();
        Ok(SchedulerOutput {
            prev_sample: prev.to_dtype(dtype)?,
            pred_original_sample: Some(x0),
        })
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor> {
        k_add_noise(
            &self.sigmas,
            &self.index,
            &self.timesteps,
            original,
            noise,
            t,
        )
    }
}
