//! Text-to-audio with AudioLDM, step for step as diffusers' `AudioLDMPipeline` runs it: the CLAP text embedding,
//! L2-normalised, is the UNet's class label (there is no cross-attention context); the latents are a mel
//! spectrogram's, `audio_length_s` long; the VAE decodes the spectrogram and the HiFi-GAN vocoder turns it into a
//! 16 kHz mono waveform, cut to the requested length.

use std::ops::ControlFlow;

use candle_core::{DType, Device, Tensor, D};

use super::guidance::combine;
use super::request::{Output, RequestField, MAX_SIDE};
use super::stable_diffusion::{Progress, Stop};
use crate::loaders::{LoadOptions, PipelineFolder};
use crate::models::clap::{ClapTextModel, RobertaTokenizer};
use crate::models::unet::{ExtraConditioning, UNet2DConditionModel};
use crate::models::vae::AutoencoderKL;
use crate::models::vocoder::HifiGan;
use crate::rng::{randn_tensor, NoiseSource};
use crate::schedulers::{Scheduler, SchedulerConfig, TimestepRequest};
use crate::{Error, Result};

/// The pipeline classes whose folders [`AudioLdm::load`] accepts.
pub const AUDIO_PIPELINES: [&str; 1] = ["AudioLDMPipeline"];

/// A loaded AudioLDM pipeline: immutable, so one instance serves many generations at once.
pub struct AudioLdm {
    /// The RoBERTa tokenizer of the text encoder.
    pub tokenizer: RobertaTokenizer,
    /// CLAP's text tower with its projection.
    pub text_encoder: ClapTextModel,
    /// The denoiser, conditioned on the text embedding as a class label.
    pub unet: UNet2DConditionModel,
    /// The VAE of the mel-spectrogram latents.
    pub vae: AutoencoderKL,
    /// The vocoder from mel spectrogram to waveform.
    pub vocoder: HifiGan,
    /// The folder's scheduler configuration, the default for every generation.
    pub scheduler: SchedulerConfig,
    dtype: DType,
    device: Device,
}

/// One text-to-audio request: `AudioLDMPipeline.__call__`'s arguments, with its defaults.
#[derive(Debug, Clone)]
pub struct AudioRequest {
    /// What to hear.
    pub prompt: String,
    /// What to steer away from ("" when absent).
    pub negative_prompt: String,
    /// Seconds of audio; `None`: the UNet's sample size (5.12 s for AudioLDM).
    pub audio_length_s: Option<f64>,
    /// Denoising steps (diffusers' default: 10).
    pub steps: usize,
    /// Classifier-free guidance scale; guidance is off at ≤ 1 (diffusers' default: 2.5).
    pub guidance_scale: f64,
    /// Waveforms drawn in one batch from one noise stream (`num_waveforms_per_prompt`).
    pub num_waveforms: usize,
    /// DDIM's η.
    pub eta: f64,
    /// A scheduler to use instead of the pipeline's own.
    pub scheduler: Option<SchedulerConfig>,
    /// Initial latents `[num_waveforms, C, frames / f, mel_bins / f]` instead of drawing them.
    pub latents: Option<Tensor>,
    /// Waveforms, or only the final latents (nothing decoded).
    pub output: Output,
}

impl Default for AudioRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            audio_length_s: None,
            steps: 10,
            guidance_scale: 2.5,
            num_waveforms: 1,
            eta: 0.0,
            scheduler: None,
            latents: None,
            output: Output::default(),
        }
    }
}

/// What an audio generation will do, worked out before any work.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioPlan {
    /// The length of the returned audio in seconds (the request's, or the default).
    pub audio_length_s: f64,
    /// Spectrogram frames generated: the length in frames, rounded up to a multiple of the VAE factor.
    pub frames: usize,
    /// Samples of each returned waveform (`int(audio_length_s · sampling_rate)`; the generated rest is cut).
    pub samples: usize,
    /// Samples per second.
    pub sampling_rate: usize,
    /// The latents' shape `[waveforms, channels, frames / f, mel_bins / f]`.
    pub latent_shape: [usize; 4],
    /// Whether classifier-free guidance runs.
    pub guidance: bool,
    /// The timesteps the denoising loop runs.
    pub timesteps: Vec<f64>,
}

