//! What a training run is asked to do: the data, the model source, the hyperparameters of each stage.

use std::path::PathBuf;

use candle_core::{DType, Device};

use super::data::TrainingData;
use super::objectives::{Prediction, Reconstruction};
use super::optimizer::{AdamWSettings, LrShape};
use super::timestep_bias::TimestepBias;
use diffuse::{Error, Result};

/// Where the networks come from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// Train the VAE, the text encoder and the UNet from scratch in the tiny design, with this tokenizer
    /// folder (its vocabulary and length shape the text encoder).
    Scratch {
        /// A CLIP tokenizer folder.
        tokenizer: PathBuf,
    },
    /// Fine-tune the UNet of this diffusers pipeline folder; its VAE (and, unless asked, its text encoder)
    /// stay frozen.
    Pretrained {
        /// The pipeline folder.
        folder: PathBuf,
    },
}

/// The VAE stage (from scratch only).
#[derive(Debug, Clone)]
pub struct VaeSettings {
    /// Optimizer steps.
    pub steps: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// The reconstruction error.
    pub reconstruction: Reconstruction,
    /// Weight of the KL term against the per-pixel reconstruction error.
    pub kl_weight: f64,
}

/// The denoiser stage.
#[derive(Debug, Clone)]
pub struct DenoiserSettings {
    /// Optimizer steps.
    pub steps: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// Constant or cosine after warm-up.
    pub lr_shape: LrShape,
    /// The target; `None` keeps the pipeline's `prediction_type` (ε for a new model).
    pub prediction: Option<Prediction>,
    /// γ of min-SNR-γ loss weighting; `None` for plain MSE.
    pub min_snr_gamma: Option<f64>,
    /// Rescale the betas to zero terminal SNR (Lin et al. 2024) and sample with trailing timesteps, so the
    /// last training timestep is pure noise and the layout comes from the prompt, not from the initial noise.
    /// Needs v-prediction. `None` keeps the pipeline's setting (off for a new model).
    pub zero_terminal_snr: Option<bool>,
    /// Offset-noise scale (0 for none).
    pub noise_offset: f64,
    /// Which timesteps are drawn most (uniform by default).
    pub timestep_bias: TimestepBias,
    /// A low-noise phase after the `steps` above; `None` for none.
    pub refinement: Option<Refinement>,
    /// The fraction of captions replaced by "" so that the model also learns the unconditional prediction
    /// classifier-free guidance needs.
    pub caption_dropout: f64,
    /// Train the text encoder jointly with the UNet (the default from scratch; off when fine-tuning). From
    /// scratch, a text encoder that is not trained keeps its random initialization.
    pub train_text_encoder: bool,
    /// The text encoder's peak learning rate when it is trained; `None` uses the UNet's.
    pub text_encoder_learning_rate: Option<f64>,
}

/// A second phase of the denoiser stage that draws its timesteps only from the least noisy part of the schedule,
/// with its own warm-up and learning-rate decay. A small UNet trained on uniform timesteps learns where a shape
/// goes and its colors but draws a round blob; the low-noise steps, where the blob's corners are drawn, teach
/// it the shape once the layout is learned (the tiny design's held-out shapes: 13 → 21 of 50). It can cost the
/// position binding the uniform steps learned (BENCHMARKS.md, "Training the bundled model").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refinement {
    /// Optimizer steps of the phase.
    pub steps: usize,
    /// Its peak learning rate (after the stage's warm-up steps; then the stage's decay shape).
    pub learning_rate: f64,
    /// Timesteps are drawn uniformly from `0..max_timestep`.
    pub max_timestep: usize,
    /// Images per step of the phase; `None` keeps the stage's batch size.
    pub batch_size: Option<usize>,
}

