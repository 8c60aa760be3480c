//! The starting latents of a generation, as each of diffusers' pipelines prepares them: drawn noise
//! (text-to-image), the noised VAE encoding of an image (image-to-image), or both plus the mask state
//! (inpainting). Random draws happen in diffusers' order: posterior samples before the noise.

use candle_core::Tensor;

use super::images::RgbImage;
use super::request::RequestField;
use super::request::{GenerationRequest, InitImage};
use super::stable_diffusion::StableDiffusion;
use crate::rng::{randn_tensor, NoiseSource};
use crate::schedulers::Scheduler;
use crate::{Error, Result};

/// Which of diffusers' pipelines a request runs, with its inputs.
pub(super) enum Mode<'a> {
    /// Text-to-image, optionally from given initial latents.
    TextToImage(Option<&'a Tensor>),
    /// Image-to-image.
    ImageToImage(&'a InitImage),
    /// Inpainting; `unet_takes_mask` for 9-channel inpainting UNets (mask and masked-image latents are part of
    /// the UNet input), else an ordinary UNet whose kept region is reset to the noised original after each step.
    Inpaint {
        init: &'a InitImage,
        mask: &'a RgbImage,
        unet_takes_mask: bool,
    },
}

impl<'a> Mode<'a> {
    /// The mode of `req`, checked against the UNet's input channels.
    pub(super) fn of(
        req: &'a GenerationRequest,
        unet_channels: usize,
        latent_channels: usize,
    ) -> Result<Self> {
        let inpainting_unet = unet_channels == 2 * latent_channels + 1;
        let mode = match &req.init {
            None => Mode::TextToImage(req.latents.as_ref()),
            Some(init) => match &init.mask {
                None => Mode::ImageToImage(init),
                Some(mask) => Mode::Inpaint {
                    init,
                    mask,
                    unet_takes_mask: inpainting_unet,
                },
            },
        };
        let (name, needs) = match &mode {
            Mode::TextToImage(_) => ("text-to-image", latent_channels),
            Mode::ImageToImage(_) => ("image-to-image", latent_channels),
            Mode::Inpaint { .. } if inpainting_unet => ("inpainting", unet_channels),
            Mode::Inpaint { .. } => ("inpainting", latent_channels),
        };
        if unet_channels != needs {
            let hint = if inpainting_unet {
                " (an inpainting model needs an image and a mask)"
            } else {
                ""
            };
            return Err(Error::invalid(
                RequestField::Mask.name(),
                format!("this model's UNet takes {unet_channels} input channels; {name} needs {needs}{hint}"),
            ));
        }
        Ok(mode)
    }

    /// The strength of image-to-image and inpainting.
    pub(super) fn strength(&self) -> Option<f64> {
        match self {
            Mode::TextToImage(_) => None,
            Mode::ImageToImage(init) | Mode::Inpaint { init, .. } => Some(init.strength),
        }
    }
}

/// The sizes and settings latent preparation needs.
pub(super) struct Plan {
    /// Output width in pixels.
    pub width: usize,
    /// Output height in pixels.
    pub height: usize,
    /// `[images, latent channels, height / f, width / f]`.
    pub shape: [usize; 4],
    /// The first timestep that will run (where image-to-image noises its start).
    pub first_timestep: f64,
    /// Whether classifier-free guidance doubles the batch.
    pub guidance: bool,
}

/// The starting latents and, for inpainting, the state each step needs.
pub(super) struct Prepared {
    /// The latents the first step denoises.
    pub latents: Tensor,
    /// Inpainting state.
    pub inpaint: Option<InpaintState>,
}

/// Prepares the starting latents for `mode`.
pub(super) fn prepare_latents(
    pipe: &StableDiffusion,
    mode: &Mode,
    plan: &Plan,
    scheduler: &mut dyn Scheduler,
    noise: &mut dyn NoiseSource,
) -> Result<Prepared> {
    let (device, dtype) = (pipe.device(), pipe.dtype());
    let draw = |noise: &mut dyn NoiseSource| randn_tensor(noise, &plan.shape, device, dtype);
    match mode {
        Mode::TextToImage(given) => {
            let latents = match given {
                Some(given) if given.dims() != plan.shape => {
                    return Err(Error::invalid(
                        RequestField::Latents.name(),
                        format!("shape {:?}, expected {:?}", given.dims(), plan.shape),
                    ))
                }
                Some(given) => given.to_device(device)?.to_dtype(dtype)?,
                None => draw(noise)?,
            };
            Ok(Prepared {
                latents: (latents * scheduler.init_noise_sigma())?,
                inpaint: None,
            })
        }
        Mode::ImageToImage(init) => {
            let image = encode_image(pipe, &init.image, plan, noise)?;
            let eps = draw(noise)?;
            Ok(Prepared {
                latents: scheduler.add_noise(&image, &eps, plan.first_timestep)?,
                inpaint: None,
            })
        }
        Mode::Inpaint {
            init,
            mask,
            unet_takes_mask,
        } => {
            let full_strength = init.strength >= 1.0;
            // The image latents are drawn (posterior sample) before the noise, as diffusers does.
            let image_latents = if !unet_takes_mask || !full_strength {
                Some(encode_image(pipe, &init.image, plan, noise)?)
            } else {
                None
            };
            let eps = draw(noise)?;
            let latents = match (&image_latents, full_strength) {
                (Some(image), false) => scheduler.add_noise(image, &eps, plan.first_timestep)?,
                _ => (&eps * scheduler.init_noise_sigma())?,
            };
            let mask = mask
                .resized(plan.width, plan.height)
                .to_mask_tensor(device, dtype)?;
            // The masked image keeps the pixels where the mask is below 0.5; diffusers encodes it (another
            // posterior draw) whatever the UNet.
            let image = init
                .image
                .resized(plan.width, plan.height)
                .to_tensor(device, dtype)?;
            let masked = image.broadcast_mul(&mask.lt(0.5)?.to_dtype(dtype)?)?;
            let masked_latents = scale_and_repeat(pipe, &masked, plan, noise)?;
            let small_mask = mask
                .upsample_nearest2d(plan.shape[2], plan.shape[3])?
                .repeat((plan.shape[0], 1, 1, 1))?;
            let doubled = |t: &Tensor| -> Result<Tensor> {
                Ok(if plan.guidance {
                    Tensor::cat(&[t, t], 0)?
                } else {
                    t.clone()
                })
            };
            Ok(Prepared {
                latents,
                inpaint: Some(InpaintState {
                    unet_extra: if *unet_takes_mask {
                        Some((doubled(&small_mask)?, doubled(&masked_latents)?))
                    } else {
                        None
                    },
                    mask: small_mask,
                    image_latents,
                    noise: eps,
                }),
            })
        }
    }
}

/// The image resized to the output size, encoded, sampled and scaled, repeated for every image of the batch.
fn encode_image(
    pipe: &StableDiffusion,
    image: &RgbImage,
    plan: &Plan,
    noise: &mut dyn NoiseSource,
) -> Result<Tensor> {
    let pixels = image
        .resized(plan.width, plan.height)
        .to_tensor(pipe.device(), pipe.dtype())?;
    scale_and_repeat(pipe, &pixels, plan, noise)
}

fn scale_and_repeat(
    pipe: &StableDiffusion,
    pixels: &Tensor,
    plan: &Plan,
    noise: &mut dyn NoiseSource,
) -> Result<Tensor> {
    let vae = &pipe.vae;
    let sample = vae.encode(&pixels.to_dtype(vae.dtype())?)?.sample(noise)?;
    Ok(vae
        .scale_latents(&sample)?
        .to_dtype(pipe.dtype())?
        .repeat((plan.shape[0], 1, 1, 1))?)
}

/// What each inpainting step needs.
pub(super) struct InpaintState {
    /// The mask at latent resolution, one row per image.
    mask: Tensor,
    /// For 9-channel UNets: the mask and the masked image's latents, batched like the UNet input.
    unet_extra: Option<(Tensor, Tensor)>,
    /// The original image's latents (what the kept region is reset to).
    image_latents: Option<Tensor>,
    /// The noise the original is noised with at each step.
    noise: Tensor,
}

impl InpaintState {
    /// The UNet input: the latents, plus the mask and masked-image latents for 9-channel UNets.
    pub(super) fn unet_input(&self, latents: &Tensor) -> Result<Tensor> {
        match &self.unet_extra {
            Some((mask, masked)) => Ok(Tensor::cat(&[latents, mask, masked], 1)?),
            None => Ok(latents.clone()),
        }
    }

    /// diffusers' blending for ordinary UNets after a step: the original (noised to the next timestep) where the
    /// mask is 0, the denoised latents where it is 1. 9-channel UNets need none.
    pub(super) fn blend(
        &self,
        latents: &Tensor,
        next_t: Option<f64>,
        scheduler: &dyn Scheduler,
    ) -> Result<Tensor> {
        let (None, Some(original)) = (&self.unet_extra, &self.image_latents) else {
            return Ok(latents.clone());
        };
        let original = match next_t {
            Some(t) => scheduler.add_noise(original, &self.noise, t)?,
            None => original.clone(),
        };
        let keep = self.mask.affine(-1.0, 1.0)?;
        Ok((original.broadcast_mul(&keep)? + latents.broadcast_mul(&self.mask)?)?)
    }
}