/// What an audio generation produced.
pub struct GeneratedAudio {
    /// The final latents, as the pipeline's callback sees them after the last step.
    pub latents: Tensor,
    /// The decoded log-mel spectrograms `[waveforms, frames, mel_bins]` (none for [`Output::Latents`]).
    pub spectrograms: Option<Tensor>,
    /// One mono waveform per requested waveform, in [-1, 1] (none for [`Output::Latents`]).
    pub waveforms: Vec<Vec<f32>>,
    /// Samples per second of the waveforms.
    pub sampling_rate: usize,
}

impl AudioLdm {
    /// Loads a pipeline from a diffusers folder or a Hugging Face Hub id (`cvssp/audioldm-s-full-v2`).
    pub fn from_pretrained(model: &str, opts: &LoadOptions) -> Result<Self> {
        let path = crate::loaders::hub::resolve_model(model, opts.variant)?;
        Self::load(&PipelineFolder::open_path(&path, None)?, opts)
    }

    /// Loads every component of `folder`, whose `model_index.json` must name an AudioLDM pipeline.
    pub fn load(folder: &PipelineFolder, opts: &LoadOptions) -> Result<Self> {
        let class = folder.index().class_name.as_str();
        if !AUDIO_PIPELINES.contains(&class) {
            return Err(Error::unsupported(
                "model_index.json",
                "_class_name",
                class,
                AUDIO_PIPELINES.join(", "),
            ));
        }
        let pipeline = Self {
            tokenizer: folder.load_roberta_tokenizer("tokenizer")?,
            text_encoder: folder.load_clap_text_encoder("text_encoder", opts)?,
            unet: folder.load_unet(opts)?,
            vae: folder.load_vae(opts)?,
            vocoder: folder.load_vocoder(opts)?,
            scheduler: folder.scheduler_config()?,
            dtype: opts.dtype,
            device: opts.device.clone(),
        };
        pipeline.check_components()?;
        Ok(pipeline)
    }

    /// The components must fit together: the text embedding is the UNet's class label, the VAE's latents are
    /// the UNet's, and the VAE's output bins are the vocoder's input.
    fn check_components(&self) -> Result<()> {
        let unet = self.unet.config();
        let width = self.text_encoder.config().projection_dim;
        if unet.class_embed_type.as_deref() != Some("simple_projection")
            || unet.projection_class_embeddings_input_dim != Some(width)
        {
            return Err(Error::unsupported(
                "unet/config.json",
                "class_embed_type/projection_class_embeddings_input_dim",
                format!(
                    "{:?}/{:?}",
                    unet.class_embed_type, unet.projection_class_embeddings_input_dim
                ),
                format!("\"simple_projection\"/{width}, the text encoder's projection_dim"),
            ));
        }
        let latent = self.vae.config().latent_channels;
        if unet.in_channels != latent || unet.out_channels != latent {
            return Err(Error::unsupported(
                "unet/config.json",
                "in_channels/out_channels",
                format!("{}/{}", unet.in_channels, unet.out_channels),
                format!("the VAE's {latent} latent channels"),
            ));
        }
        if self.vae.config().out_channels != 1 {
            return Err(Error::unsupported(
                "vae/config.json",
                "out_channels",
                self.vae.config().out_channels,
                "1 (one mel spectrogram per waveform)",
            ));
        }
        let bins = self.vocoder.config().model_in_dim;
        let f = self.vae_scale_factor();
        if !bins.is_multiple_of(f) {
            return Err(Error::unsupported(
                "vocoder/config.json",
                "model_in_dim",
                bins,
                format!("a multiple of the VAE scale factor {f}"),
            ));
        }
        Ok(())
    }

