//! `diffuse train`: train a pipeline from scratch on the shapes set or a captioned image folder, or fine-tune the
//! UNet of an existing pipeline, and write a diffusers folder.

use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use diffuse_train::export::parse_save_dtype;
use diffuse_train::objectives::{Prediction, Reconstruction};
use diffuse_train::optimizer::LrShape;
use diffuse_train::timestep_bias::{BiasStrategy, TimestepBias};
use diffuse_train::trainer::Stage;
use diffuse_train::{
    default_resolution, train, ModelSource, Refinement, StepReport, TrainConfig, TrainEvent,
    TrainingData,
};

/// The stored dtype of trained weights.
#[derive(Clone, Copy, ValueEnum)]
pub enum SaveDtype {
    /// 32-bit floats.
    F32,
    /// 16-bit floats.
    F16,
    /// bfloat16.
    Bf16,
}

/// The precision of the training products (accelerate's `--mixed_precision`).
#[derive(Clone, Copy, ValueEnum)]
pub enum MixedPrecision {
    /// f32 throughout.
    No,
    /// bf16 operands, f32 accumulation, f32 weights and gradients (needs AVX512-BF16; f32 without it).
    Bf16,
}

/// The learning-rate shape after warm-up.
#[derive(Clone, Copy, ValueEnum)]
pub enum Schedule {
    /// Constant.
    Constant,
    /// Cosine decay to 0.
    Cosine,
}

/// The VAE's reconstruction error.
#[derive(Clone, Copy, ValueEnum)]
pub enum VaeLoss {
    /// Mean absolute error.
    L1,
    /// Mean squared error.
    Mse,
}

/// What the UNet predicts.
#[derive(Clone, Copy, ValueEnum)]
pub enum Target {
    /// The noise.
    Epsilon,
    /// The velocity.
    #[value(name = "v_prediction")]
    VPrediction,
}

/// Which training timesteps are drawn more often (diffusers' `--timestep_bias_strategy`).
#[derive(Clone, Copy, ValueEnum)]
pub enum BiasStrategyArg {
    /// Uniform timesteps.
    None,
    /// The least noisy `--timestep-bias-portion` of the schedule.
    Earlier,
    /// The noisiest `--timestep-bias-portion` of the schedule.
    Later,
    /// `--timestep-bias-begin` to `--timestep-bias-end`.
    Range,
}

