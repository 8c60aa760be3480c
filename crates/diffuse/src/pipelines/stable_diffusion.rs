//! The loaded Stable Diffusion pipeline (SD 1.x / 2.x / XL architectures) and one generation through it:
//! text-to-image, image-to-image and inpainting, step for step as diffusers' pipelines run them.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::divergence::ensure_finite;
use super::guidance::{combine, guidance_scale_embedding};
use super::images::RgbImage;
use super::latents::{prepare_latents, Plan};
use super::loras::{
    Adapted, Base, BaseTensors, LoraChoice, LoraSource, PreparedSets, ResolvedLora,
};
use super::prompt::{Rows, TextEncoders};
use super::request::RequestField;
use super::request::{GenerationRequest, Output, PromptSyntax};
use crate::loaders::embeddings::Embedding;
use crate::loaders::weights::TensorRecord;
use crate::loaders::{LoadOptions, PipelineFolder};
use crate::models::unet::{ExtraConditioning, UNet2DConditionModel};
use crate::models::vae::{AutoencoderKL, TinyDecoder};
use crate::rng::NoiseSource;
use crate::schedulers::names::{clip_sample_default, has_steps_offset};
use crate::schedulers::SchedulerConfig;
use crate::{Error, Result};

/// The pipeline classes whose folders [`StableDiffusion::load`] accepts. An LCM-distilled UNet
/// (`time_cond_proj_dim`) runs as `LatentConsistencyModelPipeline` does whatever the folder's class: no
/// classifier-free guidance, the guidance scale embedded as the UNet's timestep condition.
pub const SUPPORTED_PIPELINES: [&str; 6] = [
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "LatentConsistencyModelPipeline",
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
    base_tensors: BaseTensors,
    lora_dir: Option<PathBuf>,
    embeddings_dir: Option<PathBuf>,
    prepared_loras: PreparedSets,
    tiny: Option<Tiny>,
}

/// A TAESD decoder attached to the pipeline, and whether it also decodes the final images (else previews only).
struct Tiny {
    decoder: Arc<TinyDecoder>,
    finals: bool,
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

/// Why a progress callback stops a generation early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Abandon it: [`StableDiffusion::generate`] returns [`Error::Cancelled`].
    Cancel,
    /// End it now with the image as it stands: the step's prediction of the clean latents (the latents
    /// themselves where the scheduler makes none) is decoded and returned, as A1111's interrupt does.
    Finish,
    /// End it now and decode the latents as they are after this step, as diffusers' `interrupt` does.
    Interrupt,
}

/// What a generation produced.
pub struct Generated {
    /// The final latents `[n, C, h, w]` before decoding, exactly as diffusers returns them with
    /// `output_type="latent"`.
    pub latents: Tensor,
    /// The decoded images (none when the request's [`Output`] is [`Output::Latents`]).
    pub images: Vec<RgbImage>,
    /// The VAE's output `[n, 3, H, W]` in [-1, 1] before 8-bit rounding (none for [`Output::Latents`]).
    pub decoded: Option<Tensor>,
}

/// The folder's scheduler configuration as the pipeline class's `__init__` leaves it: diffusers' SD 1.x/2.x
/// pipelines rewrite outdated configs (`steps_offset` other than 1 becomes 1 in the text-to-image, image-to-image
/// and inpainting pipelines; `clip_sample: true` becomes false in the first two). A key the file lacks counts
/// with its class default and, once rewritten, holds for the folder's own scheduler only: `from_config` gives
/// the next scheduler the class default again (diffusers' `_use_default_values`). SDXL and LCM pipelines keep
/// the file's values.
fn as_the_pipeline_sets_it(class: &str, mut config: SchedulerConfig) -> SchedulerConfig {
    let sd = matches!(
        class,
        "StableDiffusionPipeline" | "StableDiffusionImg2ImgPipeline"
    );
    let scheduler_class = config.class_name.clone().unwrap_or_default();
    let steps_offset = config
        .steps_offset
        .or(has_steps_offset(&scheduler_class).then_some(0));
    if (sd || class == "StableDiffusionInpaintPipeline")
        && steps_offset.is_some_and(|offset| offset != 1)
    {
        tracing::warn!(
            "{}: steps_offset is set to 1, as diffusers' {class} does",
            config.origin
        );
        config.filled_by_pipeline.steps_offset = config.steps_offset.is_none();
        config.steps_offset = Some(1);
    }
    let clip_sample = config.clip_sample.or(clip_sample_default(&scheduler_class));
    if sd && clip_sample == Some(true) {
        tracing::warn!(
            "{}: clip_sample is set to false, as diffusers' {class} does",
            config.origin
        );
        config.filled_by_pipeline.clip_sample = config.clip_sample.is_none();
        config.clip_sample = Some(false);
    }
    config
}

