//! Tensor helpers shared by the schedulers: float32 working copies, linear combinations with float32
//! coefficients, dynamic thresholding, predicted-x0 conversions and diffusers' step-index lookup.

use candle_core::{DType, Tensor};

use super::config::PredictionType;
use crate::{Error, Result};

/// The tensor in float32 (schedulers step in float32, as diffusers' do for half-precision models).
pub(crate) fn f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?)
}

/// `c * t` with a float32 coefficient.
pub(crate) fn scale(t: &Tensor, c: f32) -> Result<Tensor> {
    Ok(t.affine(c as f64, 0.0)?)
}

/// `t / c` with a float32 divisor, divided exactly as torch does (not multiplied by a reciprocal).
pub(crate) fn div(t: &Tensor, c: f32) -> Result<Tensor> {
    let divisor = Tensor::new(c, t.device())?.to_dtype(t.dtype())?;
    Ok(t.broadcast_div(&divisor)?)
}

/// `sum c_i * t_i`, each product rounded to float32 and summed left to right, as torch evaluates it.
pub(crate) fn lincomb(terms: &[(f32, &Tensor)]) -> Result<Tensor> {
    let (first, rest) = terms
        .split_first()
        .ok_or_else(|| Error::invalid("lincomb", "no terms"))?;
    let mut acc = scale(first.1, first.0)?;
    for (c, t) in rest {
        acc = (acc + scale(t, *c)?)?;
    }
    Ok(acc)
}

/// diffusers' `index_for_timestep`: the position of `t` in `timesteps`, the second match when there are
/// several (so a schedule that repeats its first timestep does not skip a sigma).
pub(crate) fn index_for_timestep(timesteps: &[f64], t: f64) -> Option<usize> {
    let matches: Vec<usize> = timesteps
        .iter()
        .enumerate()
        .filter(|(_, &v)| v == t)
        .map(|(i, _)| i)
        .collect();
    match matches.len() {
        0 => None,
        1 => Some(matches[0]),
        _ => Some(matches[1]),
    }
}

/// The error for a timestep that is not in the schedule.
pub(crate) fn unknown_timestep(t: f64) -> Error {
    Error::invalid(
        "timestep",
        format!("{t} is not one of the scheduler's timesteps"),
    )
}

/// diffusers' `_threshold_sample`: per batch item, clamp to the `ratio` quantile of |x| (at least 1, at
/// most `max_value`) and divide by it.
pub(crate) fn threshold_sample(sample: &Tensor, ratio: f64, max_value: f64) -> Result<Tensor> {
    let dims = sample.dims().to_vec();
    let batch = dims.first().copied().unwrap_or(1);
    let flat = f32(sample)?.reshape((batch, ()))?;
    let rows: Vec<Vec<f32>> = flat.to_vec2()?;
    let mut out = Vec::with_capacity(rows.iter().map(Vec::len).sum());
    for row in rows {
        let mut sorted: Vec<f32> = row.iter().map(|v| v.abs()).collect();
        sorted.sort_by(f32::total_cmp);
        let s = quantile_sorted(&sorted, ratio as f32).clamp(1.0, max_value as f32);
        out.extend(row.iter().map(|v| v.clamp(-s, s) / s));
    }
    Ok(Tensor::from_vec(out, dims, sample.device())?.to_dtype(sample.dtype())?)
}

/// `torch.quantile` (linear interpolation) of a sorted float32 vector.
fn quantile_sorted(sorted: &[f32], q: f32) -> f32 {
    let rank = q * (sorted.len() - 1) as f32;
    let below = rank as usize;
    let above = (rank.ceil() as usize).min(sorted.len() - 1);
    let w = rank - below as f32;
    let (a, b) = (sorted[below], sorted[above]);
    if w < 0.5 {
        a + w * (b - a)
    } else {
        b - (b - a) * (1.0 - w)
    }
}

/// The predicted clean sample from the model output at a point with `x_t = alpha * x0 + sigma * eps`.
pub(crate) fn predict_x0(
    prediction: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    alpha: f32,
    sigma: f32,
) -> Result<Tensor> {
    match prediction {
        PredictionType::Epsilon => div(&(sample - scale(model_output, sigma)?)?, alpha),
        PredictionType::Sample => Ok(model_output.clone()),
        PredictionType::VPrediction => lincomb(&[(alpha, sample), (-sigma, model_output)]),
    }
}

/// The alphas_cumprod entry of training timestep `t`, or an error naming it.
pub(crate) fn alpha_at(alphas_cumprod: &[f32], t: f64) -> Result<f32> {
    if t < 0.0 || t.fract() != 0.0 || t as usize >= alphas_cumprod.len() {
        return Err(Error::invalid(
            "timestep",
            format!(
                "{t} is not a training timestep (0..{})",
                alphas_cumprod.len()
            ),
        ));
    }
    Ok(alphas_cumprod[t as usize])
}

/// `sqrt(ac) * original + sqrt(1 - ac) * noise`: the variance-preserving forward process.
pub(crate) fn vp_add_noise(
    alphas_cumprod: &[f32],
    original: &Tensor,
    noise: &Tensor,
    t: f64,
) -> Result<Tensor> {
    let a = alpha_at(alphas_cumprod, t)?;
    let noise = noise.to_dtype(original.dtype())?;
    Ok((scale(original, a.sqrt())? + scale(&noise, (1.0 - a).sqrt())?)?)
}
