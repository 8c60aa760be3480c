//! `AutoencoderKL`: compresses images 8× per side into latents and back.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use super::config::AutoencoderKLConfig;
use super::decoder::Decoder;
use super::encoder::Encoder;
use super::tiling::{tiled_decode, VaeTiling};
use crate::models::activations::Activation;
use crate::models::conv::Conv2d;
use crate::rng::{randn_tensor, NoiseSource};
use crate::{Error, Result};

const FILE: &str = "vae/config.json";

/// The diagonal Gaussian the encoder produces for each latent pixel.
#[derive(Debug, Clone)]
pub struct LatentDistribution {
    /// The mean: `[batch, latent_channels, h, w]`.
    pub mean: Tensor,
    /// The log-variance, clamped to [-30, 20] as diffusers does.
    pub logvar: Tensor,
}

impl LatentDistribution {
    /// `mean + std · ε` with ε drawn from `noise` in the mean's shape (diffusers' `latent_dist.sample`).
    pub fn sample(&self, noise: &mut dyn NoiseSource) -> Result<Tensor> {
        let eps = randn_tensor(
            noise,
            self.mean.dims(),
            self.mean.device(),
            self.mean.dtype(),
        )?;
        let std = (&self.logvar * 0.5)?.exp()?;
        Ok((&self.mean + (std * eps)?)?)
    }
}

/// The VAE, built from its diffusers config and weights.
pub struct AutoencoderKL {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    config: AutoencoderKLConfig,
    dtype: DType,
    device: Device,
    tiling: Option<VaeTiling>,
}

fn check_block_types(types: &[String], key: &str, expected: &str, levels: usize) -> Result<()> {
    if types.len() != levels {
        return Err(Error::unsupported(
            FILE,
            key,
            format!("{} entries", types.len()),
            format!("{levels}, one per entry of block_out_channels"),
        ));
    }
    match types.iter().find(|t| t.as_str() != expected) {
        Some(bad) => Err(Error::unsupported(
            FILE,
            key,
            bad,
            format!("\"{expected}\""),
        )),
        None => Ok(()),
    }
}

