//! `DPMSolverSinglestepScheduler`: singlestep DPM-Solver++ (and its SDE variant), orders 1-3 ("DPM++ SDE"
//! in diffusers' A1111 table).

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig, SigmaSchedule, TimestepRequest};
use super::dpm_common::{
    self, alpha_sigma, first_order_update, lambda, second_order_update, SolverType, Span,
};
use super::ops::{self, div, lincomb, scale};
use super::schedule::{self, LINEAR_PLAIN};
use super::step_index::{Missing, StepIndex};
use super::{Scheduler, SchedulerOutput};
use crate::rng::{randn_tensor, NoiseSource};
use crate::{Error, Result};

/// diffusers' `DPMSolverSinglestepScheduler`, algorithm types `dpmsolver++` and `sde-dpmsolver++`.
struct DpmSinglestep {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    prediction: PredictionType,
    threshold: Option<(f64, f64)>,
    sde: bool,
    solver_type: SolverType,
    order_list: Vec<usize>,
    model_outputs: Vec<Option<Tensor>>,
    /// The sample at the start of the current singlestep group.
    sample: Option<Tensor>,
    index: StepIndex,
}

/// Builds a DPM-Solver singlestep scheduler from `config`, its timesteps set by `request`.
pub(crate) fn build(
    config: &SchedulerConfig,
    request: &TimestepRequest,
) -> Result<Box<dyn Scheduler>> {
    let n_train = config.train_timesteps()?;
    let alphas_cumprod = schedule::alphas_cumprod_for(config, LINEAR_PLAIN, n_train)?;
    let sde =
        match config.algorithm_type.as_deref() {
            None | Some("dpmsolver++") | Some("deis") => false,
            Some("sde-dpmsolver++") => true,
            Some(other) => return Err(config.unsupported(
                "algorithm_type",
                other,
                "dpmsolver++, sde-dpmsolver++ (the noise-prediction dpmsolver is not supported)",
            )),
        };
    let solver_type = match config.solver_type.as_deref() {
        None | Some("midpoint") | Some("logrho") | Some("bh1") | Some("bh2") => {
            SolverType::Midpoint
        }
        Some("heun") => SolverType::Heun,
        Some(other) => return Err(config.unsupported("solver_type", other, "midpoint, heun")),
    };
    let solver_order = config.solver_order.unwrap_or(2);
    if !(1..=3).contains(&solver_order) {
        return Err(config.unsupported("solver_order", solver_order, "1, 2 or 3"));
    }
    if let Some(v) = &config.variance_type {
        return Err(config.unsupported(
            "variance_type",
            v,
            "null (learned variances are not supported)",
        ));
    }
    config.reject_flag("use_flow_sigmas", config.use_flow_sigmas)?;
    config.reject_flag("use_dynamic_shifting", config.use_dynamic_shifting)?;
    let prediction = config.prediction(&[
        PredictionType::Epsilon,
        PredictionType::Sample,
        PredictionType::VPrediction,
    ])?;
    let kind = config.sigma_schedule()?;
    let final_zero = !config.final_sigma_is_min()?;
    let train_sigmas = schedule::train_sigmas(&alphas_cumprod);
    let log_sigmas = schedule::log_sigmas(&train_sigmas);
    let train_f64: Vec<f64> = train_sigmas.iter().map(|&s| s as f64).collect();
    let (timesteps, n) = match request {
        TimestepRequest::Timesteps(custom) => {
            if kind != SigmaSchedule::Interpolated {
                return Err(Error::invalid(
                    "timesteps",
                    "custom timesteps cannot be used with Karras, exponential or beta sigmas",
                ));
            }
            (dpm_common::truncate(custom.clone()), custom.len())
        }
        _ => {
            let n = config.steps_only("DPMSolverSinglestepScheduler", request)?;
            schedule::check_steps(n, n_train)?;
            let clipped = dpm_common::clipped_index(&alphas_cumprod, config.lambda_min_clipped);
            let mut t: Vec<f64> = schedule::np_linspace(0.0, (n_train - 1 - clipped) as f64, n + 1)
                .into_iter()
                .map(schedule::np_round)
                .rev()
                .collect();
            t.pop();
            (t, n)
        }
    };
    let (timesteps, mut sigmas) = if kind != SigmaSchedule::Interpolated {
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
        (t, sigmas)
    } else {
        let sigmas = timesteps
            .iter()
            .map(|&t| schedule::np_interp(t, &train_f64))
            .collect();
        (timesteps, sigmas)
    };
    sigmas.push(if final_zero { 0.0 } else { train_f64[0] });
    let lower_order_final =
        config.lower_order_final.unwrap_or(false) || n % solver_order != 0 || final_zero;
    Ok(Box::new(DpmSinglestep {
        timesteps: dpm_common::truncate(timesteps),
        sigmas: schedule::as_f32(&sigmas),
        prediction,
        threshold: config.threshold_options(),
        sde,
        solver_type,
        order_list: order_list(n, solver_order, lower_order_final, final_zero),
        model_outputs: vec![None; solver_order],
        sample: None,
        index: StepIndex::default(),
    }))
}

/// `get_order_list`: the order of each step, grouped 1, 2, (3), 1, 2, (3), ...
fn order_list(steps: usize, order: usize, lower_order_final: bool, final_zero: bool) -> Vec<usize> {
    let cycle = |n: usize| -> Vec<usize> { (0..n).flat_map(|_| 1..=order).collect() };
    let mut orders = if lower_order_final {
        match (order, steps % order) {
            (3, 0) => [cycle((steps / 3).saturating_sub(1)), vec![1, 2, 1]].concat(),
            (3, 1) => [cycle(steps / 3), vec![1]].concat(),
            (3, _) => [cycle(steps / 3), vec![1, 2]].concat(),
            (2, 0) => [cycle((steps / 2).saturating_sub(1)), vec![1, 1]].concat(),
            (2, _) => [cycle(steps / 2), vec![1]].concat(),
            _ => vec![1; steps],
        }
    } else {
        cycle(steps / order)
    };
    if final_zero {
        if let Some(last) = orders.last_mut() {
            *last = 1;
        }
    }
    orders
}