impl StableDiffusion {
    /// Loads a pipeline from `model`: a diffusers folder, a Hugging Face Hub id (`org/name`, optionally
    /// `@revision`; downloaded into, or read from, the Hugging Face cache) or one `.safetensors` checkpoint in
    /// the CompVis/AUTOMATIC1111 layout (its configs built in). `opts.variant` picks the stored weights.
    pub fn from_pretrained(model: &str, opts: &LoadOptions) -> Result<Self> {
        let path = crate::loaders::hub::resolve_model(model, opts.variant)?;
        let folder = PipelineFolder::open_path(&path, None)?;
        Self::load(&folder, opts)
    }

    /// `folder`'s scheduler configuration as its pipeline class leaves it (the generations' default scheduler),
    /// read without loading any weights.
    pub fn folder_scheduler(folder: &PipelineFolder) -> Result<SchedulerConfig> {
        Ok(as_the_pipeline_sets_it(
            &folder.index().class_name,
            folder.scheduler_config()?,
        ))
    }

    /// Loads every component of `folder` (a diffusers folder, or a single-file checkpoint with its configs).
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
        let records = [(); 3].map(|()| TensorRecord::default());
        let text = TextEncoders::load_recorded(folder, opts, [&records[1], &records[2]])?;
        let unet = folder.load_unet_recorded(opts, &records[0])?;
        let [unet_tensors, te_tensors, te2_tensors] = records.map(|r| Arc::new(r.tensors()));
        Ok(Self {
            text,
            unet,
            vae: folder.load_vae(&vae_opts)?,
            scheduler: Self::folder_scheduler(folder)?,
            requires_aesthetics_score: folder.index().flag("requires_aesthetics_score", false),
            dtype: opts.dtype,
            device: opts.device.clone(),
            base_tensors: BaseTensors {
                unet: unet_tensors,
                text_encoder: te_tensors,
                text_encoder_2: te2_tensors,
            },
            lora_dir: None,
            embeddings_dir: None,
            prepared_loras: PreparedSets::default(),
            tiny: None,
        })
    }

    /// Looks up LoRAs named by `<lora:NAME:…>` tags and [`LoraSource::Name`] as `NAME.safetensors` under `dir`
    /// (subfolders included), as AUTOMATIC1111 does in its `models/Lora` folder.
    pub fn with_lora_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.lora_dir = Some(dir.into());
        self
    }

    /// The folder LoRA names are looked up in.
    pub fn lora_dir(&self) -> Option<&Path> {
        self.lora_dir.as_deref()
    }

    /// Makes every `.safetensors` embedding under `dir` (subfolders included) usable in prompts by its file's
    /// stem, as AUTOMATIC1111's `embeddings` folder.
    pub fn with_embeddings_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.embeddings_dir = Some(dir.into());
        self
    }

    /// The folder embeddings are named from.
    pub fn embeddings_dir(&self) -> Option<&Path> {
        self.embeddings_dir.as_deref()
    }

    /// Whether `embedding` fits this pipeline's text encoders (vectors for each, of their widths).
    pub fn check_embedding(&self, embedding: &Embedding) -> Result<()> {
        self.text.check_embedding(embedding)
    }

    /// The embeddings `req` may use: its own, and those of the embeddings folder its prompts name.
    fn embeddings_of(&self, req: &GenerationRequest) -> Result<Vec<Embedding>> {
        super::embeddings::gather(
            &req.embeddings,
            self.embeddings_dir.as_deref(),
            &[&req.prompt, &req.negative_prompt],
        )
    }

    /// The LoRAs `req` asks for: its `loras`, then (with A1111's syntax) its prompt's `<lora:…>` tags.
    fn lora_choices(&self, req: &GenerationRequest) -> Result<Vec<LoraChoice>> {
        let mut choices = req.loras.clone();
        if req.prompt_syntax == PromptSyntax::A1111 {
            let tags = super::prompt::parse_prompt(&req.prompt)?.loras;
            choices.extend(tags.into_iter().map(|tag| LoraChoice {
                source: LoraSource::Name(tag.name),
                text_encoder_weight: tag.text_encoder_weight,
                unet_weight: tag.unet_weight,
            }));
        }
        Ok(choices)
    }

    /// Prepares the UNet and text encoders with `loras` merged in (or finds them prepared) without generating:
    /// the work the first generation with these LoRAs would otherwise do.
    pub fn prepare_loras(&self, loras: &[LoraChoice]) -> Result<()> {
        let resolved = super::loras::resolve(loras, self.lora_dir.as_deref())?;
        if !resolved.is_empty() {
            self.adapted(&resolved)?;
        }
        Ok(())
    }

    fn adapted(&self, loras: &[ResolvedLora]) -> Result<Arc<Adapted>> {
        self.prepared_loras.get_or_prepare(loras, |loras| {
            let base = Base {
                tensors: &self.base_tensors,
                text: &self.text,
                unet: &self.unet,
                dtype: self.dtype,
                device: &self.device,
            };
            super::loras::prepare(&base, loras)
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

    /// A lower bound of the memory `req` needs beyond the weights, in bytes: a convolution holds its input and
    /// its output at once, so the UNet's first level (both guidance rows of every image) and, unless decoding
    /// is tiled, the VAE decoder's last level (every image at full size) each need two such activations.
    /// Real peaks are higher; a request beyond this bound cannot run.
    pub fn activation_memory_lower_bound(&self, req: &GenerationRequest) -> Result<u64> {
        let (width, height) = self.plan(req).map(|p| (p.width, p.height))?;
        let f = self.vae_scale_factor();
        let (pixels, latent_pixels) =
            ((width * height) as u64, ((width / f) * (height / f)) as u64);
        let images = req.num_images as u64;
        // Classifier-free guidance doubles the rows, except where the UNet takes the scale as an embedding.
        let guided = self.guided(req);
        let rows = images * if guided { 2 } else { 1 };
        let first = |channels: &[usize]| channels.first().copied().unwrap_or(0) as u64;
        let unet = 2
            * rows
            * first(&self.unet.config().block_out_channels)
            * latent_pixels
            * self.dtype.size_in_bytes() as u64;
        let vae = if self.vae.is_tiled() {
            0
        } else {
            2 * images
                * first(&self.vae.config().block_out_channels)
                * pixels
                * self.vae.dtype().size_in_bytes() as u64
        };
        Ok(unet.max(vae))
    }

    /// Decodes final images and previews with `decoder` (TAESD, diffusers' `AutoencoderTiny`) instead of the
    /// VAE, as diffusers does after `pipe.vae = AutoencoderTiny.from_pretrained(...)`. Fails if its latent
    /// channels or scale factor differ from the VAE's.
    pub fn with_tiny_decoder(self, decoder: TinyDecoder) -> Result<Self> {
        self.attach_tiny(decoder, true)
    }

    /// Uses `decoder` (TAESD) for [`StableDiffusion::preview`] only; final images still come from the VAE.
    pub fn with_preview_decoder(self, decoder: TinyDecoder) -> Result<Self> {
        self.attach_tiny(decoder, false)
    }

    fn attach_tiny(mut self, decoder: TinyDecoder, finals: bool) -> Result<Self> {
        let (tiny, vae) = (decoder.config(), self.vae.config());
        if tiny.latent_channels != vae.latent_channels || tiny.scale_factor() != vae.scale_factor()
        {
            return Err(Error::invalid(
                "tiny decoder",
                format!(
                    "it decodes {} latent channels at {}× per side; this pipeline's VAE has {} at {}×",
                    tiny.latent_channels,
                    tiny.scale_factor(),
                    vae.latent_channels,
                    vae.scale_factor()
                ),
            ));
        }
        self.tiny = Some(Tiny {
            decoder: Arc::new(decoder),
            finals,
        });
        Ok(self)
    }

    /// A preview of image `index` of `latents` as [`Progress`] reports them: the TAESD decode when the pipeline
    /// has a tiny decoder, else the linear latent-to-RGB projection drawn `upscale` times larger.
    pub fn preview(&self, latents: &Tensor, index: usize, upscale: usize) -> Result<RgbImage> {
        let Some(tiny) = &self.tiny else {
            return super::preview::latent_preview(latents, index, upscale);
        };
        let n = latents.dim(0)?;
        if index >= n {
            return Err(Error::invalid(
                "preview index",
                format!("{index}: the batch has {n} images"),
            ));
        }
        let one = (latents.narrow(0, index, 1)?.to_dtype(self.dtype)?
            / tiny.decoder.config().scaling_factor)?;
        let decoded = tiny.decoder.decode(&one)?;
        Ok(RgbImage::from_decoded(&decoded)?.remove(0))
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

    /// Rejects a request this pipeline cannot run, before any work: [`GenerationRequest::validate`]'s checks,
    /// more steps than the scheduler's training timesteps, and a `clip_skip` beyond the text encoders' layers.
    pub fn check(&self, req: &GenerationRequest) -> Result<()> {
        self.checked(req).map(|_| ())
    }

    /// [`StableDiffusion::check`], keeping what it found: the request's LoRA files and embeddings.
    fn checked(&self, req: &GenerationRequest) -> Result<(Vec<ResolvedLora>, Vec<Embedding>)> {
        req.validate()?;
        if req.prompt_syntax == PromptSyntax::A1111 {
            super::prompt::parse_negative_prompt(&req.negative_prompt)?;
        }
        let loras = super::loras::resolve(&self.lora_choices(req)?, self.lora_dir.as_deref())?;
        let embeddings = self.embeddings_of(req)?;
        let scheduler = req.scheduler.as_ref().unwrap_or(&self.scheduler);
        let trained = scheduler.train_timesteps()?;
        if req.steps > trained {
            return Err(Error::invalid(
                RequestField::Steps.name(),
                format!(
                    "{}: at most the {trained} timesteps the scheduler was trained with",
                    req.steps
                ),
            ));
        }
        if let Some(clip_skip) = req.clip_skip {
            let most = self.text.max_clip_skip();
            if clip_skip > most {
                return Err(Error::invalid(
                    RequestField::ClipSkip.name(),
                    format!(
                        "{clip_skip}: this model's text encoder has layers to skip at most {most}"
                    ),
                ));
            }
        }
        Ok((loras, embeddings))
    }

    /// Runs one generation. `noise` supplies every random draw in diffusers' order (initial latents, VAE
    /// posterior samples, ancestral/SDE noise); `progress` is called after each step and may stop the
    /// generation by returning `ControlFlow::Break` with a [`Stop`].
    pub fn generate(
        &self,
        req: &GenerationRequest,
        noise: &mut dyn NoiseSource,
        progress: &mut dyn FnMut(&Progress) -> ControlFlow<Stop>,
    ) -> Result<Generated> {
        let (loras, embeddings) = self.checked(req)?;
        let adapted = if loras.is_empty() {
            None
        } else {
            Some(self.adapted(&loras)?)
        };
        let (text, unet) = match &adapted {
            Some(a) => (&a.text, a.unet.as_ref().unwrap_or(&self.unet)),
            None => (&self.text, &self.unet),
        };
        let mode = self.mode(req)?;
        let (plan, mut scheduler) = self.plan_with_scheduler(req, &mode)?;
        let (width, height, guidance) = (plan.width, plan.height, plan.guidance);
        let n = req.num_images;
        let time_cond_dim = self.unet.config().time_cond_proj_dim;

        let conditioning = text.encode_with_syntax(
            &req.prompt,
            &req.negative_prompt,
            req.prompt_syntax,
            Rows {
                images: n,
                guidance,
                clip_skip: req.clip_skip,
            },
            &embeddings,
        )?;
        let context = conditioning.context.to_dtype(self.dtype)?;

        let timesteps = &plan.timesteps;
        let start = Plan {
            width,
            height,
            shape: plan.latent_shape,
            first_timestep: timesteps.first().copied().unwrap_or(0.0),
            guidance,
        };
        let prepared = prepare_latents(self, &mode, &start, scheduler.as_mut(), noise)?;
        let mut latents = prepared.latents.clone();

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
            class_labels: None,
        };
        // diffusers' inpainting pipeline has no guidance rescale.
        let rescale = if prepared.inpaint.is_some() {
            0.0
        } else {
            req.guidance_rescale
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
                Some(inpaint) => inpaint.unet_input(&input)?,
                None => input,
            };
            let timestep = Tensor::new(&[t as f32], &self.device)?;
            let prediction = unet.forward(
                &input.to_dtype(self.dtype)?,
                &timestep,
                Some(&context),
                &extra,
            )?;
            let prediction = if guidance {
                combine(&prediction, req.guidance_scale, rescale)?
            } else {
                prediction
            };
            let stepped = scheduler.step(&prediction, t, &latents, noise)?;
            latents = stepped.prev_sample;
            if let Some(inpaint) = &prepared.inpaint {
                latents =
                    inpaint.blend(&latents, timesteps.get(i + 1).copied(), scheduler.as_ref())?;
            }
            ensure_finite(
                &latents,
                || format!("the latents after step {} of {total}", i + 1),
                req,
                self.dtype,
            )?;
            let info = Progress {
                step: i + 1,
                total,
                timestep: t,
                latents: &latents,
            };
            match progress(&info) {
                ControlFlow::Continue(()) => {}
                ControlFlow::Break(Stop::Cancel) => return Err(Error::Cancelled),
                ControlFlow::Break(Stop::Interrupt) => break,
                ControlFlow::Break(Stop::Finish) => {
                    // The step's prediction of the clean latents, where the scheduler makes one.
                    if let Some(x0) = stepped.pred_original_sample {
                        latents = match &prepared.inpaint {
                            Some(inpaint) => inpaint.blend(&x0, None, scheduler.as_ref())?,
                            None => x0,
                        };
                    }
                    break;
                }
            }
        }

        if req.output == Output::Latents {
            return Ok(Generated {
                latents,
                images: Vec::new(),
                decoded: None,
            });
        }
        let (decoded, decoder_dtype) = match self.tiny.as_ref().filter(|t| t.finals) {
            // diffusers' pipelines divide by the decoder's own scaling factor (TAESD's is 1).
            Some(tiny) => {
                let scale = tiny.decoder.config().scaling_factor;
                let latents = (latents.to_dtype(self.dtype)? / scale)?;
                (tiny.decoder.decode(&latents)?, self.dtype)
            }
            None => (
                self.vae.decode(
                    &self
                        .vae
                        .unscale_latents(&latents.to_dtype(self.vae.dtype())?)?,
                )?,
                self.vae.dtype(),
            ),
        };
        ensure_finite(
            &decoded,
            || "the VAE's decoded image".into(),
            req,
            decoder_dtype,
        )?;
        Ok(Generated {
            images: RgbImage::from_decoded(&decoded)?,
            decoded: Some(decoded),
            latents,
        })
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
}
