//! The training objectives: the VAE's reconstruction + KL loss, and the denoiser's noise-prediction MSE with
//! ε or v targets, min-SNR-γ weighting and offset noise (diffusers' `train_text_to_image.py` formulation).

use candle_core::{Device, Tensor};

use crate::timestep_bias::TimestepSampler;
use diffuse::models::vae::LatentDistribution;
use diffuse::rng::TorchCpuRng;
use diffuse::schedulers::NoiseSchedule;
use diffuse::{Error, Result};

/// What the denoiser learns to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The added noise ε (`prediction_type: "epsilon"`).
    Epsilon,
    /// The velocity v = √ᾱ·ε − √(1−ᾱ)·x₀ (`prediction_type: "v_prediction"`).
    VPrediction,
}

impl Prediction {
    /// Parses a scheduler config's `prediction_type`; `what` names the source in errors.
    pub fn parse(name: &str, what: &str) -> Result<Self> {
        match name {
            "epsilon" => Ok(Prediction::Epsilon),
            "v_prediction" => Ok(Prediction::VPrediction),
            other => Err(Error::invalid(
                what,
                format!("{other:?}: training supports \"epsilon\" or \"v_prediction\""),
            )),
        }
    }

    /// The scheduler config's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Prediction::Epsilon => "epsilon",
            Prediction::VPrediction => "v_prediction",
        }
    }
}

/// A batch of latents noised at random timesteps, with what the denoiser should predict.
pub struct NoisedBatch {
    /// `√ᾱ_t·x₀ + √(1−ᾱ_t)·ε`.
    pub noisy: Tensor,
    /// The timesteps `[batch]` (f32), as the UNet takes them.
    pub timesteps: Tensor,
    /// ε or v.
    pub target: Tensor,
    /// The per-sample loss weights `[batch]` (all 1 without min-SNR weighting).
    pub weights: Tensor,
}

impl NoisedBatch {
    /// The samples `range` of the batch.
    pub fn narrow(&self, range: std::ops::Range<usize>) -> Result<NoisedBatch> {
        let part = |t: &Tensor| t.narrow(0, range.start, range.len());
        Ok(NoisedBatch {
            noisy: part(&self.noisy)?,
            timesteps: part(&self.timesteps)?,
            target: part(&self.target)?,
            weights: part(&self.weights)?,
        })
    }
}

/// The denoising objective over a noise schedule.
#[derive(Debug, Clone)]
pub struct DenoisingObjective {
    /// The forward process.
    pub schedule: NoiseSchedule,
    /// The target.
    pub prediction: Prediction,
    /// γ of min-SNR-γ weighting (Hang et al. 2023); `None` weighs every timestep equally.
    pub min_snr_gamma: Option<f64>,
    /// Scale of the per-channel constant added to the noise (offset noise); 0 for none.
    pub noise_offset: f64,
    /// Draws the timesteps (uniform, or with a timestep bias).
    pub timesteps: TimestepSampler,
}

impl DenoisingObjective {
    /// Draws timesteps and noise for `latents` (`[batch, C, h, w]`) from `rng`.
    pub fn noise(&self, latents: &Tensor, rng: &mut TorchCpuRng) -> Result<NoisedBatch> {
        let dims = latents.dims().to_vec();
        let (batch, channels) = (dims[0], dims[1]);
        let steps: Vec<usize> = (0..batch).map(|_| self.timesteps.sample(rng)).collect();
        let device = latents.device();
        let mut noise = Tensor::from_vec(rng.randn_f32(&dims), dims.as_slice(), device)?;
        if self.noise_offset != 0.0 {
            let offset = Tensor::from_vec(
                rng.randn_f32(&[batch, channels, 1, 1]),
                (batch, channels, 1, 1),
                device,
            )?;
            noise = noise.broadcast_add(&(offset * self.noise_offset)?)?;
        }
        let noisy = self.schedule.add_noise(latents, &noise, &steps)?;
        let target = match self.prediction {
            Prediction::Epsilon => noise,
            Prediction::VPrediction => self.schedule.velocity(latents, &noise, &steps)?,
        };
        let weights = self.loss_weights(&steps, device)?;
        let timesteps: Vec<f32> = steps.iter().map(|&t| t as f32).collect();
        Ok(NoisedBatch {
            noisy,
            timesteps: Tensor::from_vec(timesteps, batch, device)?,
            target,
            weights,
        })
    }

    /// The per-sample loss weights `[batch]` for `steps`: min-SNR-γ's `min(SNR, γ)/SNR` for ε and
    /// `min(SNR, γ)/(SNR + 1)` for v, or all 1 without the weighting.
    pub fn loss_weights(&self, steps: &[usize], device: &Device) -> Result<Tensor> {
        let weights = steps
            .iter()
            .map(|&t| {
                let Some(gamma) = self.min_snr_gamma else {
                    return Ok(1.0);
                };
                let snr = self.schedule.snr(t)?;
                Ok(match self.prediction {
                    Prediction::Epsilon => snr.min(gamma) / snr,
                    Prediction::VPrediction => snr.min(gamma) / (snr + 1.0),
                } as f32)
            })
            .collect::<Result<Vec<f32>>>()?;
        Ok(Tensor::from_vec(weights, steps.len(), device)?)
    }

    /// The weighted mean squared error of `prediction` against the batch's target.
    pub fn loss(&self, prediction: &Tensor, batch: &NoisedBatch) -> Result<Tensor> {
        let per_sample = (prediction - &batch.target)?
            .sqr()?
            .flatten_from(1)?
            .mean(1)?;
        Ok((per_sample * &batch.weights)?.mean_all()?)
    }
}

/// How the VAE's reconstruction error is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconstruction {
    /// Mean absolute error (latent diffusion's choice: sharper edges than MSE).
    L1,
    /// Mean squared error.
    Mse,
}

/// The parts of the VAE loss.
pub struct VaeLoss {
    /// `reconstruction + kl_weight · kl`, to minimize.
    pub total: Tensor,
    /// The reconstruction error per pixel value.
    pub reconstruction: Tensor,
    /// The KL divergence of the posterior from N(0, 1), per latent value.
    pub kl: Tensor,
}

/// The VAE objective: the reconstruction error in [-1, 1] units (`error`) plus `kl_weight` times the mean
/// KL divergence `½(μ² + σ² − 1 − log σ²)` of the posterior from the standard normal.
pub fn vae_loss(
    reconstruction: &Tensor,
    target: &Tensor,
    posterior: &LatentDistribution,
    error: Reconstruction,
    kl_weight: f64,
) -> Result<VaeLoss> {
    let diff = (reconstruction - target)?;
    let mse = match error {
        Reconstruction::L1 => diff.abs()?.mean_all()?,
        Reconstruction::Mse => diff.sqr()?.mean_all()?,
    };
    let logvar = &posterior.logvar;
    let kl = ((posterior.mean.sqr()? + logvar.exp()?)? - logvar)?
        .affine(0.5, -0.5)?
        .mean_all()?;
    let total = (&mse + (&kl * kl_weight)?)?;
    Ok(VaeLoss {
        total,
        reconstruction: mse,
        kl,
    })
}
