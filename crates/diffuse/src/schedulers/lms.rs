//! `LMSDiscreteScheduler`: k-diffusion's linear multistep sampler (order 4).

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig, TimestepRequest, TimestepSpacing};
use super::k_common::{k_add_noise, k_init_noise_sigma, k_predict_x0, k_scale_input, k_schedule};
use super::ops::{self, div, scale};
use super::schedule::{self, LINEAR_PLAIN};
use super::step_index::{Missing, StepIndex};
use super::{Scheduler, SchedulerOutput};
use crate::rng::NoiseSource;
use crate::Result;

/// The highest order diffusers' pipelines use (`step`'s default).
const MAX_ORDER: usize = 4;

/// diffusers' `LMSDiscreteScheduler`.
struct Lms {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    prediction: PredictionType,
    derivatives: Vec<Tensor>,
    index: StepIndex,
}

/// Builds an LMS scheduler from `config`, its timesteps set by `request`.
pub(crate) fn build(
    config: &SchedulerConfig,
    request: &TimestepRequest,
) -> Result<Box<dyn Scheduler>> {
    let n = config.steps_only("LMSDiscreteScheduler", request)?;
    let n_train = config.train_timesteps()?;
    schedule::check_steps(n, n_train)?;
    let alphas_cumprod = schedule::alphas_cumprod_for(config, LINEAR_PLAIN, n_train)?;
    let prediction = config.prediction(&[
        PredictionType::Epsilon,
        PredictionType::VPrediction,
        PredictionType::Sample,
    ])?;
    let spacing = config.spacing(TimestepSpacing::Linspace)?;
    let timesteps = schedule::as_f32(&schedule::spaced_timesteps(
        spacing,
        n_train,
        n,
        config.offset(),
        false,
    ));
    let ks = k_schedule(config, &alphas_cumprod, timesteps, false)?;
    let mut sigmas = ks.sigmas;
    sigmas.push(0.0);
    let sigmas = schedule::as_f32(&sigmas);
    Ok(Box::new(Lms {
        timesteps: schedule::as_f32(&ks.timesteps),
        init_noise_sigma: k_init_noise_sigma(&sigmas, spacing),
        sigmas,
        prediction,
        derivatives: Vec::new(),
        index: StepIndex::default(),
    }))
}

impl Lms {
    /// `get_lms_coefficient`: the integral from `sigmas[i]` to `sigmas[i + 1]` of the Lagrange basis
    /// polynomial `current` over the last `order` sigmas (exact: 4-point Gauss-Legendre, degree <= 3).
    fn coefficient(&self, order: usize, i: usize, current: usize) -> f64 {
        let s = |k: usize| self.sigmas[i - k];
        let basis = |tau: f64| -> f64 {
            (0..order)
                .filter(|&k| k != current)
                .map(|k| (tau - s(k)) / (s(current) - s(k)))
                .product()
        };
        let (a, b) = (self.sigmas[i], self.sigmas[i + 1]);
        const NODES: [(f64, f64); 4] = [
            (-0.861_136_311_594_052_6, 0.347_854_845_137_453_85),
            (-0.339_981_043_584_856_26, 0.652_145_154_862_546_1),
            (0.339_981_043_584_856_26, 0.652_145_154_862_546_1),
            (0.861_136_311_594_052_6, 0.347_854_845_137_453_85),
        ];
        let (mid, half) = ((a + b) / 2.0, (b - a) / 2.0);
        NODES
            .iter()
            .map(|(x, w)| w * basis(mid + half * x))
            .sum::<f64>()
            * half
    }
}

impl Scheduler for Lms {
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
        let dtype = sample.dtype();
        let (model_output, sample) = (ops::f32(model_output)?, ops::f32(sample)?);
        let sigma = self.sigmas[i] as f32;
        let x0 = k_predict_x0(self.prediction, &model_output, &sample, sigma)?;
        self.derivatives.push(div(&(&sample - &x0)?, sigma)?);
        if self.derivatives.len() > MAX_ORDER {
            self.derivatives.remove(0);
        }
        let order = (i + 1).min(MAX_ORDER);
        let mut sum: Option<Tensor> = None;
        for (k, derivative) in (0..order).zip(self.derivatives.iter().rev()) {
            let term = scale(derivative, self.coefficient(order, i, k) as f32)?;
            sum = Some(match sum {
                Some(s) => (s + term)?,
                None => term,
            });
        }
        let prev = match sum {
            Some(s) => (&sample + s)?,
            None => sample.clone(),
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
