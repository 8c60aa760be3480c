//! Classifier-free guidance: combining the unconditional and conditional predictions, the guidance rescale of
//! "Common Diffusion Noise Schedules and Sample Steps are Flawed", and LCM's guidance-scale embedding.

use candle_core::{DType, Device, Tensor};

use crate::Result;

/// `uncond + scale · (cond − uncond)` for a batch laid out as `[uncond; cond]`, then the guidance rescale φ
/// (`rescale_noise_cfg`) when `rescale > 0`.
pub fn combine(prediction: &Tensor, scale: f64, rescale: f64) -> Result<Tensor> {
    let halves = prediction.chunk(2, 0)?;
    let (uncond, cond) = (&halves[0], &halves[1]);
    let guided = (uncond + ((cond - uncond)? * scale)?)?;
    if rescale > 0.0 {
        rescale_noise_cfg(&guided, cond, rescale)
    } else {
        Ok(guided)
    }
}

/// Rescales the guided prediction to the per-sample standard deviation of the conditional one, mixed by φ.
pub fn rescale_noise_cfg(guided: &Tensor, cond: &Tensor, phi: f64) -> Result<Tensor> {
    let std_cond = per_sample_std(cond)?;
    let std_guided = per_sample_std(guided)?;
    let rescaled = guided.broadcast_mul(&(std_cond / std_guided)?)?;
    Ok(((rescaled * phi)? + (guided * (1.0 - phi))?)?)
}

/// The unbiased standard deviation over every dimension but the first, shaped to broadcast (`[n, 1, 1, 1]`).
fn per_sample_std(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(0)?;
    let flat = x.reshape((n, ()))?;
    let count = flat.dim(1)? as f64;
    let mean = flat.mean_keepdim(1)?;
    let var = (flat.broadcast_sub(&mean)?.sqr()?.sum_keepdim(1)? / (count - 1.0))?;
    let mut shape = vec![n];
    shape.extend(std::iter::repeat_n(1, x.rank() - 1));
    Ok(var.sqrt()?.reshape(shape)?)
}

/// LCM's `get_guidance_scale_embedding` for guidance `w` (the pipeline passes `guidance_scale − 1`), repeated
/// `batch` times: `[batch, dim]`.
pub fn guidance_scale_embedding(
    w: f64,
    dim: usize,
    batch: usize,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let half = dim / 2;
    let w = w as f32 * 1000.0;
    let step = 10000f32.ln() / (half as f32 - 1.0);
    let mut row: Vec<f32> = Vec::with_capacity(dim);
    let args: Vec<f32> = (0..half).map(|i| w * (i as f32 * -step).exp()).collect();
    row.extend(args.iter().map(|a| a.sin()));
    row.extend(args.iter().map(|a| a.cos()));
    if dim % 2 == 1 {
        row.push(0.0);
    }
    let emb = Tensor::from_vec(row, (1, dim), device)?.repeat((batch, 1))?;
    Ok(emb.to_dtype(dtype)?)
}
