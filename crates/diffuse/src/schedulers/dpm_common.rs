//! What the DPM-Solver family (multistep, singlestep, UniPC, DEIS) shares: the VP parameterisation of a
//! sigma, log-SNR, the N + 1 timestep spacing, and the data-prediction conversion.

use candle_core::Tensor;

use super::config::{PredictionType, TimestepSpacing};
use super::ops::{self, lincomb};
use super::schedule;
use crate::Result;

/// `(alpha_t, sigma_t)` of a k-diffusion sigma: `alpha = 1 / sqrt(sigma^2 + 1)`, `sigma_t = sigma * alpha`.
pub(crate) fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// log-SNR `lambda = log(alpha_t) - log(sigma_t)` of a sigma (infinite at sigma = 0).
pub(crate) fn lambda(sigma: f32) -> f32 {
    let (alpha, sigma_t) = alpha_sigma(sigma);
    alpha.ln() - sigma_t.ln()
}

/// The DPM-Solver family's spacing: N + 1 points with the last dropped (linspace and leading up to
/// `last_timestep`), or trailing from `last_timestep`; integer timesteps, descending.
pub(crate) fn spacing_n_plus_one(
    spacing: TimestepSpacing,
    n_train: usize,
    last_timestep: usize,
    n: usize,
    offset: i64,
) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => {
            let mut t: Vec<f64> = schedule::np_linspace(0.0, (last_timestep - 1) as f64, n + 1)
                .into_iter()
                .map(schedule::np_round)
                .rev()
                .collect();
            t.pop();
            t
        }
        TimestepSpacing::Leading => {
            let ratio = (last_timestep / (n + 1)) as i64;
            (1..=n as i64)
                .rev()
                .map(|i| (i * ratio + offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            schedule::np_arange(last_timestep as f64, 0.0, -(n_train as f64 / n as f64))
                .into_iter()
                .map(|t| schedule::np_round(t) - 1.0)
                .collect()
        }
    }
}

/// The model output as a predicted clean sample (`convert_model_output` of the data-prediction solvers),
/// thresholded when `threshold` is set.
pub(crate) fn data_prediction(
    prediction: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f32,
    threshold: Option<(f64, f64)>,
) -> Result<Tensor> {
    let (alpha_t, sigma_t) = alpha_sigma(sigma);
    let x0 = ops::predict_x0(prediction, model_output, sample, alpha_t, sigma_t)?;
    match threshold {
        Some((ratio, max)) => ops::threshold_sample(&x0, ratio, max),
        None => Ok(x0),
    }
}

/// `numpy.ndarray.astype(np.int64)` of non-negative timesteps: truncation.
pub(crate) fn truncate(values: Vec<f64>) -> Vec<f64> {
    values.into_iter().map(f64::trunc).collect()
}

/// `searchsorted(flip(lambda_t), lambda_min_clipped)`: how many training timesteps `lambda_min_clipped` cuts.
pub(crate) fn clipped_index(alphas_cumprod: &[f32], lambda_min_clipped: Option<f64>) -> usize {
    let Some(min) = lambda_min_clipped else {
        return 0;
    };
    alphas_cumprod
        .iter()
        .rev()
        .map(|&a| a.sqrt().ln() - (1.0 - a).sqrt().ln())
        .filter(|&l| (l as f64) < min)
        .count()
}

/// The second-order update rule of DPM-Solver(++).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SolverType {
    /// The midpoint rule.
    Midpoint,
    /// Heun's rule.
    Heun,
}

/// One DPM-Solver++ step's span: `(alpha_t, sigma_t)` at the target sigma, `sigma_t` of the start sigma, and
/// `h = lambda(target) − lambda(start)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    alpha_t: f32,
    sigma_t: f32,
    sigma_s: f32,
    h: f32,
}

impl Span {
    /// The span from k-diffusion sigma `start` to `target`.
    pub(crate) fn new(target: f32, start: f32) -> Self {
        let (alpha_t, sigma_t) = alpha_sigma(target);
        let (_, sigma_s) = alpha_sigma(start);
        Self {
            alpha_t,
            sigma_t,
            sigma_s,
            h: lambda(target) - lambda(start),
        }
    }

    /// `h`, the log-SNR step.
    pub(crate) fn h(&self) -> f32 {
        self.h
    }
}

/// The first-order DPM-Solver++ update from `sample` with data prediction `x0` (with `noise`: its SDE variant).
pub(crate) fn first_order_update(
    span: &Span,
    sample: &Tensor,
    x0: &Tensor,
    noise: Option<&Tensor>,
) -> Result<Tensor> {
    let Span {
        alpha_t,
        sigma_t,
        sigma_s,
        h,
    } = *span;
    match noise {
        None => lincomb(&[
            (sigma_t / sigma_s, sample),
            (-(alpha_t * ((-h).exp() - 1.0)), x0),
        ]),
        Some(z) => lincomb(&[
            (sigma_t / sigma_s * (-h).exp(), sample),
            (alpha_t * (1.0 - (-2.0 * h).exp()), x0),
            (sigma_t * (1.0 - (-2.0 * h).exp()).sqrt(), z),
        ]),
    }
}

/// The second-order DPM-Solver++ update from `sample`: data prediction `x0` at the span's start and the scaled
/// first difference `d1`, combined by `solver` (with `noise`: the SDE variant).
pub(crate) fn second_order_update(
    span: &Span,
    sample: &Tensor,
    x0: &Tensor,
    d1: &Tensor,
    solver: SolverType,
    noise: Option<&Tensor>,
) -> Result<Tensor> {
    let Span {
        alpha_t,
        sigma_t,
        sigma_s,
        h,
    } = *span;
    let em1 = (-h).exp() - 1.0;
    match (noise, solver) {
        (None, SolverType::Midpoint) => lincomb(&[
            (sigma_t / sigma_s, sample),
            (-(alpha_t * em1), x0),
            (-(0.5 * (alpha_t * em1)), d1),
        ]),
        (None, SolverType::Heun) => lincomb(&[
            (sigma_t / sigma_s, sample),
            (-(alpha_t * em1), x0),
            (alpha_t * (em1 / h + 1.0), d1),
        ]),
        (Some(z), solver) => {
            let e2 = 1.0 - (-2.0 * h).exp();
            let c1 = match solver {
                SolverType::Midpoint => 0.5 * (alpha_t * e2),
                SolverType::Heun => alpha_t * (e2 / (-2.0 * h) + 1.0),
            };
            lincomb(&[
                (sigma_t / sigma_s * (-h).exp(), sample),
                (alpha_t * e2, x0),
                (c1, d1),
                (sigma_t * e2.sqrt(), z),
            ])
        }
    }
}
