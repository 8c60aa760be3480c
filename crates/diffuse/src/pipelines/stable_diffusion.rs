//! The loaded Stable Diffusion pipeline (SD 1.x / 2.x architecture) and one generation through it:
//! text-to-image, image-to-image and inpainting, step for step as diffusers' pipelines run them.

use std::ops::ControlFlow;

use candle_core::{DType, Device, Tensor};

use super::guidance::{combine, guidance_scale_embedding};
use super::images::RgbImage;
use super::prompt::TextEncoders;
use super::request::{GenerationRequest, InitImage};
use crate::loaders::{LoadOptions, PipelineFolder};
use crate::models::unet::{ExtraConditioning, UNet2DConditionModel};
use crate::models::vae::AutoencoderKL;
use crate::rng::{randn_tensor, NoiseSource};
use crate::schedulers::{Scheduler, SchedulerConfig, TimestepRequest};
use crate::{Error, Result};

/// The pipeline classes whose folders [`StableDiffusion::load`] accepts.
pub const SUPPORTED_PIPELINES: [&str; 5] = [
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
];

/// A loaded pipeline: immutable, so one instance (behind an `Arc`) serves many generations at once; all
/// per-generation state lives in [`StableDiffusion::generate`]'s own values.
pub struct StableDiffusion {
    /// The tokenizer(s) and text encoder(s).
    pub text: TextEncoders,
    /// The denoiser.
    pub unet: UNet2DConditionModel,
    /// The VAE (kept in f32 when the pipeline runs in f16 and the VAE config asks for `force_upcast`).
    pub vae: AutoencoderKL,
    /// The folder's scheduler configuration, the default for every generation.
    pub scheduler: SchedulerConfig,
    requires_aesthetics_score: bool,
    dtype: DType,
    device: Device,
}

/// Where a generation stands after a step, passed to the progress callback.
pub struct Progress<'a> {
    /// Steps done (1-based).
    pub step: usize,
    /// Steps in this generation (after image-to-image's strength cut).
    pub total: usize,
    /// The timestep just denoised.
    pub timestep: f64,
    /// The latents after this step (for previews).
    pub latents: &'a Tensor,
}

/// What a generation produced.
pub struct Generated {
    /// The final latents `[n, C, h, w]` before decoding, exactly as diffusers returns them with
    /// `output_type="latent"`.
    pub latents: Tensor,
    /// The decoded images.
    pub images: Vec<RgbImage>,
}

impl StableDiffusion {
    /// Loads every component of `folder`.
    pub fn load(folder: &PipelineFolder, opts: &LoadOptions) -> Result<Self> {
        let class = folder.index().class_name.as_str();
        if !SUPPORTED_PIPELINES.contains(&class) {
            return Err(Error::unsupported(
                "model_index.json",
                "_class_name",
                class,
                format!("one of {}", SUPPORTED_PIPELINES.join(", ")),
            ));
        }
        let vae_config = folder.vae_config()?;
        let vae_opts = if opts.dtype == DType::F16 && vae_config.force_upcast {
            LoadOptions {
                dtype: DType::F32,
                ..opts.clone()
            }
        } else {
            opts.clone()
        };
        let scheduler_path = folder
            .component_dir("scheduler")?
            .join("scheduler_config.json");
        Ok(Self {
            text: TextEncoders::load(folder, opts)?,
            unet: folder.load_unet(opts)?,
            vae: folder.load_vae(&vae_opts)?,
            scheduler: SchedulerConfig::from_file(&scheduler_path)?,
            requires_aesthetics_score: folder.index().flag("requires_aesthetics_score", false),
            dtype: opts.dtype,
            device: opts.device.clone(),
        })
    }

