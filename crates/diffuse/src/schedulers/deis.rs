//! `DEISMultistepScheduler` (Zhang & Chen 2022): log-rho multistep DEIS, orders 1-3.

use candle_core::Tensor;

use super::config::{
    PredictionType, SchedulerConfig, SigmaSchedule, TimestepRequest, TimestepSpacing,
};
use super::dpm_common::{self, alpha_sigma, lambda};
use super::ops::{self, div, lincomb, scale};
use super::schedule::{self, LINEAR_PLAIN};
use super::step_index::{Missing, StepIndex};
use super::{Scheduler, SchedulerOutput};
use crate::rng::NoiseSource;
use crate::{Error, Result};

/// diffusers' `DEISMultistepScheduler`.
struct Deis {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    prediction: PredictionType,
    threshold: Option<(f64, f64)>,
    solver_order: usize,
    lower_order_final: bool,
    model_outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
    index: StepIndex,
}

/// Builds a DEIS scheduler from `config`, its timesteps set by `request`.
pub(crate) fn build(
    config: &SchedulerConfig,
    request: &TimestepRequest,
) -> Result<Box<dyn Scheduler>> {
    let n = config.steps_only("DEISMultistepScheduler", request)?;
    let n_train = config.train_timesteps()?;
    schedule::check_steps(n, n_train)?;
    let alphas_cumprod = schedule::alphas_cumprod_for(config, LINEAR_PLAIN, n_train)?;
    match config.algorithm_type.as_deref() {
        None | Some("deis") | Some("dpmsolver") | Some("dpmsolver++") => {}
        Some(other) => return Err(config.unsupported("algorithm_type", other, "deis")),
    }
    match config.solver_type.as_deref() {
        None | Some("logrho") | Some("midpoint") | Some("heun") | Some("bh1") | Some("bh2") => {}
        Some(other) => return Err(config.unsupported("solver_type", other, "logrho")),
    }
    let solver_order = config.solver_order.unwrap_or(2);
    if !(1..=3).contains(&solver_order) {
        return Err(config.unsupported("solver_order", solver_order, "1, 2 or 3"));
    }
    config.reject_flag("use_flow_sigmas", config.use_flow_sigmas)?;
    config.reject_flag("use_dynamic_shifting", config.use_dynamic_shifting)?;
    let prediction = config.prediction(&[
        PredictionType::Epsilon,
        PredictionType::Sample,
        PredictionType::VPrediction,
    ])?;
    let spacing = config.spacing(TimestepSpacing::Linspace)?;
    let kind = config.sigma_schedule()?;
    let timesteps = dpm_common::spacing_n_plus_one(spacing, n_train, n_train, n, config.offset());
    let train_sigmas = schedule::train_sigmas(&alphas_cumprod);
    let log_sigmas = schedule::log_sigmas(&train_sigmas);
    let train_f64: Vec<f64> = train_sigmas.iter().map(|&s| s as f64).collect();
    let (timesteps, mut sigmas, last) = if kind != SigmaSchedule::Interpolated {
        let descending: Vec<f64> = train_f64.iter().rev().copied().collect();
        let (lo, hi) = schedule::sigma_bounds(config, false, &descending);
        let sigmas = schedule::converted_sigmas(kind, lo, hi, n);
        let mut t: Vec<f64> = sigmas
            .iter()
            .map(|&s| schedule::sigma_to_t(s, &log_sigmas))
            .collect();
        if kind == SigmaSchedule::Karras {
            t = t.into_iter().map(schedule::np_round).collect();
        }
        let last = sigmas[sigmas.len() - 1];
        (t, sigmas, last)
    } else {
        let sigmas = timesteps
            .iter()
            .map(|&t| schedule::np_interp(t, &train_f64))
            .collect();
        (timesteps, sigmas, train_f64[0])
    };
    sigmas.push(last);
    Ok(Box::new(Deis {
        timesteps: dpm_common::truncate(timesteps),
        sigmas: schedule::as_f32(&sigmas),
        prediction,
        threshold: config.threshold_options(),
        solver_order,
        lower_order_final: config.lower_order_final.unwrap_or(true),
        model_outputs: vec![None; solver_order],
        lower_order_nums: 0,
        index: StepIndex::default(),
    }))
}

/// The second-order log-rho integral `ind_fn(t, b, c)` (float32, as numpy evaluates it on float32 tensors).
fn ind2(t: f32, b: f32, c: f32) -> f32 {
    t * (-c.ln() + t.ln() - 1.0) / (b.ln() - c.ln())
}

/// The third-order log-rho integral `ind_fn(t, b, c, d)`.
fn ind3(t: f32, b: f32, c: f32, d: f32) -> f32 {
    let (lt, lb, lc, ld) = (t.ln(), b.ln(), c.ln(), d.ln());
    let numerator = t * (lc * (ld - lt + 1.0) - ld * lt + ld + lt * lt - 2.0 * lt + 2.0);
    numerator / ((lb - lc) * (lb - ld))
}

