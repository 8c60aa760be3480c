//! `KDPM2DiscreteScheduler`: k-diffusion's DPM-Solver-2 sampler ("DPM2"), two model calls per step.

use candle_core::Tensor;

use super::config::{
    PredictionType, SchedulerConfig, SigmaSchedule, TimestepRequest, TimestepSpacing,
};
use super::k_common::{
    interleave_sigmas, k_add_noise, k_init_noise_sigma, k_predict_x0, k_scale_input, k_schedule,
    log_midpoint,
};
use super::ops::{self, div, scale};
use super::schedule::{self, K_DEFAULTS};
use super::step_index::{Missing, StepIndex};
use super::{Scheduler, SchedulerOutput};
use crate::rng::NoiseSource;
use crate::Result;

/// diffusers' `KDPM2DiscreteScheduler`.
struct Kdpm2 {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    sigmas_interpol: Vec<f64>,
    init_noise_sigma: f64,
    prediction: PredictionType,
    /// The sample of the first half-step, while the second is pending.
    sample: Option<Tensor>,
    index: StepIndex,
}

/// Builds a KDPM2 scheduler from `config`, its timesteps set by `request`.
pub(crate) fn build(
    config: &SchedulerConfig,
    request: &TimestepRequest,
) -> Result<Box<dyn Scheduler>> {
    let n = config.steps_only("KDPM2DiscreteScheduler", request)?;
    let n_train = config.train_timesteps()?;
    schedule::check_steps(n, n_train)?;
    let alphas_cumprod = schedule::alphas_cumprod_for(config, K_DEFAULTS, n_train)?;
    let prediction = config.prediction(&[PredictionType::Epsilon, PredictionType::VPrediction])?;
    let spacing = config.spacing(TimestepSpacing::Linspace)?;
    let timesteps = schedule::as_f32(&schedule::spaced_timesteps(
        spacing,
        n_train,
        n,
        config.offset(),
        false,
    ));
    let ks = k_schedule(config, &alphas_cumprod, timesteps, true)?;
    // Timesteps stay float64 after a sigma conversion, float32 otherwise; the interpolated ones follow.
    let keep_f64 = config.sigma_schedule()? != SigmaSchedule::Interpolated;
    let cast = |t: f64| if keep_f64 { t } else { t as f32 as f64 };
    let mut sigmas = ks.sigmas.clone();
    sigmas.push(0.0);
    let sigmas = schedule::as_f32(&sigmas);
    let count = sigmas.len();
    let interpol: Vec<f64> = (0..count)
        .map(|j| log_midpoint(sigmas[j] as f32, sigmas[(j + count - 1) % count] as f32) as f64)
        .collect();
    let t_interpol: Vec<f64> = interpol
        .iter()
        .map(|&s| cast(schedule::sigma_to_t_f32(s as f32, &ks.log_sigmas)))
        .collect();
    let t: Vec<f64> = ks.timesteps.iter().map(|&v| cast(v)).collect();
    let mut timesteps = vec![t[0]];
    for j in 1..t.len() {
        timesteps.extend([t_interpol[j], t[j]]);
    }
    let sigmas_full = interleave_sigmas(&sigmas);
    Ok(Box::new(Kdpm2 {
        init_noise_sigma: k_init_noise_sigma(&sigmas_full, spacing),
        timesteps,
        sigmas: sigmas_full,
        sigmas_interpol: interleave_sigmas(&interpol),
        prediction,
        sample: None,
        index: StepIndex::default(),
    }))
}

impl Scheduler for Kdpm2 {
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
        let sigma = match self.sample {
            None => self.sigmas[i],
            Some(_) => self.sigmas_interpol[i],
        };
        k_scale_input(sample, sigma as f32)
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
        let first = self.sample.is_none();
        let (sigma, sigma_interpol, sigma_next) = if first {
            (
                self.sigmas[i],
                self.sigmas_interpol[i + 1],
                self.sigmas[i + 1],
            )
        } else {
            (self.sigmas[i - 1], self.sigmas_interpol[i], self.sigmas[i])
        };
        let (sigma, sigma_interpol, sigma_next) =
            (sigma as f32, sigma_interpol as f32, sigma_next as f32);
        let sigma_input = if first { sigma } else { sigma_interpol };
        let x0 = k_predict_x0(self.prediction, &model_output, &sample, sigma_input)?;
        let prev = match self.sample.take() {
            None => {
                let derivative = div(&(&sample - &x0)?, sigma)?;
                let prev = (&sample + scale(&derivative, sigma_interpol - sigma)?)?;
                self.sample = Some(sample);
                prev
            }
            Some(stored) => {
                let derivative = div(&(&sample - &x0)?, sigma_interpol)?;
                (stored + scale(&derivative, sigma_next - sigma)?)?
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
