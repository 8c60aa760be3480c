//! `UniPCMultistepScheduler` (Zhao et al. 2023): a unified predictor-corrector, bh1/bh2 variants.

use candle_core::Tensor;

use super::config::{
    PredictionType, SchedulerConfig, SigmaSchedule, TimestepRequest, TimestepSpacing,
};
use super::dpm_common::{self, alpha_sigma, lambda};
use super::ops::{self, div, lincomb, scale};
use super::schedule::{self, LINEAR_DEFAULTS};
use super::step_index::{Missing, StepIndex};
use super::{Scheduler, SchedulerOutput};
use crate::rng::NoiseSource;
use crate::{Error, Result};

/// diffusers' `UniPCMultistepScheduler`.
struct UniPc {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    prediction: PredictionType,
    threshold: Option<(f64, f64)>,
    predict_x0: bool,
    bh2: bool,
    solver_order: usize,
    lower_order_final: bool,
    disable_corrector: Vec<usize>,
    model_outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
    this_order: usize,
    last_sample: Option<Tensor>,
    index: StepIndex,
}

/// Builds a UniPC scheduler from `config`, its timesteps set by `request`.
pub(crate) fn build(
    config: &SchedulerConfig,
    request: &TimestepRequest,
) -> Result<Box<dyn Scheduler>> {
    let n_train = config.train_timesteps()?;
    let mut alphas_cumprod = schedule::alphas_cumprod_for(config, LINEAR_DEFAULTS, n_train)?;
    if config.rescale_betas_zero_snr == Some(true) {
        alphas_cumprod[n_train - 1] = 2f32.powi(-24);
    }
    let bh2 = match config.solver_type.as_deref() {
        None | Some("bh2") | Some("midpoint") | Some("heun") | Some("logrho") => true,
        Some("bh1") => false,
        Some(other) => return Err(config.unsupported("solver_type", other, "bh1, bh2")),
    };
    let solver_order = config.solver_order.unwrap_or(2);
    if solver_order == 0 {
        return Err(config.unsupported("solver_order", 0, "at least 1"));
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
    let final_zero = !config.final_sigma_is_min()?;
    let n = match request {
        TimestepRequest::Steps(n) => *n,
        TimestepRequest::Sigmas(_) => {
            return Err(Error::invalid(
                "sigmas",
                "UniPCMultistepScheduler accepts custom sigmas only with flow sigmas, which diffuse does not support",
            ))
        }
        TimestepRequest::Timesteps(_) => {
            return Err(Error::invalid(
                "timesteps",
                "UniPCMultistepScheduler does not accept custom timesteps",
            ))
        }
    };
    schedule::check_steps(n, n_train)?;
    let timesteps = dpm_common::spacing_n_plus_one(spacing, n_train, n_train, n, config.offset());
    let train_sigmas = schedule::train_sigmas(&alphas_cumprod);
    let log_sigmas = schedule::log_sigmas(&train_sigmas);
    let train_f64: Vec<f64> = train_sigmas.iter().map(|&s| s as f64).collect();
    let (timesteps, mut sigmas, last) = if kind != SigmaSchedule::Interpolated {
        let descending: Vec<f64> = train_f64.iter().rev().copied().collect();
        let (lo, hi) = schedule::sigma_bounds(config, true, &descending);
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
    sigmas.push(if final_zero { 0.0 } else { last });
    Ok(Box::new(UniPc {
        timesteps: dpm_common::truncate(timesteps),
        sigmas: schedule::as_f32(&sigmas),
        prediction,
        threshold: config.threshold_options(),
        predict_x0: config.predict_x0.unwrap_or(true),
        bh2,
        solver_order,
        lower_order_final: config.lower_order_final.unwrap_or(true),
        disable_corrector: config.disable_corrector.clone().unwrap_or_default(),
        model_outputs: vec![None; solver_order],
        lower_order_nums: 0,
        this_order: 0,
        last_sample: None,
        index: StepIndex::default(),
    }))
}

/// `torch.linalg.solve` of a small dense system (Gaussian elimination with partial pivoting, float32).
fn solve(mut a: Vec<Vec<f32>>, mut b: Vec<f32>) -> Vec<f32> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        b.swap(col, pivot);
        let pivot_row = a[col].clone();
        for row in col + 1..n {
            let f = a[row][col] / pivot_row[col];
            for (v, p) in a[row].iter_mut().zip(&pivot_row).skip(col) {
                *v -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0f32; n];
    for row in (0..n).rev() {
        let s: f32 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x
}

/// The UniPC coefficients shared by predictor and corrector: `h_phi_1`, `B(h)`, and the rows of R and b.
struct Coefficients {
    h_phi_1: f32,
    b_h: f32,
    r: Vec<Vec<f32>>,
    b: Vec<f32>,
}

impl UniPc {
    /// `rks`, `R`, `b` and the phi functions for an update of `order` ending at log-SNR `h` past `l_s0`.
    fn coefficients(&self, h: f32, rks: &[f32], order: usize) -> Coefficients {
        let hh = if self.predict_x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1();
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1u64;
        let b_h = if self.bh2 { hh.exp_m1() } else { hh };
        let mut r = Vec::with_capacity(order);
        let mut b = Vec::with_capacity(order);
        for i in 1..=order {
            r.push(rks.iter().map(|&rk| rk.powi(i as i32 - 1)).collect());
            b.push(h_phi_k * factorial as f32 / b_h);
            factorial *= i as u64 + 1;
            h_phi_k = h_phi_k / hh - (1.0 / factorial as f64) as f32;
        }
        Coefficients { h_phi_1, b_h, r, b }
    }

    /// The `k`-th most recent converted model output.
    fn history(&self, k: usize) -> Result<&Tensor> {
        self.model_outputs[self.solver_order - k]
            .as_ref()
            .ok_or_else(|| Error::invalid("step", "UniPC history is missing an output"))
    }

    /// `x_t_ = (sigma_t / sigma_s0) x - alpha_t h_phi_1 m0` (or the noise-prediction form) and the
    /// coefficient of the correction sum.
    fn base(
        &self,
        s_t: f32,
        s_0: f32,
        x: &Tensor,
        m0: &Tensor,
        c: &Coefficients,
    ) -> Result<(Tensor, f32)> {
        let (alpha_t, sigma_t) = alpha_sigma(s_t);
        let (alpha_0, sigma_0) = alpha_sigma(s_0);
        if self.predict_x0 {
            let x_t = lincomb(&[(sigma_t / sigma_0, x), (-(alpha_t * c.h_phi_1), m0)])?;
            Ok((x_t, alpha_t * c.b_h))
        } else {
            let x_t = lincomb(&[(alpha_t / alpha_0, x), (-(sigma_t * c.h_phi_1), m0)])?;
            Ok((x_t, sigma_t * c.b_h))
        }
    }

    /// `rks` and `D1s` over the previous outputs, relative to `l_s0`; `first` is the sigma index of the
    /// output before `m0`.
    fn differences(
        &self,
        order: usize,
        first: isize,
        l_s0: f32,
        h: f32,
    ) -> Result<(Vec<f32>, Vec<Tensor>)> {
        let m0 = self.history(1)?;
        let mut rks = Vec::with_capacity(order);
        let mut d1s = Vec::with_capacity(order);
        for k in 1..order {
            let si = first - (k as isize - 1);
            let sigma = self.sigma_at(si)?;
            let rk = (lambda(sigma) - l_s0) / h;
            rks.push(rk);
            d1s.push(div(&(self.history(k + 1)? - m0)?, rk)?);
        }
        rks.push(1.0);
        Ok((rks, d1s))
    }

    /// `sigmas[i]`, with Python's negative indexing.
    fn sigma_at(&self, i: isize) -> Result<f32> {
        let n = self.sigmas.len() as isize;
        let j = if i < 0 { i + n } else { i };
        self.sigmas
            .get(j as usize)
            .map(|&s| s as f32)
            .ok_or_else(|| Error::invalid("step", format!("sigma index {i} out of range")))
    }

    /// `sum_k rho_k D1_k`.
    fn weighted(rhos: &[f32], d1s: &[Tensor]) -> Result<Option<Tensor>> {
        let terms: Vec<(f32, &Tensor)> = rhos.iter().copied().zip(d1s.iter()).collect();
        if terms.is_empty() {
            return Ok(None);
        }
        Ok(Some(lincomb(&terms)?))
    }

    /// The UniP predictor from step `i` to `i + 1`.
    fn predictor(&self, i: usize, x: &Tensor, order: usize) -> Result<Tensor> {
        let m0 = self.history(1)?;
        let (s_t, s_0) = (self.sigmas[i + 1] as f32, self.sigmas[i] as f32);
        let (l_t, l_0) = (lambda(s_t), lambda(s_0));
        let h = l_t - l_0;
        let (rks, d1s) = self.differences(order, i as isize - 1, l_0, h)?;
        let c = self.coefficients(h, &rks, order);
        let (x_t, coef) = self.base(s_t, s_0, x, m0, &c)?;
        let rhos: Vec<f32> = if d1s.is_empty() {
            Vec::new()
        } else if order == 2 {
            vec![0.5]
        } else {
            let a: Vec<Vec<f32>> = c.r[..order - 1]
                .iter()
                .map(|row| row[..order - 1].to_vec())
                .collect();
            solve(a, c.b[..order - 1].to_vec())
        };
        match Self::weighted(&rhos, &d1s)? {
            Some(res) => Ok((x_t - scale(&res, coef)?)?),
            None => Ok(x_t),
        }
    }

    /// The UniC corrector of the sample at step `i`, from the last sample and the new model output.
    fn corrector(
        &self,
        i: usize,
        model_t: &Tensor,
        last_sample: &Tensor,
        order: usize,
    ) -> Result<Tensor> {
        let m0 = self.history(1)?;
        let s_t = self.sigmas[i] as f32;
        let s_0 = self.sigma_at(i as isize - 1)?;
        let (l_t, l_0) = (lambda(s_t), lambda(s_0));
        let h = l_t - l_0;
        let (rks, d1s) = self.differences(order, i as isize - 2, l_0, h)?;
        let c = self.coefficients(h, &rks, order);
        let (x_t, coef) = self.base(s_t, s_0, last_sample, m0, &c)?;
        let rhos = if order == 1 {
            vec![0.5]
        } else {
            solve(c.r.clone(), c.b.clone())
        };
        let (last_rho, rest) = rhos
            .split_last()
            .map(|(l, r)| (*l, r))
            .unwrap_or((0.5, &[]));
        let d1_t = (model_t - m0)?;
        let correction = match Self::weighted(rest, &d1s)? {
            Some(res) => (res + scale(&d1_t, last_rho)?)?,
            None => scale(&d1_t, last_rho)?,
        };
        Ok((x_t - scale(&correction, coef)?)?)
    }

    /// `convert_model_output`: x0 (predict_x0) or epsilon.
    fn convert(&self, model_output: &Tensor, sample: &Tensor, sigma: f32) -> Result<Tensor> {
        if self.predict_x0 {
            return dpm_common::data_prediction(
                self.prediction,
                model_output,
                sample,
                sigma,
                self.threshold,
            );
        }
        let (alpha_t, sigma_t) = alpha_sigma(sigma);
        match self.prediction {
            PredictionType::Epsilon => Ok(model_output.clone()),
            PredictionType::Sample => div(&(sample - scale(model_output, alpha_t)?)?, sigma_t),
            PredictionType::VPrediction => lincomb(&[(alpha_t, model_output), (sigma_t, sample)]),
        }
    }
}

impl Scheduler for UniPc {
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
        let (model_output, mut sample) = (ops::f32(model_output)?, ops::f32(sample)?);
        let use_corrector = i > 0 && !self.disable_corrector.contains(&(i - 1));
        let converted = self.convert(&model_output, &sample, self.sigmas[i] as f32)?;
        if use_corrector {
            if let Some(last) = self.last_sample.clone() {
                sample = self.corrector(i, &converted, &last, self.this_order)?;
            }
        }
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(converted.clone()));
        let this_order = if self.lower_order_final {
            self.solver_order.min(self.timesteps.len() - i)
        } else {
            self.solver_order
        };
        self.this_order = this_order.min(self.lower_order_nums + 1);
        self.last_sample = Some(sample.clone());
        let prev = self.predictor(i, &sample, self.this_order)?;
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        self.index.advance();
        Ok(SchedulerOutput {
            prev_sample: prev.to_dtype(dtype)?,
            pred_original_sample: self.predict_x0.then_some(converted),
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