/// A training run.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// The images and captions.
    pub data: TrainingData,
    /// The pipeline folder to write (checkpoints go to its `checkpoints/`).
    pub output: PathBuf,
    /// The networks to start from.
    pub source: ModelSource,
    /// Seeds the initialization, the batches and the noise: the same seed gives the same weights.
    pub seed: u64,
    /// Images per denoiser step.
    pub batch_size: usize,
    /// Threads that split each batch between them (data parallelism; 1 runs the batch on the calling thread).
    /// Each worker's ops use candle's thread count, so with several workers set `RAYON_NUM_THREADS=1`. The
    /// same seed and worker count give the same weights.
    pub workers: usize,
    /// Whether the products of convolutions and linear layers take bf16 operands (f32 accumulation, f32 weights
    /// and gradients) on CPUs with AVX512-BF16: [`diffuse::internals::kernels::train_products::with_mixed_precision`].
    pub mixed_precision_bf16: bool,
    /// The VAE stage (ignored when fine-tuning).
    pub vae: VaeSettings,
    /// The denoiser stage.
    pub denoiser: DenoiserSettings,
    /// AdamW's betas, ε and weight decay.
    pub adamw: AdamWSettings,
    /// Gradients are scaled down to this global L2 norm; `None` disables clipping.
    pub max_grad_norm: Option<f64>,
    /// EMA decay of the exported denoiser weights; `None` exports the raw weights.
    pub ema_decay: Option<f64>,
    /// Save a checkpoint every this many steps (counted over both stages).
    pub checkpoint_every: Option<usize>,
    /// A checkpoint to continue from.
    pub resume: Option<PathBuf>,
    /// The dtype trained weights are written in.
    pub save_dtype: DType,
    /// Where to train.
    pub device: Device,
}

impl TrainConfig {
    /// A run with the defaults: batch 32 (16 for the VAE), AdamW (lr 1e-3 for the VAE, 5e-4 for the denoiser with 200
    /// warm-up steps and cosine decay), ε prediction (or the pipeline's), min-SNR γ = 5, offset noise 0.05,
    /// 10 % caption dropout, gradient clipping at 1, EMA 0.999, f32 weights, seed 0.
    pub fn new(data: TrainingData, output: PathBuf, source: ModelSource) -> Self {
        let from_scratch = matches!(source, ModelSource::Scratch { .. });
        Self {
            data,
            output,
            source,
            seed: 0,
            batch_size: 32,
            workers: 1,
            mixed_precision_bf16: false,
            vae: VaeSettings {
                steps: 1000,
                batch_size: 16,
                learning_rate: 1e-3,
                reconstruction: Reconstruction::L1,
                kl_weight: 1e-4,
            },
            denoiser: DenoiserSettings {
                steps: 2000,
                learning_rate: if from_scratch { 5e-4 } else { 1e-5 },
                warmup_steps: 200,
                lr_shape: LrShape::Cosine,
                prediction: None,
                zero_terminal_snr: None,
                min_snr_gamma: Some(5.0),
                noise_offset: 0.05,
                timestep_bias: TimestepBias::default(),
                refinement: None,
                caption_dropout: 0.1,
                train_text_encoder: from_scratch,
                text_encoder_learning_rate: None,
            },
            adamw: AdamWSettings::default(),
            max_grad_norm: Some(1.0),
            ema_decay: Some(0.999),
            checkpoint_every: None,
            resume: None,
            save_dtype: DType::F32,
            device: Device::Cpu,
        }
    }

    /// Whether the VAE and text encoder are trained from scratch.
    pub fn from_scratch(&self) -> bool {
        matches!(self.source, ModelSource::Scratch { .. })
    }

    /// The VAE steps this run makes (0 when fine-tuning).
    pub fn vae_steps(&self) -> usize {
        if self.from_scratch() {
            self.vae.steps
        } else {
            0
        }
    }

    /// The denoiser stage's steps, its refinement phase included.
    pub fn denoiser_steps(&self) -> usize {
        self.denoiser.steps + self.denoiser.refinement.map_or(0, |r| r.steps)
    }

    /// All steps over both stages.
    pub fn total_steps(&self) -> usize {
        self.vae_steps() + self.denoiser_steps()
    }