    /// Spectrogram pixels per latent pixel, per side.
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.config().scale_factor()
    }

    /// The dtype the models compute in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the models run on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Seconds of audio per spectrogram frame (diffusers' `vocoder_upsample_factor`).
    fn seconds_per_frame(&self) -> f64 {
        let v = self.vocoder.config();
        v.hop_length() as f64 / v.sampling_rate as f64
    }

    /// The audio length when a request gives none: the UNet's sample size in frames.
    pub fn default_audio_length_s(&self) -> f64 {
        let (h, _) = self.unet.config().sample_size_hw().unwrap_or((128, 16));
        (h * self.vae_scale_factor()) as f64 * self.seconds_per_frame()
    }

    /// The shortest audio the model generates: one latent row.
    pub fn min_audio_length_s(&self) -> f64 {
        self.seconds_per_frame() * self.vae_scale_factor() as f64
    }

    /// The longest audio accepted: a spectrogram of [`MAX_SIDE`] frames, as images are limited per side.
    pub fn max_audio_length_s(&self) -> f64 {
        self.seconds_per_frame() * MAX_SIDE as f64
    }

    /// The plan of `req`, without running anything; also rejects what the pipeline cannot run.
    pub fn plan(&self, req: &AudioRequest) -> Result<AudioPlan> {
        Ok(self.plan_with_scheduler(req)?.0)
    }

    fn plan_with_scheduler(&self, req: &AudioRequest) -> Result<(AudioPlan, Box<dyn Scheduler>)> {
        validate(req)?;
        let per_frame = self.seconds_per_frame();
        let length = req
            .audio_length_s
            .unwrap_or_else(|| self.default_audio_length_s());
        let (min, max) = (self.min_audio_length_s(), self.max_audio_length_s());
        if !length.is_finite() || length < min || length > max {
            return Err(Error::invalid(
                RequestField::AudioLength.name(),
                format!("{length} s: this model generates from {min} s to {max} s"),
            ));
        }
        let f = self.vae_scale_factor();
        // As diffusers computes it: frames = int(length / seconds_per_frame), rounded up to the VAE factor.
        let frames = ((length / per_frame) as usize).div_ceil(f) * f;
        let sampling_rate = self.vocoder.config().sampling_rate;
        let mut config = req
            .scheduler
            .clone()
            .unwrap_or_else(|| self.scheduler.clone());
        config.eta = Some(req.eta);
        let trained = config.train_timesteps()?;
        if req.steps > trained {
            return Err(Error::invalid(
                RequestField::Steps.name(),
                format!(
                    "{}: at most the {trained} timesteps the scheduler was trained with",
                    req.steps
                ),
            ));
        }
        let scheduler = config.build(&TimestepRequest::Steps(req.steps))?;
        let plan = AudioPlan {
            audio_length_s: length,
            frames,
            samples: (length * sampling_rate as f64) as usize,
            sampling_rate,
            latent_shape: [
                req.num_waveforms,
                self.vae.config().latent_channels,
                frames / f,
                self.vocoder.config().model_in_dim / f,
            ],
            guidance: req.guidance_scale > 1.0,
            timesteps: scheduler.timesteps().to_vec(),
        };
        Ok((plan, scheduler))
    }

    /// The L2-normalised CLAP embedding of `text`, truncated at `max_tokens` tokens (`<s>`, `</s>` included):
    /// `[1, projection_dim]`.
    fn embed(&self, text: &str, max_tokens: usize, field: RequestField) -> Result<Tensor> {
        let mut ids = self
            .tokenizer
            .encode(text)
            .map_err(|e| Error::invalid(field.name(), e.to_string()))?;
        if ids.len() > max_tokens && max_tokens >= 2 {
            let eos = ids[ids.len() - 1];
            ids.truncate(max_tokens - 1);
            ids.push(eos);
        }
        let embeds = self.text_encoder.text_embeds(&ids)?.to_dtype(DType::F32)?;
        // torch's F.normalize: x / max(‖x‖, 1e-12).
        let norm = embeds
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .maximum(1e-12)?;
        Ok(embeds.broadcast_div(&norm)?)
    }

    /// Runs one generation. `noise` supplies the initial latents and any scheduler noise in diffusers' order;
    /// `progress` is called after each step and may stop the generation (see [`Stop`]).
    pub fn generate(
        &self,
        req: &AudioRequest,
        noise: &mut dyn NoiseSource,
        progress: &mut dyn FnMut(&Progress) -> ControlFlow<Stop>,
    ) -> Result<GeneratedAudio> {
        let (plan, mut scheduler) = self.plan_with_scheduler(req)?;
        let n = req.num_waveforms;
        let positive = self.embed(
            &req.prompt,
            self.tokenizer.max_length(),
            RequestField::Prompt,
        )?;
        // diffusers pads and truncates the negative prompt to the width of the prompt's embedding.
        let class_labels = if plan.guidance {
            let negative = self.embed(
                &req.negative_prompt,
                self.text_encoder.config().projection_dim,
                RequestField::NegativePrompt,
            )?;
            Tensor::cat(&[negative.repeat((n, 1))?, positive.repeat((n, 1))?], 0)?
        } else {
            positive.repeat((n, 1))?
        };
        let extra = ExtraConditioning {
            class_labels: Some(class_labels.to_device(&self.device)?.to_dtype(self.dtype)?),
            ..ExtraConditioning::default()
        };

        let mut latents = match &req.latents {
            Some(given) => {
                if given.dims() != plan.latent_shape {
                    return Err(Error::invalid(
                        RequestField::Latents.name(),
                        format!(
                            "shape {:?}; this request needs {:?}",
                            given.dims(),
                            plan.latent_shape
                        ),
                    ));
                }
                given.to_device(&self.device)?.to_dtype(self.dtype)?
            }
            None => randn_tensor(noise, &plan.latent_shape, &self.device, self.dtype)?,
        };
        latents = (latents * scheduler.init_noise_sigma())?;

        let total = plan.timesteps.len();
        for (i, &t) in plan.timesteps.iter().enumerate() {
            let input = if plan.guidance {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let input = scheduler.scale_model_input(&input, t)?;
            let timestep = Tensor::new(&[t as f32], &self.device)?;
            let prediction =
                self.unet
                    .forward(&input.to_dtype(self.dtype)?, &timestep, None, &extra)?;
            let prediction = if plan.guidance {
                combine(&prediction, req.guidance_scale, 0.0)?
            } else {
                prediction
            };
            let stepped = scheduler.step(&prediction, t, &latents, noise)?;
            latents = stepped.prev_sample;
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
                    if let Some(x0) = stepped.pred_original_sample {
                        latents = x0;
                    }
                    break;
                }
            }
        }

        let sampling_rate = plan.sampling_rate;
        if req.output == Output::Latents {
            return Ok(GeneratedAudio {
                latents,
                spectrograms: None,
                waveforms: Vec::new(),
                sampling_rate,
            });
        }
        // diffusers multiplies by the reciprocal of the scaling factor.
        let scaled =
            (latents.to_dtype(self.vae.dtype())? * (1.0 / self.vae.config().scaling_factor))?;
        let spectrograms = self.vae.decode(&scaled)?.squeeze(1)?;
        let audio = self
            .vocoder
            .forward(&spectrograms)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        let audio = audio.narrow(1, 0, plan.samples.min(audio.dim(1)?))?;
        let waveforms = audio.to_vec2::<f32>()?;
        if waveforms.iter().flatten().any(|x| !x.is_finite()) {
            return Err(Error::invalid(
                "waveform",
                format!(
                    "the vocoder's output is not finite (NaN or infinity) in {:?}; try float32",
                    self.dtype
                ),
            ));
        }
        Ok(GeneratedAudio {
            latents,
            spectrograms: Some(spectrograms),
            waveforms,
            sampling_rate,
        })
    }
}

