//! `EulerDiscreteScheduler` (Karras et al. 2022, Algorithm 2, without churn).

use candle_core::Tensor;

use super::config::{
    PredictionType, SchedulerConfig, SigmaSchedule, TimestepRequest, TimestepSpacing,
};
use super::k_common::{k_add_noise, k_init_noise_sigma, k_predict_x0, k_scale_input};
use super::ops::{self, div, scale};
use super::schedule::{self, LINEAR_DEFAULTS};
use super::step_index::{Missing, StepIndex};
use super::{Scheduler, SchedulerOutput};
use crate::rng::NoiseSource;
use crate::{Error, Result};

/// diffusers' `EulerDiscreteScheduler`.
struct Euler {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    prediction: PredictionType,
    index: StepIndex,
}

/// Builds an Euler scheduler from `config`, its timesteps set by `request`.
pub(crate) fn build(
    config: &SchedulerConfig,
    request: &TimestepRequest,
) -> Result<Box<dyn Scheduler>> {
    let n_train = config.train_timesteps()?;
    let mut alphas_cumprod = schedule::alphas_cumprod_for(config, LINEAR_DEFAULTS, n_train)?;
    if config.rescale_betas_zero_snr == Some(true) {
        alphas_cumprod[n_train - 1] = 2f32.powi(-24);
    }
    let prediction = config.prediction(&[
        PredictionType::Epsilon,
        PredictionType::VPrediction,
        PredictionType::Sample,
    ])?;
    let spacing = config.spacing(TimestepSpacing::Linspace)?;
    let kind = config.sigma_schedule()?;
    let log_linear = match config.interpolation_type.as_deref() {
        None | Some("linear") => false,
        Some("log_linear") => true,
        Some(other) => {
            return Err(config.unsupported("interpolation_type", other, "linear, log_linear"))
        }
    };
    let continuous = match config.timestep_type.as_deref() {
        None | Some("discrete") => false,
        Some("continuous") => prediction == PredictionType::VPrediction,
        Some(other) => {
            return Err(config.unsupported("timestep_type", other, "discrete, continuous"))
        }
    };
    let final_min = config.final_sigma_is_min()?;
    let train_sigmas = schedule::train_sigmas(&alphas_cumprod);
    let log_sigmas = schedule::log_sigmas(&train_sigmas);
    let train_f64: Vec<f64> = train_sigmas.iter().map(|&s| s as f64).collect();

    let (mut timesteps, sigmas) = match request {
        TimestepRequest::Sigmas(custom) => {
            if custom.len() < 2 {
                return Err(Error::invalid("sigmas", "need at least two sigmas"));
            }
            let sigmas = schedule::as_f32(custom);
            let timesteps = sigmas[..sigmas.len() - 1]
                .iter()
                .map(|&s| schedule::sigma_to_t(s, &log_sigmas))
                .collect();
            (timesteps, sigmas)
        }
        _ => {
            let timesteps = match request {
                TimestepRequest::Timesteps(custom) => {
                    if kind != SigmaSchedule::Interpolated || continuous {
                        return Err(Error::invalid(
                            "timesteps",
                            "custom timesteps cannot be used with Karras, exponential or beta \
                             sigmas, nor with continuous v-prediction timesteps",
                        ));
                    }
                    schedule::as_f32(custom)
                }
                _ => {
                    let n = config.steps_only("EulerDiscreteScheduler", request)?;
                    schedule::check_steps(n, n_train)?;
                    schedule::spaced_timesteps(spacing, n_train, n, config.offset(), false)
                }
            };
            let n = timesteps.len();
            let mut sigmas: Vec<f64> = if log_linear {
                let lo = train_sigmas[n_train - 1].ln() as f64;
                let hi = train_sigmas[0].ln() as f64;
                schedule::torch_linspace_f32(lo, hi, n + 1)
                    .into_iter()
                    .map(|l| l.exp() as f64)
                    .collect()
            } else {
                timesteps
                    .iter()
                    .map(|&t| schedule::np_interp(t, &train_f64))
                    .collect()
            };
            let mut timesteps = timesteps;
            if kind != SigmaSchedule::Interpolated {
                let (lo, hi) = schedule::sigma_bounds(config, true, &sigmas);
                sigmas = schedule::converted_sigmas(kind, lo, hi, n);
                timesteps = sigmas
                    .iter()
                    .map(|&s| schedule::sigma_to_t(s, &log_sigmas))
                    .collect();
            }
            sigmas.push(if final_min { train_f64[0] } else { 0.0 });
            (timesteps, schedule::as_f32(&sigmas))
        }
    };
    timesteps = if continuous {
        sigmas[..sigmas.len() - 1]
            .iter()
            .map(|&s| (0.25 * (s as f32).ln()) as f64)
            .collect()
    } else {
        schedule::as_f32(&timesteps)
    };
    let init_noise_sigma = k_init_noise_sigma(&sigmas, spacing);
    Ok(Box::new(Euler {
        timesteps,
        sigmas,
        init_noise_sigma,
        prediction,
        index: StepIndex::default(),
    }))
}

impl Scheduler for Euler {
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
        _noise: &mut dyn NoiseSource,
    ) -> Result<SchedulerOutput> {
        let i = self.index.get_or_init(&self.timesteps, t, Missing::Error)?;
        let dtype = model_output.dtype();
        let (model_output, sample) = (ops::f32(model_output)?, ops::f32(sample)?);
        let sigma = self.sigmas[i] as f32;
        let x0 = k_predict_x0(self.prediction, &model_output, &sample, sigma)?;
        let derivative = div(&(&sample - &x0)?, sigma)?;
        let dt = self.sigmas[i + 1] as f32 - sigma;
        let prev = (&sample + scale(&derivative, dt)?)?;
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