impl AutoencoderKL {
    /// Builds the VAE from weights under `vb` (the root of `diffusion_pytorch_model.safetensors`).
    pub fn new(vb: VarBuilder, cfg: &AutoencoderKLConfig) -> Result<Self> {
        let levels = cfg.block_out_channels.len();
        if levels == 0 {
            return Err(Error::unsupported(
                FILE,
                "block_out_channels",
                "[]",
                "at least one level",
            ));
        }
        check_block_types(
            &cfg.down_block_types,
            "down_block_types",
            "DownEncoderBlock2D",
            levels,
        )?;
        check_block_types(
            &cfg.up_block_types,
            "up_block_types",
            "UpDecoderBlock2D",
            levels,
        )?;
        if let Some(bad) = cfg
            .block_out_channels
            .iter()
            .find(|&&c| cfg.norm_num_groups == 0 || c % cfg.norm_num_groups != 0)
        {
            return Err(Error::unsupported(
                FILE,
                "norm_num_groups",
                cfg.norm_num_groups,
                format!("a divisor of every block's channels ({bad})"),
            ));
        }
        let act = Activation::parse(&cfg.act_fn, FILE, "act_fn")?;
        let lc = cfg.latent_channels;
        let quant_conv = cfg
            .use_quant_conv
            .then(|| Conv2d::new(vb.pp("quant_conv"), 2 * lc, 2 * lc, 1, 0, 1))
            .transpose()?;
        let post_quant_conv = cfg
            .use_post_quant_conv
            .then(|| Conv2d::new(vb.pp("post_quant_conv"), lc, lc, 1, 0, 1))
            .transpose()?;
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), cfg, act)?,
            decoder: Decoder::new(vb.pp("decoder"), cfg, act)?,
            quant_conv,
            post_quant_conv,
            config: cfg.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
            tiling: None,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &AutoencoderKLConfig {
        &self.config
    }

    /// The dtype the weights are held in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Encodes `image` (`[batch, 3, h, w]` in [-1, 1]) to its latent distribution.
    pub fn encode(&self, image: &Tensor) -> Result<LatentDistribution> {
        let h = self.encoder.forward(image)?;
        let moments = match &self.quant_conv {
            Some(conv) => conv.forward(&h)?,
            None => h,
        };
        let parts = moments.chunk(2, 1)?;
        Ok(LatentDistribution {
            mean: parts[0].clone(),
            logvar: parts[1].clamp(-30f32, 20f32)?,
        })
    }

    /// Maps a posterior sample to diffusion latents: `(z − mean) · scaling_factor / std` when the config has
    /// per-channel statistics, else `(z − shift_factor) · scaling_factor`.
    pub fn scale_latents(&self, z: &Tensor) -> Result<Tensor> {
        let sf = self.config.scaling_factor;
        if let Some((mean, std)) = self.channel_stats(z)? {
            return Ok((z.broadcast_sub(&mean)? * sf)?.broadcast_div(&std)?);
        }
        Ok(z.affine(sf, -self.config.shift_factor.unwrap_or(0.0) * sf)?)
    }

    /// The inverse of [`AutoencoderKL::scale_latents`]: diffusion latents to the decoder's input.
    pub fn unscale_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let sf = self.config.scaling_factor;
        if let Some((mean, std)) = self.channel_stats(latents)? {
            return Ok((latents.broadcast_mul(&std)? / sf)?.broadcast_add(&mean)?);
        }
        Ok(latents.affine(1.0 / sf, self.config.shift_factor.unwrap_or(0.0))?)
    }

    fn channel_stats(&self, like: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        let (Some(mean), Some(std)) = (&self.config.latents_mean, &self.config.latents_std) else {
            return Ok(None);
        };
        let channels = self.config.latent_channels;
        if mean.len() != channels || std.len() != channels {
            return Err(Error::unsupported(
                FILE,
                "latents_mean/latents_std",
                format!("{}/{} values", mean.len(), std.len()),
                format!("{channels}, one per latent channel"),
            ));
        }
        let as_tensor = |v: &[f64]| -> Result<Tensor> {
            let values: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            Ok(
                Tensor::from_vec(values, (1, channels, 1, 1), like.device())?
                    .to_dtype(like.dtype())?,
            )
        };
        Ok(Some((as_tensor(mean)?, as_tensor(std)?)))
    }

    /// Decodes in overlapping tiles from now on (diffusers' `enable_tiling()` with its default geometry), so
    /// the decoder's memory is that of one tile whatever the image size.
    pub fn enable_tiling(&mut self) {
        self.tiling = Some(VaeTiling::for_config(&self.config));
    }

    /// Whether decoding goes tile by tile.
    pub fn is_tiled(&self) -> bool {
        self.tiling.is_some()
    }

    /// Sets the tile geometry, or turns tiling off with `None`.
    pub fn set_tiling(&mut self, tiling: Option<VaeTiling>) {
        self.tiling = tiling;
    }

    /// The tile geometry when tiled decoding is on.
    pub fn tiling(&self) -> Option<&VaeTiling> {
        self.tiling.as_ref()
    }

    /// Decodes raw latents `z` (already divided by the scaling factor) to an image in about [-1, 1]; in tiles
    /// when tiling is on and `z` is larger than one tile, as diffusers does.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = z.dims4()?;
        match &self.tiling {
            Some(tiling) if tiling.applies_to(h, w) => {
                tiled_decode(z, tiling, |tile| self.decode_whole(tile))
            }
            _ => self.decode_whole(z),
        }
    }

    fn decode_whole(&self, z: &Tensor) -> Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(z)?,
            None => z.clone(),
        };
        Ok(self.decoder.forward(&z)?)
    }
}
