//! What a generation will do, worked out from the request before any work: the one place for the output size,
//! the latent shape, whether guidance doubles the batch, and the timesteps left after image-to-image's strength
//! cut. [`StableDiffusion::generate`] runs this plan; servers and bindings read it to report progress and sizes.

use super::latents::Mode;
use super::request::GenerationRequest;
use super::request::RequestField;
use super::stable_diffusion::StableDiffusion;
use crate::schedulers::{Scheduler, TimestepRequest};
use crate::{Error, Result};

/// The sizes and schedule of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationPlan {
    /// Output width in pixels: the request's, or diffusers' default (the input image's size, rounded down to the
    /// VAE factor, for image-to-image; the UNet's sample size otherwise).
    pub width: usize,
    /// Output height in pixels.
    pub height: usize,
    /// The latents' shape `[images, channels, height / f, width / f]`.
    pub latent_shape: [usize; 4],
    /// Whether classifier-free guidance runs (a guidance scale above 1 on a UNet that does not embed it).
    pub guidance: bool,
    /// The timesteps the denoising loop runs, in order, one UNet call (per guidance row) each.
    pub timesteps: Vec<f64>,
}

impl GenerationPlan {
    /// The denoising steps the generation runs (what its progress counts to).
    pub fn steps(&self) -> usize {
        self.timesteps.len()
    }
}

impl StableDiffusion {
    /// The plan of `req`: its size, latent shape, guidance and timesteps, without running anything.
    pub fn plan(&self, req: &GenerationRequest) -> Result<GenerationPlan> {
        let mode = self.mode(req)?;
        Ok(self.plan_with_scheduler(req, &mode)?.0)
    }

    /// The output (width, height) of `req`: its own, or the default for its mode. [`StableDiffusion::plan`]
    /// also checks they are positive multiples of the VAE factor; this does not, so a caller can word that check
    /// with its own limits.
    pub fn output_size(&self, req: &GenerationRequest) -> Result<(usize, usize)> {
        let mode = self.mode(req)?;
        Ok(self.size_of(req, &mode))
    }

    /// Which of diffusers' pipelines `req` runs.
    pub(super) fn mode<'a>(&self, req: &'a GenerationRequest) -> Result<Mode<'a>> {
        Mode::of(
            req,
            self.unet.config().in_channels,
            self.vae.config().latent_channels,
        )
    }

    /// Whether `req` runs classifier-free guidance (LCM-distilled UNets embed the scale instead).
    pub(super) fn guided(&self, req: &GenerationRequest) -> bool {
        req.guidance_scale > 1.0 && self.unet.config().time_cond_proj_dim.is_none()
    }

    /// The plan, and the scheduler that runs it (its timesteps set, its start placed after the strength cut).
    pub(super) fn plan_with_scheduler(
        &self,
        req: &GenerationRequest,
        mode: &Mode,
    ) -> Result<(GenerationPlan, Box<dyn Scheduler>)> {
        let (width, height) = self.size_of(req, mode);
        let f = self.vae_scale_factor();
        if width == 0 || height == 0 || !width.is_multiple_of(f) || !height.is_multiple_of(f) {
            return Err(Error::invalid(
                RequestField::Size.name(),
                format!("{width}×{height}: must be positive multiples of {f}"),
            ));
        }
        let mut config = req
            .scheduler
            .clone()
            .unwrap_or_else(|| self.scheduler.clone());
        config.eta = Some(req.eta);
        let mut scheduler = config.build(&TimestepRequest::Steps(req.steps))?;
        let timesteps = match mode.strength() {
            Some(strength) => strength_cut(scheduler.as_mut(), req.steps, strength)?,
            None => scheduler.timesteps().to_vec(),
        };
        let plan = GenerationPlan {
            width,
            height,
            latent_shape: [
                req.num_images,
                self.vae.config().latent_channels,
                height / f,
                width / f,
            ],
            guidance: self.guided(req),
            timesteps,
        };
        Ok((plan, scheduler))
    }

    fn size_of(&self, req: &GenerationRequest, mode: &Mode) -> (usize, usize) {
        let f = self.vae_scale_factor();
        let (default_w, default_h) = match mode {
            // diffusers' image-to-image keeps the input image's size, rounded down to a multiple of the VAE
            // factor; text-to-image and inpainting default to the UNet's sample size.
            Mode::ImageToImage(init) => (init.image.width / f * f, init.image.height / f * f),
            _ => self.default_size(),
        };
        (
            req.width.unwrap_or(default_w),
            req.height.unwrap_or(default_h),
        )
    }
}

/// diffusers' `get_timesteps`: keep the last ⌊steps · strength⌋ steps, and tell the scheduler where it starts.
fn strength_cut(scheduler: &mut dyn Scheduler, steps: usize, strength: f64) -> Result<Vec<f64>> {
    let init_steps = ((steps as f64 * strength) as usize).min(steps);
    if init_steps < 1 {
        return Err(Error::invalid(
            RequestField::Strength.name(),
            format!(
                "{strength} leaves none of the {steps} steps to run; raise `strength` or `steps`"
            ),
        ));
    }
    let skip = (steps - init_steps) * scheduler.order();
    scheduler.set_begin_index(skip);
    Ok(scheduler
        .timesteps()
        .get(skip..)
        .map(<[f64]>::to_vec)
        .unwrap_or_default())
}