/// Arguments of `diffuse train`.
#[derive(Args)]
pub struct TrainArgs {
    /// Training data: `shapes` (or `shapes:COUNT`) for the procedural captioned shapes, or a folder of images
    /// with captions (`a.png` + `a.txt`, or a `metadata.jsonl` with `file_name` and `text`).
    #[arg(long)]
    data: String,
    /// The pipeline folder to write (checkpoints go to its `checkpoints/`).
    #[arg(long)]
    out: PathBuf,
    /// Fine-tune the UNet of this pipeline folder (VAE and text encoder frozen) instead of training from
    /// scratch.
    #[arg(long)]
    from: Option<PathBuf>,
    /// From scratch: the CLIP tokenizer folder (or a pipeline folder holding `tokenizer/`) whose vocabulary
    /// and length the new text encoder uses.
    #[arg(long, required_unless_present = "from")]
    tokenizer: Option<PathBuf>,
    /// Image side in pixels (default: 32 from scratch, the pipeline's size when fine-tuning).
    #[arg(long)]
    resolution: Option<usize>,
    /// UNet (denoiser) optimizer steps.
    #[arg(long, id = "denoiser.steps", default_value_t = 2000)]
    steps: usize,
    /// VAE optimizer steps (from scratch only).
    #[arg(long, default_value_t = 1000)]
    vae_steps: usize,
    /// Images per UNet step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Images per VAE step.
    #[arg(long, default_value_t = 16)]
    vae_batch_size: usize,
    /// Peak learning rate of the UNet stage (default: 5e-4 from scratch, 1e-5 fine-tuning).
    #[arg(long, id = "denoiser.learning_rate")]
    lr: Option<f64>,
    /// Peak learning rate of the VAE stage.
    #[arg(long, id = "vae.learning_rate", default_value_t = 1e-3)]
    vae_lr: f64,
    /// Linear warm-up steps of the UNet stage.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Learning-rate shape after warm-up.
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    lr_schedule: Schedule,
    /// Prediction target (default: the pipeline's `prediction_type`; epsilon from scratch).
    #[arg(long, id = "denoiser.prediction", value_enum)]
    prediction: Option<Target>,
    /// γ of min-SNR-γ loss weighting (0 turns the weighting off).
    #[arg(long, id = "denoiser.min_snr_gamma", default_value_t = 5.0)]
    min_snr_gamma: f64,
    /// Rescale the noise schedule to zero terminal SNR and sample with trailing timesteps (needs
    /// `--prediction v_prediction`): the last timestep is pure noise, so the prompt alone sets the layout.
    /// Pair it with `--min-snr-gamma 0`: min-SNR weighting gives the pure-noise timesteps no weight.
    #[arg(long, id = "denoiser.zero_terminal_snr")]
    zero_terminal_snr: bool,
    /// Offset-noise scale.
    #[arg(long, id = "denoiser.noise_offset", default_value_t = 0.05)]
    noise_offset: f64,
    /// Worker threads that each take a share of every batch (data parallelism) and run it with
    /// single-threaded ops, which on small networks beats sharing every op (default: all cores). With 1, the
    /// whole batch runs on candle's multi-threaded ops, as before data parallelism. The same `--seed` and
    /// `--workers` give the same weights.
    #[arg(long)]
    workers: Option<usize>,
    /// The precision of the convolutions' and linear layers' products: `bf16` rounds their operands to bf16
    /// and accumulates in f32 on AVX512-BF16 (as PyTorch's bf16 autocast), keeping weights, activations and
    /// gradients f32.
    #[arg(long, value_enum, default_value_t = MixedPrecision::No)]
    mixed_precision: MixedPrecision,
    /// Draw some timesteps more often than others (as diffusers' SDXL training script does).
    #[arg(long, id = "denoiser.timestep_bias.strategy", value_enum, default_value_t = BiasStrategyArg::None)]
    timestep_bias_strategy: BiasStrategyArg,
    /// The factor on the biased timesteps' sampling weight.
    #[arg(long, id = "denoiser.timestep_bias.multiplier", default_value_t = 1.0)]
    timestep_bias_multiplier: f64,
    /// The biased fraction of the schedule for `earlier` and `later`.
    #[arg(long, id = "denoiser.timestep_bias.portion", default_value_t = 0.25)]
    timestep_bias_portion: f64,
    /// The first biased timestep for `range`.
    #[arg(long, id = "denoiser.timestep_bias.begin", default_value_t = 0)]
    timestep_bias_begin: usize,
    /// One past the last biased timestep for `range`.
    #[arg(long, id = "denoiser.timestep_bias.end", default_value_t = 1000)]
    timestep_bias_end: usize,
    /// UNet steps of a refinement phase after `--steps`: timesteps drawn only below `--refine-max-timestep`
    /// (the least noisy ones, where a shape's corners are drawn), with their own warm-up and decay.
    #[arg(long, default_value_t = 0)]
    refine_steps: usize,
    /// Peak learning rate of the refinement phase (default: half the UNet stage's).
    #[arg(long, id = "denoiser.refinement.learning_rate")]
    refine_lr: Option<f64>,
    /// The refinement phase draws its timesteps from `0..` this.
    #[arg(long, id = "denoiser.refinement.max_timestep", default_value_t = 500)]
    refine_max_timestep: usize,
    /// Images per step of the refinement phase (default: `--batch-size`).
    #[arg(long, id = "denoiser.refinement.batch_size")]
    refine_batch_size: Option<usize>,
    /// The VAE's reconstruction error.
    #[arg(long, value_enum, default_value_t = VaeLoss::L1)]
    vae_loss: VaeLoss,
    /// Weight of the VAE's KL term.
    #[arg(long, id = "vae.kl_weight", default_value_t = 1e-4)]
    kl_weight: f64,
    /// Fraction of captions dropped (replaced by "") for classifier-free guidance.
    #[arg(long, id = "denoiser.caption_dropout", default_value_t = 0.1)]
    caption_dropout: f64,
    /// Fine-tuning: train the text encoder too (from scratch it is trained unless frozen).
    #[arg(long, conflicts_with = "freeze_text_encoder")]
    train_text_encoder: bool,
    /// From scratch: keep the text encoder at its random initialization.
    #[arg(long)]
    freeze_text_encoder: bool,
    /// Peak learning rate of the text encoder when it is trained (default: --lr).
    #[arg(long, id = "denoiser.text_encoder_learning_rate")]
    text_encoder_lr: Option<f64>,
    /// EMA decay of the exported weights (0 exports the raw weights).
    #[arg(long, default_value_t = 0.999)]
    ema_decay: f64,
    /// Clip gradients to this global norm (0 turns clipping off).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Save a checkpoint every N steps (counted over both stages).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Continue from a checkpoint file, or `latest` for the newest in OUT/checkpoints.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Seed of the initialization, the data order and the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stored dtype of the trained weights.
    #[arg(long, value_enum, default_value_t = SaveDtype::F32)]
    save_dtype: SaveDtype,
}