    /// The dtype the UNet and text encoder compute in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the models run on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Image pixels per latent pixel, per side.
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.config().scale_factor()
    }

    /// The default output (width, height): the UNet's sample size times the VAE factor.
    pub fn default_size(&self) -> (usize, usize) {
        let f = self.vae_scale_factor();
        let (h, w) = self.unet.config().sample_size_hw().unwrap_or((64, 64));
        (w * f, h * f)
    }

    /// Runs one generation. `noise` supplies every random draw in diffusers' order (initial latents, VAE
    /// posterior samples, ancestral/SDE noise); `progress` is called after each step and may stop the
    /// generation by returning `ControlFlow::Break(())`, which yields [`Error::Cancelled`].
    pub fn generate(
        &self,
        req: &GenerationRequest,
        noise: &mut dyn NoiseSource,
        progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<Generated> {
        req.validate()?;
        let (width, height) = self.output_size(req)?;
        let f = self.vae_scale_factor();
        let n = req.num_images;
        let unet_channels = self.unet.config().in_channels;
        let latent_channels = self.vae.config().latent_channels;
        let time_cond_dim = self.unet.config().time_cond_proj_dim;
        let guidance = req.guidance_scale > 1.0 && time_cond_dim.is_none();
        let mode = Mode::of(req, unet_channels, latent_channels)?;

        let conditioning = self.text.encode(
            &req.prompt,
            &req.negative_prompt,
            n,
            guidance,
            req.clip_skip,
        )?;
        let context = conditioning.context.to_dtype(self.dtype)?;

        let mut scheduler_config = req
            .scheduler
            .clone()
            .unwrap_or_else(|| self.scheduler.clone());
        scheduler_config.eta = Some(req.eta);
        let mut scheduler = scheduler_config.build(&TimestepRequest::Steps(req.steps))?;
        let mut timesteps = scheduler.timesteps().to_vec();
        if let Some(init) = &req.init {
            let strength = init.strength;
            let init_steps = ((req.steps as f64 * strength) as usize).min(req.steps);
            let t_start = req.steps - init_steps;
            let skip = t_start * scheduler.order();
            timesteps = timesteps
                .get(skip..)
                .map(<[f64]>::to_vec)
                .unwrap_or_default();
            scheduler.set_begin_index(skip);
            if req.steps - t_start < 1 {
                return Err(Error::invalid(
                    "strength",
                    format!(
                        "{strength} leaves {} of the {} steps to run; raise --strength or --steps",
                        req.steps - t_start,
                        req.steps
                    ),
                ));
            }
        }

        let latent_shape = [n, latent_channels, height / f, width / f];
        let prepared = self.prepare_latents(
            req,
            &mode,
            &latent_shape,
            &timesteps,
            scheduler.as_mut(),
            noise,
            (width, height),
            guidance,
        )?;
        let mut latents = prepared.latents;

        let extra = ExtraConditioning {
            timestep_cond: time_cond_dim
                .map(|dim| {
                    guidance_scale_embedding(
                        req.guidance_scale - 1.0,
                        dim,
                        n,
                        &self.device,
                        self.dtype,
                    )
                })
                .transpose()?,
            time_ids: match conditioning.text_embeds {
                Some(_) => Some(self.time_ids(width, height, guidance, context.dim(0)?)?),
                None => None,
            },
            text_embeds: conditioning
                .text_embeds
                .map(|t| t.to_dtype(self.dtype))
                .transpose()?,
        };

        let total = timesteps.len();
        for (i, &t) in timesteps.iter().enumerate() {
            let input = if guidance {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let input = scheduler.scale_model_input(&input, t)?;
            let input = match &prepared.inpaint {
                Some(inpaint) if unet_channels == 9 => Tensor::cat(
                    &[
                        &input,
                        &inpaint.mask_model_input,
                        &inpaint.masked_latents_model_input,
                    ],
                    1,
                )?,
                _ => input,
            };
            let timestep = Tensor::new(&[t as f32], &self.device)?;
            let prediction =
                self.unet
                    .forward(&input.to_dtype(self.dtype)?, &timestep, &context, &extra)?;
            let prediction = if guidance {
                // diffusers' inpainting pipeline has no guidance rescale.
                let rescale = if prepared.inpaint.is_some() {
                    0.0
                } else {
                    req.guidance_rescale
                };
                combine(&prediction, req.guidance_scale, rescale)?
            } else {
                prediction
            };
            latents = scheduler.step(&prediction, t, &latents, noise)?.prev_sample;
            if let (Some(inpaint), true) = (&prepared.inpaint, unet_channels != 9) {
                latents =
                    inpaint.blend(&latents, timesteps.get(i + 1).copied(), scheduler.as_ref())?;
            }
            let info = Progress {
                step: i + 1,
                total,
                timestep: t,
                latents: &latents,
            };
            if progress(&info).is_break() {
                return Err(Error::Cancelled);
            }
        }

        let decoded = self.vae.decode(
            &self
                .vae
                .unscale_latents(&latents.to_dtype(self.vae.dtype())?)?,
        )?;
        Ok(Generated {
            images: RgbImage::from_decoded(&decoded)?,
            latents,
        })
    }

    fn output_size(&self, req: &GenerationRequest) -> Result<(usize, usize)> {
        let f = self.vae_scale_factor();
        let (default_w, default_h) = match &req.init {
            // diffusers' image-to-image keeps the input image's size, rounded down to a multiple of the VAE
            // factor; text-to-image and inpainting default to the UNet's sample size.
            Some(init) if init.mask.is_none() => {
                (init.image.width / f * f, init.image.height / f * f)
            }
            _ => self.default_size(),
        };
        let width = req.width.unwrap_or(default_w);
        let height = req.height.unwrap_or(default_h);
        if width == 0 || height == 0 || !width.is_multiple_of(f) || !height.is_multiple_of(f) {
            return Err(Error::invalid(
                "width/height",
                format!("{width}×{height}: must be positive multiples of {f}"),
            ));
        }
        Ok((width, height))
    }

    fn encode_image(&self, image: &Tensor, noise: &mut dyn NoiseSource) -> Result<Tensor> {
        let dist = self.vae.encode(&image.to_dtype(self.vae.dtype())?)?;
        let latents = dist.sample(noise)?;
        Ok(self.vae.scale_latents(&latents)?.to_dtype(self.dtype)?)
    }

    /// SDXL's micro-conditioning rows: (original size, crop top-left, target size) — or, for refiners, the
    /// aesthetic score (6 positive, 2.5 negative) in place of the target size — for each row of the batch.
    fn time_ids(&self, width: usize, height: usize, guidance: bool, rows: usize) -> Result<Tensor> {
        let (h, w) = (height as f32, width as f32);
        let (positive, negative) = if self.requires_aesthetics_score {
            (vec![h, w, 0.0, 0.0, 6.0], vec![h, w, 0.0, 0.0, 2.5])
        } else {
            (vec![h, w, 0.0, 0.0, h, w], vec![h, w, 0.0, 0.0, h, w])
        };
        let per_row = positive.len();
        let mut values: Vec<f32> = Vec::with_capacity(rows * per_row);
        for r in 0..rows {
            let negative_row = guidance && r < rows / 2;
            values.extend(if negative_row { &negative } else { &positive });
        }
        Ok(Tensor::from_vec(values, (rows, per_row), &self.device)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn prepare_latents(
        &self,
        req: &GenerationRequest,
        mode: &Mode,
        shape: &[usize; 4],
        timesteps: &[f64],
        scheduler: &mut dyn Scheduler,
        noise: &mut dyn NoiseSource,
        (width, height): (usize, usize),
        guidance: bool,
    ) -> Result<Prepared> {
        let n = shape[0];
        let init_sigma = scheduler.init_noise_sigma();
        let init = match (&req.init, mode) {
            (_, Mode::TextToImage) => {
                let latents = match &req.latents {
                    Some(given) => {
                        if given.dims() != shape {
                            return Err(Error::invalid(
                                "latents",
                                format!("shape {:?}, expected {shape:?}", given.dims()),
                            ));
                        }
                        given.to_device(&self.device)?.to_dtype(self.dtype)?
                    }
                    None => randn_tensor(noise, shape, &self.device, self.dtype)?,
                };
                return Ok(Prepared {
                    latents: (latents * init_sigma)?,
                    inpaint: None,
                });
            }
            (Some(init), _) => init,
            (None, _) => {
                return Err(Error::invalid(
                    "image",
                    "required for image-to-image and inpainting",
                ))
            }
        };
        let image = init
            .image
            .resized(width, height)
            .to_tensor(&self.device, self.dtype)?;
        let t0 = timesteps.first().copied().unwrap_or(0.0);
        match mode {
            Mode::TextToImage => unreachable!("handled above"),
            Mode::ImageToImage => {
                let image_latents = self.encode_image(&image, noise)?.repeat((n, 1, 1, 1))?;
                let eps = randn_tensor(noise, shape, &self.device, self.dtype)?;
                Ok(Prepared {
                    latents: scheduler.add_noise(&image_latents, &eps, t0)?,
                    inpaint: None,
                })
            }
            Mode::Inpaint9 | Mode::InpaintBlend => self.prepare_inpaint(
                init,
                &image,
                mode,
                shape,
                t0,
                scheduler,
                noise,
                (width, height),
                guidance,
            ),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn prepare_inpaint(
        &self,
        init: &InitImage,
        image: &Tensor,
        mode: &Mode,
        shape: &[usize; 4],
        t0: f64,
        scheduler: &mut dyn Scheduler,
        noise: &mut dyn NoiseSource,
        (width, height): (usize, usize),
        guidance: bool,
    ) -> Result<Prepared> {
        let n = shape[0];
        let f = self.vae_scale_factor();
        let mask_image = init
            .mask
            .as_ref()
            .ok_or_else(|| Error::invalid("mask", "required for inpainting"))?;
        let mask = mask_image
            .resized(width, height)
            .to_mask_tensor(&self.device, self.dtype)?;
        let full_strength = init.strength >= 1.0;
        let blend = matches!(mode, Mode::InpaintBlend);
        // The image latents are drawn (posterior sample) before the noise, as diffusers does.
        let image_latents = if blend || !full_strength {
            Some(self.encode_image(image, noise)?.repeat((n, 1, 1, 1))?)
        } else {
            None
        };
        let eps = randn_tensor(noise, shape, &self.device, self.dtype)?;
        let latents = match (&image_latents, full_strength) {
            (Some(il), false) => scheduler.add_noise(il, &eps, t0)?,
            _ => (&eps * scheduler.init_noise_sigma())?,
        };
        // Masked image: kept pixels only (mask < 0.5), then its latents (another posterior draw).
        let keep = mask.lt(0.5)?.to_dtype(self.dtype)?;
        let masked_image = image.broadcast_mul(&keep)?;
        let small_mask = mask
            .upsample_nearest2d(height / f, width / f)?
            .repeat((n, 1, 1, 1))?;
        // diffusers encodes the masked image (another posterior draw) whatever the UNet.
        let masked_latents = self
            .encode_image(&masked_image, noise)?
            .repeat((n, 1, 1, 1))?;
        let doubled = |t: &Tensor| -> Result<Tensor> {
            Ok(if guidance {
                Tensor::cat(&[t, t], 0)?
            } else {
                t.clone()
            })
        };
        Ok(Prepared {
            latents,
            inpaint: Some(InpaintState {
                mask_model_input: doubled(&small_mask)?,
                masked_latents_model_input: doubled(&masked_latents)?,
                mask: small_mask,
                image_latents,
                noise: eps,
            }),
        })
    }
}

/// Which of diffusers' three pipelines a request runs.
enum Mode {
    TextToImage,
    ImageToImage,
    /// An inpainting UNet (9 input channels): mask and masked-image latents go into the UNet.
    Inpaint9,
    /// An ordinary UNet with a mask: after each step the kept region is reset to the noised original.
    InpaintBlend,
}

impl Mode {
    fn of(req: &GenerationRequest, unet_channels: usize, latent_channels: usize) -> Result<Self> {
        let mode = match &req.init {
            None => Mode::TextToImage,
            Some(init) if init.mask.is_none() => Mode::ImageToImage,
            Some(_) if unet_channels == 2 * latent_channels + 1 => Mode::Inpaint9,
            Some(_) => Mode::InpaintBlend,
        };
        let needs = match mode {
            Mode::Inpaint9 => 2 * latent_channels + 1,
            _ => latent_channels,
        };
        if unet_channels != needs {
            return Err(Error::invalid(
                "mask",
                format!(
                    "this model's UNet takes {unet_channels} input channels; {} needs {needs}{}",
                    match mode {
                        Mode::TextToImage => "text-to-image",
                        Mode::ImageToImage => "image-to-image",
                        Mode::Inpaint9 | Mode::InpaintBlend => "inpainting",
                    },
                    if unet_channels == 2 * latent_channels + 1 {
                        " (an inpainting model needs --image and --mask)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        Ok(mode)
    }
}

struct Prepared {
    latents: Tensor,
    inpaint: Option<InpaintState>,
}

struct InpaintState {
    mask: Tensor,
    mask_model_input: Tensor,
    masked_latents_model_input: Tensor,
    image_latents: Option<Tensor>,
    noise: Tensor,
}

impl InpaintState {
    /// diffusers' blending for ordinary UNets: keep the original (noised to the next timestep) where the mask
    /// is 0, the denoised latents where it is 1.
    fn blend(
        &self,
        latents: &Tensor,
        next_t: Option<f64>,
        scheduler: &dyn Scheduler,
    ) -> Result<Tensor> {
        let Some(original) = &self.image_latents else {
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