    /// Rejects values out of range, naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::invalid(
                "batch_size",
                "0: at least one image per step",
            ));
        }
        if self
            .denoiser
            .refinement
            .is_some_and(|r| r.batch_size == Some(0))
        {
            return Err(Error::invalid(
                "denoiser.refinement.batch_size",
                "0: at least one image per step",
            ));
        }
        let rates = [
            ("vae.learning_rate", self.vae.learning_rate),
            ("denoiser.learning_rate", self.denoiser.learning_rate),
            (
                "denoiser.text_encoder_learning_rate",
                self.denoiser
                    .text_encoder_learning_rate
                    .unwrap_or(self.denoiser.learning_rate),
            ),
            (
                "denoiser.refinement.learning_rate",
                self.denoiser
                    .refinement
                    .map_or(self.denoiser.learning_rate, |r| r.learning_rate),
            ),
        ];
        for (name, lr) in rates {
            if !lr.is_finite() || lr <= 0.0 {
                return Err(Error::invalid(
                    name,
                    format!("{lr}: must be a positive number"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.denoiser.caption_dropout) {
            return Err(Error::invalid(
                "denoiser.caption_dropout",
                format!("{}: must be in [0, 1]", self.denoiser.caption_dropout),
            ));
        }
        if let Some(decay) = self.ema_decay {
            if !(0.0..1.0).contains(&decay) {
                return Err(Error::invalid(
                    "ema_decay",
                    format!("{decay}: must be in [0, 1)"),
                ));
            }
        }
        if let Some(gamma) = self.denoiser.min_snr_gamma {
            if !gamma.is_finite() || gamma <= 0.0 {
                return Err(Error::invalid(
                    "denoiser.min_snr_gamma",
                    format!("{gamma}: must be positive"),
                ));
            }
        }
        self.denoiser.timestep_bias.validate()?;
        if self
            .denoiser
            .refinement
            .is_some_and(|r| r.max_timestep == 0)
        {
            return Err(Error::invalid(
                "denoiser.refinement.max_timestep",
                "0: at least one timestep to draw from",
            ));
        }
        if self.workers == 0 {
            return Err(Error::invalid("workers", "0: at least one worker"));
        }
        if self
            .max_grad_norm
            .is_some_and(|m| !m.is_finite() || m <= 0.0)
        {
            return Err(Error::invalid("max_grad_norm", "must be positive"));
        }
        if !self.vae.kl_weight.is_finite() || self.vae.kl_weight < 0.0 {
            return Err(Error::invalid("vae.kl_weight", "must be ≥ 0"));
        }
        if !self.denoiser.noise_offset.is_finite() || self.denoiser.noise_offset < 0.0 {
            return Err(Error::invalid("denoiser.noise_offset", "must be ≥ 0"));
        }
        if self.checkpoint_every == Some(0) {
            return Err(Error::invalid("checkpoint_every", "0: must be at least 1"));
        }
        if !matches!(self.save_dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::invalid(
                "save_dtype",
                format!("{:?}: expected f32, f16 or bf16", self.save_dtype),
            ));
        }
        if self.total_steps() == 0 {
            return Err(Error::invalid("denoiser.steps", "0: nothing to train"));
        }
        Ok(())
    }
}

/// The side of the training images when no resolution is given: 32 from scratch, the pipeline's own
/// size (the UNet's `sample_size` times the VAE factor) when fine-tuning.
pub fn default_resolution(source: &ModelSource) -> Result<usize> {
    match source {
        ModelSource::Scratch { .. } => Ok(32),
        ModelSource::Pretrained { folder } => {
            let folder = diffuse::loaders::PipelineFolder::open(folder)?;
            let factor = folder.vae_config()?.scale_factor();
            let (h, w) = folder.unet_config()?.sample_size_hw().ok_or_else(|| {
                Error::unsupported(
                    "unet/config.json",
                    "sample_size",
                    "null",
                    "an integer (or pass `resolution`)",
                )
            })?;
            Ok(h.min(w) * factor)
        }
    }
}