/// Runs the training and prints progress on stderr.
pub fn run(args: TrainArgs) -> Result<()> {
    run_training(args).map_err(super::flags::with_flags::<TrainArgs>)
}

fn run_training(args: TrainArgs) -> Result<()> {
    let workers = match args.workers {
        Some(0) => bail!("invalid --workers: 0: at least one worker"),
        Some(workers) => workers,
        None => candle_core::utils::get_num_threads(),
    };
    if workers > 1 {
        // Each worker runs its share of a batch with single-threaded ops; candle and its GEMM read this when
        // they size their thread pools, and no other thread exists yet.
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let source = match (&args.from, &args.tokenizer) {
        (Some(folder), None) => ModelSource::Pretrained {
            folder: folder.clone(),
        },
        (None, Some(tokenizer)) => ModelSource::Scratch {
            tokenizer: tokenizer.clone(),
        },
        (Some(_), Some(_)) => {
            bail!("--tokenizer is for training from scratch; --from uses the pipeline's")
        }
        (None, None) => bail!("give --tokenizer (from scratch) or --from (fine-tuning)"),
    };
    let resolution = match args.resolution {
        Some(r) => r,
        None => default_resolution(&source)?,
    };
    let data = TrainingData::from_spec(&args.data, resolution, args.seed)?;
    let mut config = TrainConfig::new(data, args.out.clone(), source);
    config.seed = args.seed;
    config.batch_size = args.batch_size;
    config.workers = workers;
    config.mixed_precision_bf16 = matches!(args.mixed_precision, MixedPrecision::Bf16);
    config.vae.steps = args.vae_steps;
    config.vae.batch_size = args.vae_batch_size;
    config.vae.learning_rate = args.vae_lr;
    config.vae.kl_weight = args.kl_weight;
    config.vae.reconstruction = match args.vae_loss {
        VaeLoss::L1 => Reconstruction::L1,
        VaeLoss::Mse => Reconstruction::Mse,
    };
    config.denoiser.steps = args.steps;
    if let Some(lr) = args.lr {
        config.denoiser.learning_rate = lr;
    }
    config.denoiser.warmup_steps = args.warmup;
    config.denoiser.lr_shape = match args.lr_schedule {
        Schedule::Constant => LrShape::Constant,
        Schedule::Cosine => LrShape::Cosine,
    };
    config.denoiser.prediction = args.prediction.map(|p| match p {
        Target::Epsilon => Prediction::Epsilon,
        Target::VPrediction => Prediction::VPrediction,
    });
    config.denoiser.zero_terminal_snr = args.zero_terminal_snr.then_some(true);
    config.denoiser.min_snr_gamma = (args.min_snr_gamma > 0.0).then_some(args.min_snr_gamma);
    config.denoiser.noise_offset = args.noise_offset;
    config.denoiser.timestep_bias = TimestepBias {
        strategy: match args.timestep_bias_strategy {
            BiasStrategyArg::None => BiasStrategy::None,
            BiasStrategyArg::Earlier => BiasStrategy::Earlier,
            BiasStrategyArg::Later => BiasStrategy::Later,
            BiasStrategyArg::Range => BiasStrategy::Range,
        },
        multiplier: args.timestep_bias_multiplier,
        portion: args.timestep_bias_portion,
        begin: args.timestep_bias_begin,
        end: args.timestep_bias_end,
    };
    config.denoiser.refinement = (args.refine_steps > 0).then(|| Refinement {
        steps: args.refine_steps,
        learning_rate: args
            .refine_lr
            .unwrap_or(config.denoiser.learning_rate / 2.0),
        max_timestep: args.refine_max_timestep,
        batch_size: args.refine_batch_size,
    });
    config.denoiser.caption_dropout = args.caption_dropout;
    config.denoiser.train_text_encoder = (config.denoiser.train_text_encoder
        || args.train_text_encoder)
        && !args.freeze_text_encoder;
    config.denoiser.text_encoder_learning_rate = args.text_encoder_lr;
    config.ema_decay = (args.ema_decay > 0.0).then_some(args.ema_decay);
    config.max_grad_norm = (args.max_grad_norm > 0.0).then_some(args.max_grad_norm);
    config.checkpoint_every = args.checkpoint_every;
    config.resume = args.resume;
    config.save_dtype = parse_save_dtype(match args.save_dtype {
        SaveDtype::F32 => "f32",
        SaveDtype::F16 => "f16",
        SaveDtype::Bf16 => "bf16",
    })?;

    let started = Instant::now();
    let mut bar = ProgressBar::new();
    let report = train(&config, &mut |event| {
        bar.show(event);
        ControlFlow::Continue(())
    })?;
    bar.finish();
    let last = |losses: &[f32]| {
        let tail = &losses[losses.len().saturating_sub(50)..];
        tail.iter().sum::<f32>() / tail.len().max(1) as f32
    };
    eprintln!(
        "done in {}: {} (VAE scaling factor {:.5}; final losses: vae {:.4}, unet {:.4})",
        format_duration(started.elapsed()),
        report.output.display(),
        report.scaling_factor,
        last(&report.vae_losses),
        last(&report.denoiser_losses)
    );
    Ok(())
}

/// A one-line progress display: redrawn in place on a terminal, a line every 100 steps otherwise.
struct ProgressBar {
    terminal: bool,
    last_draw: Option<Instant>,
    drawn: bool,
}

impl ProgressBar {
    fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            last_draw: None,
            drawn: false,
        }
    }

    fn show(&mut self, event: &TrainEvent) {
        match event {
            TrainEvent::Message(text) => {
                self.finish();
                eprintln!("{text}");
            }
            TrainEvent::Checkpoint(path) => {
                self.finish();
                eprintln!("checkpoint {}", path.display());
            }
            TrainEvent::Step(report) => self.step(report),
        }
    }

    fn step(&mut self, r: &StepReport) {
        let last = r.stage_step == r.stage_total;
        let line = format_step(r);
        if self.terminal {
            let due = self
                .last_draw
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(200));
            if due || last {
                eprint!("\r{line}\x1b[K");
                let _ = std::io::stderr().flush();
                self.last_draw = Some(Instant::now());
                self.drawn = true;
            }
            if last {
                self.finish();
            }
        } else if r.stage_step.is_multiple_of(100) || last || r.stage_step == 1 {
            eprintln!("{line}");
        }
    }

    fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

fn format_step(r: &StepReport) -> String {
    const WIDTH: usize = 24;
    let filled = (r.stage_step * WIDTH) / r.stage_total.max(1);
    let bar: String = (0..WIDTH)
        .map(|i| if i < filled { '█' } else { '░' })
        .collect();
    let remaining = if r.steps_per_second > 0.0 {
        (r.total - r.step) as f64 / r.steps_per_second
    } else {
        0.0
    };
    let stage = match r.stage {
        Stage::Vae => "vae ",
        Stage::Denoiser => "unet",
    };
    format!(
        "{stage} {bar} {}/{}  loss {:.4}  lr {:.2e}  {:.2} steps/s  ETA {}",
        r.stage_step,
        r.stage_total,
        r.loss,
        r.learning_rate,
        r.steps_per_second,
        format_duration(Duration::from_secs_f64(remaining))
    )
}

fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}