/// Rejects out-of-range values with a message naming the field.
fn validate(req: &AudioRequest) -> Result<()> {
    if req.steps == 0 {
        return Err(Error::invalid(
            RequestField::Steps.name(),
            "0: at least one step is needed",
        ));
    }
    if !req.guidance_scale.is_finite() || req.guidance_scale < 0.0 {
        return Err(Error::invalid(
            RequestField::GuidanceScale.name(),
            format!("{}: must be a finite number ≥ 0", req.guidance_scale),
        ));
    }
    if !req.eta.is_finite() || req.eta < 0.0 {
        return Err(Error::invalid(
            RequestField::Eta.name(),
            format!("{}: must be ≥ 0", req.eta),
        ));
    }
    if req.num_waveforms == 0 {
        return Err(Error::invalid(
            RequestField::NumWaveforms.name(),
            "0: at least one waveform",
        ));
    }
    Ok(())
}

impl GeneratedAudio {
    /// Spectrogram `index` as a picture: time from left to right, low frequencies at the bottom, the log-mel
    /// values from their minimum (black) to their maximum (white).
    pub fn spectrogram_image(&self, index: usize) -> Result<super::images::RgbImage> {
        let spectrograms = self.spectrograms.as_ref().ok_or_else(|| {
            Error::invalid("spectrogram", "this generation returned latents only")
        })?;
        let n = spectrograms.dim(0)?;
        if index >= n {
            return Err(Error::invalid(
                "spectrogram",
                format!("index {index}: the generation has {n} spectrograms"),
            ));
        }
        let values = spectrograms
            .get(index)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?;
        let (frames, bins) = (values.len(), values.first().map_or(0, Vec::len));
        let (lo, hi) = values
            .iter()
            .flatten()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        let range = (hi - lo).max(f32::MIN_POSITIVE);
        let mut pixels = Vec::with_capacity(frames * bins * 3);
        for row in (0..bins).rev() {
            for frame in &values {
                let level = ((frame[row] - lo) / range * 255.0)
                    .round()
                    .clamp(0.0, 255.0) as u8;
                pixels.extend([level; 3]);
            }
        }
        Ok(super::images::RgbImage {
            width: frames,
            height: bins,
            pixels,
        })
    }
}
