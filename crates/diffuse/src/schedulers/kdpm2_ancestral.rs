//! `KDPM2AncestralDiscreteScheduler`: DPM2 with ancestral noise ("DPM2 a"), two model calls per step.

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
use crate::rng::{randn_tensor, NoiseSource};
use crate::Result;

/// diffusers' `KDPM2AncestralDiscreteScheduler`.
struct Kdpm2Ancestral {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    sigmas_interpol: Vec<f64>,
    sigmas_up: Vec<f64>,
    sigmas_down: Vec<f64>,
    init_noise_sigma: f64,
    prediction: PredictionType,
    /// The sample of the first half-step, while the second is pending.
    sample: Option<Tensor>,
    index: StepIndex,
}

/// Builds a KDPM2 Ancestral scheduler from `config`, its timesteps set by `request`.
pub(crate) fn build(
    config: &SchedulerConfig,
    request: &TimestepRequest,
) -> Result<Box<dyn Scheduler>> {
    let n = config.steps_only("KDPM2AncestralDiscreteScheduler", request)?;
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
    let keep_f64 = config.sigma_schedule()? != SigmaSchedule::Interpolated;
    let cast = |t: f64| if keep_f64 { t } else { t as f32 as f64 };
    let mut base = ks.sigmas.clone();
    base.push(0.0);
    let s: Vec<f32> = base.iter().map(|&v| v as f32).collect();
    let count = s.len();
    let next = |j: usize| if j + 1 < count { s[j + 1] } else { 0.0 };
    let up: Vec<f32> = (0..count)
        .map(|j| (next(j) * next(j) * (s[j] * s[j] - next(j) * next(j)) / (s[j] * s[j])).sqrt())
        .collect();
    let down: Vec<f32> = (0..count)
        .map(|j| {
            if j + 1 == count {
                0.0
            } else {
                (next(j) * next(j) - up[j] * up[j]).sqrt()
            }
        })
        .collect();
    let interpol: Vec<f32> = (0..count)
        .map(|j| {
            if j + 2 >= count {
                0.0
            } else {
                log_midpoint(s[j], down[j])
            }
        })
        .collect();
    let t_interpol: Vec<f64> = interpol
        .iter()
        .map(|&v| cast(schedule::sigma_to_t_f32(v, &ks.log_sigmas)))
        .collect();
    let t: Vec<f64> = ks.timesteps.iter().map(|&v| cast(v)).collect();
    let mut timesteps = vec![t[0]];
    for j in 1..t.len() {
        timesteps.extend([t_interpol[j - 1], t[j]]);
    }
    let widen = |v: &[f32]| -> Vec<f64> {
        interleave_sigmas(&v.iter().map(|&x| x as f64).collect::<Vec<_>>())
    };
    let sigmas = widen(&s);
    Ok(Box::new(Kdpm2Ancestral {
        init_noise_sigma: k_init_noise_sigma(&sigmas, spacing),
        timesteps,
        sigmas,
        sigmas_interpol: widen(&interpol),
        sigmas_up: widen(&up),
        sigmas_down: widen(&down),
        prediction,
        sample: None,
        index: StepIndex::default(),
    }))
}

impl Scheduler for Kdpm2Ancestral {
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
            Some(_) => self.sigmas_interpol[i - 1],
        };
        k_scale_input(sample, sigma as f32)
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
        let first = self.sample.is_none();
        let j = if first { i } else { i - 1 };
        let sigma = self.sigmas[j] as f32;
        let sigma_interpol = self.sigmas_interpol[j] as f32;
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
                let dt = self.sigmas_down[i - 1] as f32 - sigma;
                let prev = (stored + scale(&derivative, dt)?)?;
                let z = randn_tensor(
                    noise,
                    model_output.dims(),
                    model_output.device(),
                    model_output.dtype(),
                )?;
                (prev + scale(&z, self.sigmas_up[i - 1] as f32)?)?
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
