//! The training-side view of a scheduler configuration: the forward process, the v-prediction target and
//! the SNR, as diffusers' `DDPMScheduler.add_noise` / `get_velocity` compute them.

use candle_core::Tensor;

use super::config::SchedulerConfig;
use super::schedule::{self, LINEAR_DEFAULTS};
use crate::{Error, Result};

/// The alphas_cumprod of a configuration, for training.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    alphas_cumprod: Vec<f32>,
}

impl NoiseSchedule {
    /// The schedule of `config` (with DDPM's defaults for missing keys; zero-SNR rescaling honored).
    pub fn from_config(config: &SchedulerConfig) -> Result<Self> {
        let n_train = config.train_timesteps()?;
        Ok(Self {
            alphas_cumprod: schedule::alphas_cumprod_for(config, LINEAR_DEFAULTS, n_train)?,
        })
    }

    /// The cumulative products of the alphas, one per training timestep.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// The number of training timesteps.
    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// The signal-to-noise ratio `ac / (1 - ac)` at timestep `t`.
    pub fn snr(&self, t: usize) -> Result<f64> {
        let a = self.at(t)? as f64;
        Ok(a / (1.0 - a))
    }

    /// `sqrt(ac_t) * x0 + sqrt(1 - ac_t) * noise`, with one timestep per batch item.
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, timesteps: &[usize]) -> Result<Tensor> {
        let (a, b) = self.coefficients(x0, timesteps)?;
        Ok((x0.broadcast_mul(&a)? + noise.to_dtype(x0.dtype())?.broadcast_mul(&b)?)?)
    }

    /// The v-prediction target `sqrt(ac_t) * noise - sqrt(1 - ac_t) * x0`, one timestep per batch item.
    pub fn velocity(&self, x0: &Tensor, noise: &Tensor, timesteps: &[usize]) -> Result<Tensor> {
        let (a, b) = self.coefficients(x0, timesteps)?;
        Ok((noise.to_dtype(x0.dtype())?.broadcast_mul(&a)? - x0.broadcast_mul(&b)?)?)
    }

    /// `alphas_cumprod[t]`, or an error naming `t`.
    fn at(&self, t: usize) -> Result<f32> {
        self.alphas_cumprod.get(t).copied().ok_or_else(|| {
            Error::invalid(
                "timestep",
                format!("{t} is out of range (0..{})", self.alphas_cumprod.len()),
            )
        })
    }

    /// `sqrt(ac_t)` and `sqrt(1 - ac_t)` as [B, 1, 1, ...] tensors in the sample's dtype.
    fn coefficients(&self, x: &Tensor, timesteps: &[usize]) -> Result<(Tensor, Tensor)> {
        let batch = x.dims().first().copied().unwrap_or(0);
        if timesteps.len() != batch {
            return Err(Error::invalid(
                "timesteps",
                format!("{} timesteps for a batch of {batch}", timesteps.len()),
            ));
        }
        let mut shape = vec![1usize; x.rank()];
        shape[0] = batch;
        let mut sqrt_a = Vec::with_capacity(batch);
        let mut sqrt_b = Vec::with_capacity(batch);
        for &t in timesteps {
            let a = self.at(t)?;
            sqrt_a.push(a.sqrt());
            sqrt_b.push((1.0 - a).sqrt());
        }
        let make = |v: Vec<f32>| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, shape.as_slice(), x.device())?.to_dtype(x.dtype())?)
        };
        Ok((make(sqrt_a)?, make(sqrt_b)?))
    }
}