impl DpmSinglestep {
    /// The `k`-th most recent data prediction.
    fn history(&self, k: usize) -> Result<&Tensor> {
        self.model_outputs[self.model_outputs.len() - k]
            .as_ref()
            .ok_or_else(|| Error::invalid("step", "singlestep history is missing an output"))
    }

    /// The first-order update from `sigmas[i]` to `sigmas[i + 1]`.
    fn first_order(&self, i: usize, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let span = Span::new(self.sigmas[i + 1] as f32, self.sigmas[i] as f32);
        first_order_update(&span, sample, self.history(1)?, noise)
    }

    /// The singlestep second-order update from `sigmas[i - 1]` to `sigmas[i + 1]`.
    fn second_order(&self, i: usize, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let (m0, m1) = (self.history(1)?, self.history(2)?);
        let (s_t, s_0, s_1) = (
            self.sigmas[i + 1] as f32,
            self.sigmas[i] as f32,
            self.sigmas[i - 1] as f32,
        );
        let span = Span::new(s_t, s_1);
        let r0 = (lambda(s_0) - lambda(s_1)) / span.h();
        let d1 = scale(&(m0 - m1)?, 1.0 / r0)?;
        second_order_update(&span, sample, m1, &d1, self.solver_type, noise)
    }

    /// The singlestep third-order update from `sigmas[i - 2]` to `sigmas[i + 1]`.
    fn third_order(&self, i: usize, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let (m0, m1, m2) = (self.history(1)?, self.history(2)?, self.history(3)?);
        let (s_t, s_0, s_1, s_2) = (
            self.sigmas[i + 1] as f32,
            self.sigmas[i] as f32,
            self.sigmas[i - 1] as f32,
            self.sigmas[i - 2] as f32,
        );
        let (alpha_t, sigma_t) = alpha_sigma(s_t);
        let (_, sigma_2) = alpha_sigma(s_2);
        let (l_t, l_0, l_1, l_2) = (lambda(s_t), lambda(s_0), lambda(s_1), lambda(s_2));
        let (h, h_0, h_1) = (l_t - l_2, l_0 - l_2, l_1 - l_2);
        let (r0, r1) = (h_0 / h, h_1 / h);
        let d1_0 = scale(&(m1 - m2)?, 1.0 / r1)?;
        let d1_1 = scale(&(m0 - m2)?, 1.0 / r0)?;
        let em1 = (-h).exp() - 1.0;
        let e2 = 1.0 - (-2.0 * h).exp();
        let c_d1 = match noise {
            None => alpha_t * (em1 / h + 1.0),
            Some(_) => alpha_t * (e2 / (-2.0 * h) + 1.0),
        };
        let (lead, c_d0) = match noise {
            None => (sigma_t / sigma_2, -(alpha_t * em1)),
            Some(_) => (sigma_t / sigma_2 * (-h).exp(), alpha_t * e2),
        };
        let mut terms: Vec<(f32, Tensor)> = vec![(lead, sample.clone()), (c_d0, m2.clone())];
        match self.solver_type {
            SolverType::Midpoint => terms.push((c_d1, d1_1)),
            SolverType::Heun => {
                let d1 = div(&(scale(&d1_0, r0)? - scale(&d1_1, r1)?)?, r0 - r1)?;
                let d2 = div(&scale(&(&d1_1 - &d1_0)?, 2.0)?, r0 - r1)?;
                terms.push((c_d1, d1));
                let c_d2 = match noise {
                    None => -(alpha_t * (((-h).exp() - 1.0 + h) / (h * h) - 0.5)),
                    Some(_) => {
                        let m2h = -2.0 * h;
                        alpha_t * ((1.0 - (-2.0 * h).exp() + m2h) / (m2h * m2h) - 0.5)
                    }
                };
                terms.push((c_d2, d2));
            }
        }
        if let Some(z) = noise {
            terms.push((sigma_t * e2.sqrt(), z.clone()));
        }
        let refs: Vec<(f32, &Tensor)> = terms.iter().map(|(c, t)| (*c, t)).collect();
        lincomb(&refs)
    }
}

impl Scheduler for DpmSinglestep {
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
        noise: &mut dyn NoiseSource,
    ) -> Result<SchedulerOutput> {
        let i = self.index.get_or_init(&self.timesteps, t, Missing::Last)?;
        let dtype = model_output.dtype();
        let (model_output, sample) = (ops::f32(model_output)?, ops::f32(sample)?);
        let x0 = dpm_common::data_prediction(
            self.prediction,
            &model_output,
            &sample,
            self.sigmas[i] as f32,
            self.threshold,
        )?;
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(x0.clone()));
        let z = if self.sde {
            Some(randn_tensor(
                noise,
                model_output.dims(),
                model_output.device(),
                model_output.dtype(),
            )?)
        } else {
            None
        };
        let mut order = self.order_list.get(i).copied().unwrap_or(1);
        while order > 1 && self.model_outputs[self.model_outputs.len() - order].is_none() {
            order -= 1;
        }
        if order == 1 {
            self.sample = Some(sample.clone());
        }
        let start = self.sample.clone().unwrap_or(sample);
        let prev = match order {
            1 => self.first_order(i, &start, z.as_ref())?,
            2 => self.second_order(i, &start, z.as_ref())?,
            _ => self.third_order(i, &start, z.as_ref())?,
        };
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
