//! Timestep embeddings: the sinusoidal projection and the MLP that widens it.

use crate::kernels::linear::{linear, linear_no_bias, Linear};
use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;

use super::activations::Activation;

/// diffusers' `get_timestep_embedding` (`Timesteps`): `timesteps` `[n]` → `[n, dim]` in f32.
pub fn timestep_embedding(
    timesteps: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    // The frequencies in f32 with torch's order of operations, so the embedding matches to the ulp.
    let log_max_period = -(10000f64.ln()) as f32;
    let denominator = (half as f64 - freq_shift) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (i as f32 * log_max_period / denominator).exp())
        .collect();
    let freqs = Tensor::from_vec(freqs, half, timesteps.device())?;
    let args = timesteps
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs.unsqueeze(0)?)?;
    let (first, second) = if flip_sin_to_cos {
        (args.cos()?, args.sin()?)
    } else {
        (args.sin()?, args.cos()?)
    };
    let emb = Tensor::cat(&[first, second], 1)?;
    if dim % 2 == 1 {
        emb.pad_with_zeros(1, 0, 1)
    } else {
        Ok(emb)
    }
}

/// diffusers' `TimestepEmbedding`: linear → activation → linear, with LCM's optional condition projection.
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
    cond_proj: Option<Linear>,
    act: Activation,
    post_act: Option<Activation>,
}

impl TimestepEmbedding {
    /// Builds the MLP from weights under `vb`.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        time_embed_dim: usize,
        act: Activation,
        post_act: Option<Activation>,
        cond_proj_dim: Option<usize>,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            linear_1: linear(in_channels, time_embed_dim, vb.pp("linear_1"))?,
            linear_2: linear(time_embed_dim, time_embed_dim, vb.pp("linear_2"))?,
            cond_proj: cond_proj_dim
                .map(|d| linear_no_bias(d, in_channels, vb.pp("cond_proj")))
                .transpose()?,
            act,
            post_act,
        })
    }

    /// Embeds `sample` (`[n, in_channels]`), adding the projected `condition` when the model has `cond_proj`.
    pub fn forward(
        &self,
        sample: &Tensor,
        condition: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let sample = match (&self.cond_proj, condition) {
            (Some(proj), Some(c)) => (sample + proj.forward(c)?)?,
            _ => sample.clone(),
        };
        let h = self
            .linear_2
            .forward(&self.act.forward(&self.linear_1.forward(&sample)?)?)?;
        match self.post_act {
            Some(act) => act.forward(&h),
            None => Ok(h),
        }
    }
}