impl Deis {
    /// The `k`-th most recent epsilon.
    fn history(&self, k: usize) -> Result<&Tensor> {
        self.model_outputs[self.solver_order - k]
            .as_ref()
            .ok_or_else(|| Error::invalid("step", "DEIS history is missing an output"))
    }

    /// `alpha_t * (sample / alpha_s0 + sum coef_k m_k)`.
    fn combine(
        &self,
        alpha_t: f32,
        alpha_0: f32,
        sample: &Tensor,
        terms: &[(f32, &Tensor)],
    ) -> Result<Tensor> {
        let mut acc = div(sample, alpha_0)?;
        for (c, m) in terms {
            acc = (acc + scale(m, *c)?)?;
        }
        scale(&acc, alpha_t)
    }

    /// One DEIS update of `order` from `sigmas[i]` to `sigmas[i + 1]`.
    fn update(&self, i: usize, sample: &Tensor, order: usize) -> Result<Tensor> {
        let s = |k: usize| self.sigmas[k] as f32;
        let (alpha_t, sigma_t) = alpha_sigma(s(i + 1));
        let (alpha_0, sigma_0) = alpha_sigma(s(i));
        let m0 = self.history(1)?;
        match order {
            1 => {
                let h = lambda(s(i + 1)) - lambda(s(i));
                lincomb(&[
                    (alpha_t / alpha_0, sample),
                    (-(sigma_t * (h.exp() - 1.0)), m0),
                ])
            }
            2 => {
                let (alpha_1, sigma_1) = alpha_sigma(s(i - 1));
                let (rho_t, rho_0, rho_1) =
                    (sigma_t / alpha_t, sigma_0 / alpha_0, sigma_1 / alpha_1);
                let coef1 = ind2(rho_t, rho_0, rho_1) - ind2(rho_0, rho_0, rho_1);
                let coef2 = ind2(rho_t, rho_1, rho_0) - ind2(rho_0, rho_1, rho_0);
                self.combine(
                    alpha_t,
                    alpha_0,
                    sample,
                    &[(coef1, m0), (coef2, self.history(2)?)],
                )
            }
            _ => {
                let (alpha_1, sigma_1) = alpha_sigma(s(i - 1));
                let (alpha_2, sigma_2) = alpha_sigma(s(i - 2));
                let (rho_t, rho_0, rho_1, rho_2) = (
                    sigma_t / alpha_t,
                    sigma_0 / alpha_0,
                    sigma_1 / alpha_1,
                    sigma_2 / alpha_2,
                );
                let coef1 = ind3(rho_t, rho_0, rho_1, rho_2) - ind3(rho_0, rho_0, rho_1, rho_2);
                let coef2 = ind3(rho_t, rho_1, rho_2, rho_0) - ind3(rho_0, rho_1, rho_2, rho_0);
                let coef3 = ind3(rho_t, rho_2, rho_0, rho_1) - ind3(rho_0, rho_2, rho_0, rho_1);
                self.combine(
                    alpha_t,
                    alpha_0,
                    sample,
                    &[
                        (coef1, m0),
                        (coef2, self.history(2)?),
                        (coef3, self.history(3)?),
                    ],
                )
            }
        }
    }
}

impl Scheduler for Deis {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &self.sigmas
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
        _noise: &mut dyn NoiseSource,
    ) -> Result<SchedulerOutput> {
        let i = self.index.get_or_init(&self.timesteps, t, Missing::Last)?;
        let dtype = model_output.dtype();
        let (model_output, sample) = (ops::f32(model_output)?, ops::f32(sample)?);
        let n = self.timesteps.len();
        let lower_order_final = i + 1 == n && self.lower_order_final && n < 15;
        let lower_order_second = i + 2 == n && self.lower_order_final && n < 15;
        let sigma = self.sigmas[i] as f32;
        let x0 = dpm_common::data_prediction(
            self.prediction,
            &model_output,
            &sample,
            sigma,
            self.threshold,
        )?;
        let (alpha_t, sigma_t) = alpha_sigma(sigma);
        let eps = div(&(&sample - scale(&x0, alpha_t)?)?, sigma_t)?;
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(eps));
        let order = if self.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            1
        } else if self.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
            2
        } else {
            3
        };
        let prev = self.update(i, &sample, order)?;
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        self.index.advance();
        Ok(SchedulerOutput {
            prev_sample: prev.to_dtype(dtype)?,
            pred_original_sample: Some(x0),
        })
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor> {
        let i = self
            .index
            .for_add_noise(&self.timesteps, t, Missing::Last)?;
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i] as f32);
        let noise = noise.to_dtype(original.dtype())?;
        Ok((scale(original, alpha_t)? + scale(&noise, sigma_t)?)?)
    }
}
