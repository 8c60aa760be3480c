//! What the k-diffusion ports (Euler, Euler Ancestral, Heun, LMS, KDPM2, KDPM2 Ancestral) share: the
//! sigma schedule from the timesteps, `init_noise_sigma`, input scaling and the predicted clean sample.

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig, SigmaSchedule, TimestepSpacing};
use super::ops::{div, scale};
use super::schedule;
use super::step_index::{Missing, StepIndex};
use crate::Result;

/// The timesteps and sigmas (without the final one) of a k-diffusion port.
pub(crate) struct KSchedule {
    /// Timesteps, descending (fractional after a sigma conversion).
    pub(crate) timesteps: Vec<f64>,
    /// One sigma per timestep, in float64 as numpy holds them.
    pub(crate) sigmas: Vec<f64>,
    /// `log` of the float32 training sigmas.
    pub(crate) log_sigmas: Vec<f32>,
}

/// The training sigmas interpolated at `timesteps`, then converted to Karras, exponential or beta sigmas
/// (bounds from the interpolated ones) with timesteps recovered from them, rounded if `round_karras`.
pub(crate) fn k_schedule(
    config: &SchedulerConfig,
    alphas_cumprod: &[f32],
    timesteps: Vec<f64>,
    round_karras: bool,
) -> Result<KSchedule> {
    let kind = config.sigma_schedule()?;
    let train = schedule::train_sigmas(alphas_cumprod);
    let log_sigmas = schedule::log_sigmas(&train);
    let train_f64: Vec<f64> = train.iter().map(|&s| s as f64).collect();
    let mut sigmas: Vec<f64> = timesteps
        .iter()
        .map(|&t| schedule::np_interp(t, &train_f64))
        .collect();
    let mut timesteps = timesteps;
    if kind != SigmaSchedule::Interpolated {
        let (lo, hi) = schedule::sigma_bounds(config, false, &sigmas);
        sigmas = schedule::converted_sigmas(kind, lo, hi, timesteps.len());
        timesteps = sigmas
            .iter()
            .map(|&s| schedule::sigma_to_t(s, &log_sigmas))
            .collect();
        if kind == SigmaSchedule::Karras && round_karras {
            timesteps = timesteps.into_iter().map(schedule::np_round).collect();
        }
    }
    Ok(KSchedule {
        timesteps,
        sigmas,
        log_sigmas,
    })
}

/// `[x0, x1, x1, x2, x2, ..., xn, xn, xn]`: the second-order schedulers' `cat([x[:1], x[1:].repeat_interleave(2), x[-1:]])`.
pub(crate) fn interleave_sigmas(values: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(2 * values.len());
    out.push(values[0]);
    for &v in &values[1..] {
        out.push(v);
        out.push(v);
    }
    out.push(values[values.len() - 1]);
    out
}

/// The k-diffusion ports' `init_noise_sigma`: the largest sigma, or `sqrt(max^2 + 1)` for leading spacing.
pub(crate) fn k_init_noise_sigma(sigmas: &[f64], spacing: TimestepSpacing) -> f64 {
    let max = sigmas
        .iter()
        .fold(f32::NEG_INFINITY, |m, &s| m.max(s as f32));
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max as f64,
        TimestepSpacing::Leading => (max * max + 1.0).sqrt() as f64,
    }
}

/// `sample / sqrt(sigma^2 + 1)`: the k-diffusion ports' input scaling.
pub(crate) fn k_scale_input(sample: &Tensor, sigma: f32) -> Result<Tensor> {
    div(sample, (sigma * sigma + 1.0).sqrt())
}

/// The k-diffusion ports' predicted clean sample at noise level `sigma` (`sigma_hat` for epsilon).
pub(crate) fn k_predict_x0(
    prediction: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f32,
) -> Result<Tensor> {
    match prediction {
        PredictionType::Epsilon => Ok((sample - scale(model_output, sigma)?)?),
        PredictionType::VPrediction => {
            let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
            Ok((scale(model_output, c_out)? + div(sample, sigma * sigma + 1.0)?)?)
        }
        PredictionType::Sample => Ok(model_output.clone()),
    }
}

/// `original + sigma * noise` at the step index `add_noise` uses.
pub(crate) fn k_add_noise(
    sigmas: &[f64],
    index: &StepIndex,
    timesteps: &[f64],
    original: &Tensor,
    noise: &Tensor,
    t: f64,
) -> Result<Tensor> {
    let i = index.for_add_noise(timesteps, t, Missing::Error)?;
    let noise = noise.to_dtype(original.dtype())?;
    Ok((original + scale(&noise, sigmas[i] as f32)?)?)
}

/// torch's `lerp(a, b, 0.5)` then `exp`: the log-midpoint of two sigmas (float32).
pub(crate) fn log_midpoint(a: f32, b: f32) -> f32 {
    let (la, lb) = (a.ln(), b.ln());
    (lb - (lb - la) * 0.5).exp()
}
