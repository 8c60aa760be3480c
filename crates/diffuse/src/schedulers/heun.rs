//! `HeunDiscreteScheduler`: Karras et al.'s second-order Heun sampler (two model calls per step).

use candle_core::Tensor;

use super::config::{
    PredictionType, SchedulerConfig, SigmaSchedule, TimestepRequest, TimestepSpacing,
};
use super::k_common::{k_add_noise, k_init_noise_sigma, k_predict_x0, k_scale_input, k_schedule};
use super::ops::{self, div, scale};
use super::schedule::{self, K_DEFAULTS};
use super::step_index::{Missing, StepIndex};
use super::{Scheduler, SchedulerOutput};
use crate::rng::NoiseSource;
use crate::{Error, Result};

/// The first-order half of a Heun step, kept for the second model call.
struct FirstHalf {
    derivative: Tensor,
    dt: f32,
    sample: Tensor,
}

/// diffusers' `HeunDiscreteScheduler`.
struct Heun {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    prediction: PredictionType,
    clip: Option<f32>,
    first: Option<FirstHalf>,
    index: StepIndex,
}

/// Builds a Heun scheduler from `config`, its timesteps set by `request`.
pub(crate) fn build(
    config: &SchedulerConfig,
    request: &TimestepRequest,
) -> Result<Box<dyn Scheduler>> {
    let n_train = config.train_timesteps()?;
    let alphas_cumprod = schedule::alphas_cumprod_for(config, K_DEFAULTS, n_train)?;
    let prediction = config.prediction(&[
        PredictionType::Epsilon,
        PredictionType::VPrediction,
        PredictionType::Sample,
    ])?;
    let spacing = config.spacing(TimestepSpacing::Linspace)?;
    let timesteps = match request {
        TimestepRequest::Timesteps(custom) => {
            if config.sigma_schedule()? != SigmaSchedule::Interpolated {
                return Err(Error::invalid(
                    "timesteps",
                    "custom timesteps cannot be used with Karras, exponential or beta sigmas",
                ));
            }
            schedule::as_f32(custom)
        }
        _ => {
            let n = config.steps_only("HeunDiscreteScheduler", request)?;
            schedule::check_steps(n, n_train)?;
            schedule::as_f32(&schedule::spaced_timesteps(
                spacing,
                n_train,
                n,
                config.offset(),
                false,
            ))
        }
    };
    let ks = k_schedule(config, &alphas_cumprod, timesteps, false)?;
    let base = schedule::as_f32(&ks.sigmas);
    let mut sigmas = vec![base[0]];
    for &s in &base[1..] {
        sigmas.extend([s, s]);
    }
    sigmas.push(0.0);
    let t = schedule::as_f32(&ks.timesteps);
    let mut timesteps = vec![t[0]];
    for &v in &t[1..] {
        timesteps.extend([v, v]);
    }
    Ok(Box::new(Heun {
        init_noise_sigma: k_init_noise_sigma(&sigmas, spacing),
        timesteps,
        sigmas,
        prediction,
        clip: config.clip_range(),
        first: None,
        index: StepIndex::default(),
    }))
}

impl Scheduler for Heun {
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
        2
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
        _noise: &mut dyn NoiseSource,
    ) -> Result<SchedulerOutput> {
        let i = self.index.get_or_init(&self.timesteps, t, Missing::Error)?;
        let dtype = sample.dtype();
        let (model_output, sample) = (ops::f32(model_output)?, ops::f32(sample)?);
        let (sigma, sigma_next) = match self.first {
            None => (self.sigmas[i] as f32, self.sigmas[i + 1] as f32),
            Some(_) => (self.sigmas[i - 1] as f32, self.sigmas[i] as f32),
        };
        let sigma_input = if self.first.is_none() {
            sigma
        } else {
            sigma_next
        };
        let mut x0 = k_predict_x0(self.prediction, &model_output, &sample, sigma_input)?;
        if let Some(range) = self.clip {
            x0 = x0.clamp(-range, range)?;
        }
        let prev = match self.first.take() {
            None => {
                let derivative = div(&(&sample - &x0)?, sigma)?;
                let dt = sigma_next - sigma;
                let prev = (&sample + scale(&derivative, dt)?)?;
                self.first = Some(FirstHalf {
                    derivative,
                    dt,
                    sample,
                });
                prev
            }
            Some(first) => {
                let derivative = div(&(&sample - &x0)?, sigma_next)?;
                let derivative = div(&(first.derivative + derivative)?, 2.0)?;
                (first.sample + scale(&derivative, first.dt)?)?
            }
        };
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
