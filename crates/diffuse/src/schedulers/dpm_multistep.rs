//! `DPMSolverMultistepScheduler`: DPM-Solver++ (Lu et al. 2022), its SDE variant, orders 1-3.

use candle_core::Tensor;

use super::config::{
    PredictionType, SchedulerConfig, SigmaSchedule, TimestepRequest, TimestepSpacing,
};
use super::dpm_common::{
    self, alpha_sigma, first_order_update, lambda, second_order_update, SolverType, Span,
};
use super::ops::{self, lincomb, scale};
use super::schedule::{self, LINEAR_DEFAULTS};
use super::step_index::{Missing, StepIndex};
use super::{Scheduler, SchedulerOutput};
use crate::rng::{randn_tensor, NoiseSource};
use crate::{Error, Result};

/// diffusers' `DPMSolverMultistepScheduler`, algorithm types `dpmsolver++` and `sde-dpmsolver++`.
struct DpmMultistep {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    prediction: PredictionType,
    threshold: Option<(f64, f64)>,
    sde: bool,
    solver_order: usize,
    solver_type: SolverType,
    lower_order_final: bool,
    euler_at_final: bool,
    final_zero: bool,
    model_outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
    index: StepIndex,
}

/// Builds a DPM-Solver multistep scheduler from `config`, its timesteps set by `request`.
pub(crate) fn build(
    config: &SchedulerConfig,
    request: &TimestepRequest,
) -> Result<Box<dyn Scheduler>> {
    let n_train = config.train_timesteps()?;
    let mut alphas_cumprod = schedule::alphas_cumprod_for(config, LINEAR_DEFAULTS, n_train)?;
    if config.rescale_betas_zero_snr == Some(true) {
        alphas_cumprod[n_train - 1] = 2f32.powi(-24);
    }
    let sde = match config.algorithm_type.as_deref() {
        None | Some("dpmsolver++") | Some("deis") => false,
        Some("sde-dpmsolver++") => true,
        Some(other) => {
            return Err(config.unsupported(
                "algorithm_type",
                other,
                "dpmsolver++, sde-dpmsolver++ (the deprecated dpmsolver and sde-dpmsolver are not supported)",
            ))
        }
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
    let spacing = config.spacing(TimestepSpacing::Linspace)?;
    let kind = config.sigma_schedule()?;
    let lu_lambdas = config.use_lu_lambdas == Some(true);
    if lu_lambdas && kind != SigmaSchedule::Interpolated {
        return Err(config.unsupported(
            "use_lu_lambdas",
            "true",
            "false when Karras, exponential or beta sigmas are used",
        ));
    }
    let final_zero = !config.final_sigma_is_min()?;
    let cosine = config.beta_schedule.as_deref() == Some("squaredcos_cap_v2");

    let train_sigmas = schedule::train_sigmas(&alphas_cumprod);
    let log_sigmas = schedule::log_sigmas(&train_sigmas);
    let train_f64: Vec<f64> = train_sigmas.iter().map(|&s| s as f64).collect();
    let (timesteps, n) = match request {
        TimestepRequest::Timesteps(custom) => {
            if kind != SigmaSchedule::Interpolated || lu_lambdas {
                return Err(Error::invalid(
                    "timesteps",
                    "custom timesteps cannot be used with Karras, Lu, exponential or beta sigmas",
                ));
            }
            (dpm_common::truncate(custom.clone()), custom.len())
        }
        _ => {
            let n = config.steps_only("DPMSolverMultistepScheduler", request)?;
            schedule::check_steps(n, n_train)?;
            let clipped = dpm_common::clipped_index(&alphas_cumprod, config.lambda_min_clipped);
            let last = n_train - clipped;
            (
                dpm_common::spacing_n_plus_one(spacing, n_train, last, n, config.offset()),
                n,
            )
        }
    };
    let descending: Vec<f64> = train_f64.iter().rev().copied().collect();
    let to_t = |sigmas: &[f64]| -> Vec<f64> {
        sigmas
            .iter()
            .map(|&s| schedule::sigma_to_t(s, &log_sigmas))
            .collect()
    };
    let round_unless_cosine = |t: Vec<f64>| -> Vec<f64> {
        if cosine {
            t
        } else {
            t.into_iter().map(schedule::np_round).collect()
        }
    };
    let (timesteps, mut sigmas) = if lu_lambdas {
        let lambdas: Vec<f64> = log_sigmas.iter().rev().map(|&l| l as f64).collect();
        let (lo, hi) = (lambdas[lambdas.len() - 1], lambdas[0]);
        let sigmas: Vec<f64> = schedule::np_linspace(0.0, 1.0, n)
            .into_iter()
            .map(|r| (hi + r * (lo - hi)).exp())
            .collect();
        (round_unless_cosine(to_t(&sigmas)), sigmas)
    } else if kind != SigmaSchedule::Interpolated {
        let (lo, hi) = schedule::sigma_bounds(config, false, &descending);
        let sigmas = schedule::converted_sigmas(kind, lo, hi, n);
        let t = to_t(&sigmas);
        let t = if kind == SigmaSchedule::Karras {
            round_unless_cosine(t)
        } else {
            t
        };
        (t, sigmas)
    } else {
        let sigmas = timesteps
            .iter()
            .map(|&t| schedule::np_interp(t, &train_f64))
            .collect();
        (timesteps, sigmas)
    };
    sigmas.push(if final_zero { 0.0 } else { train_f64[0] });
    Ok(Box::new(DpmMultistep {
        timesteps: dpm_common::truncate(timesteps),
        sigmas: schedule::as_f32(&sigmas),
        prediction,
        threshold: config.threshold_options(),
        sde,
        solver_order,
        solver_type,
        lower_order_final: config.lower_order_final.unwrap_or(true),
        euler_at_final: config.euler_at_final.unwrap_or(false),
        final_zero,
        model_outputs: vec![None; solver_order],
        lower_order_nums: 0,
        index: StepIndex::default(),
    }))
}

impl DpmMultistep {
    /// The first-order (DDIM-like) update from `sigmas[i]` to `sigmas[i + 1]`.
    fn first_order(
        &self,
        i: usize,
        x0: &Tensor,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let span = Span::new(self.sigmas[i + 1] as f32, self.sigmas[i] as f32);
        first_order_update(&span, sample, x0, noise)
    }

    /// The second-order multistep update, from the last two data predictions.
    fn second_order(&self, i: usize, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let (s_t, s_0, s_1) = (
            self.sigmas[i + 1] as f32,
            self.sigmas[i] as f32,
            self.sigmas[i - 1] as f32,
        );
        let span = Span::new(s_t, s_0);
        let (m0, m1) = self.last_two()?;
        let r0 = (lambda(s_0) - lambda(s_1)) / span.h();
        let d1 = scale(&(m0 - m1)?, 1.0 / r0)?;
        second_order_update(&span, sample, m0, &d1, self.solver_type, noise)
    }

    /// The third-order multistep update, from the last three data predictions.
    fn third_order(&self, i: usize, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let (s_t, s_0, s_1, s_2) = (
            self.sigmas[i + 1] as f32,
            self.sigmas[i] as f32,
            self.sigmas[i - 1] as f32,
            self.sigmas[i - 2] as f32,
        );
        let (alpha_t, sigma_t) = alpha_sigma(s_t);
        let (_, sigma_0) = alpha_sigma(s_0);
        let (l_t, l_0, l_1, l_2) = (lambda(s_t), lambda(s_0), lambda(s_1), lambda(s_2));
        let (m0, m1) = self.last_two()?;
        let m2 = self.history(3)?;
        let (h, h_0, h_1) = (l_t - l_0, l_0 - l_1, l_1 - l_2);
        let (r0, r1) = (h_0 / h, h_1 / h);
        let d1_0 = scale(&(m0 - m1)?, 1.0 / r0)?;
        let d1_1 = scale(&(m1 - m2)?, 1.0 / r1)?;
        let diff = (&d1_0 - &d1_1)?;
        let d1 = (&d1_0 + scale(&diff, r0 / (r0 + r1))?)?;
        let d2 = scale(&diff, 1.0 / (r0 + r1))?;
        match noise {
            None => {
                let em1 = (-h).exp() - 1.0;
                lincomb(&[
                    (sigma_t / sigma_0, sample),
                    (-(alpha_t * em1), m0),
                    (alpha_t * (em1 / h + 1.0), &d1),
                    (-(alpha_t * (((-h).exp() - 1.0 + h) / (h * h) - 0.5)), &d2),
                ])
            }
            Some(z) => {
                let e2 = 1.0 - (-2.0 * h).exp();
                let two_h = 2.0 * h;
                lincomb(&[
                    (sigma_t / sigma_0 * (-h).exp(), sample),
                    (alpha_t * e2, m0),
                    (alpha_t * (e2 / (-2.0 * h) + 1.0), &d1),
                    (
                        alpha_t * ((1.0 - (-2.0 * h).exp() - 2.0 * h) / (two_h * two_h) - 0.5),
                        &d2,
                    ),
                    (sigma_t * e2.sqrt(), z),
                ])
            }
        }
    }

    /// The `k`-th most recent data prediction.
    fn history(&self, k: usize) -> Result<&Tensor> {
        self.model_outputs[self.solver_order - k]
            .as_ref()
            .ok_or_else(|| Error::invalid("step", "multistep history is missing an output"))
    }

    /// The two most recent data predictions.
    fn last_two(&self) -> Result<(&Tensor, &Tensor)> {
        Ok((self.history(1)?, self.history(2)?))
    }
}

impl Scheduler for DpmMultistep {
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
        let n = self.timesteps.len();
        let lower_order_final = i == n - 1
            && (self.euler_at_final || (self.lower_order_final && n < 15) || self.final_zero);
        let lower_order_second = i + 2 == n && self.lower_order_final && n < 15;
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
                candle_core::DType::F32,
            )?)
        } else {
            None
        };
        let prev = if self.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            self.first_order(i, &x0, &sample, z.as_ref())?
        } else if self.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order(i, &sample, z.as_ref())?
        } else {
            self.third_order(i, &sample, z.as_ref())?
        };
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
