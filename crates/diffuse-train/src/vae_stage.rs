//! The VAE stage: train the autoencoder on reconstruction + KL (from scratch), then freeze it and measure the
//! latent scaling factor; or load the pretrained pipeline's VAE frozen.

use std::time::Instant;

use candle_core::{DType, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::checkpoint::{self, Checkpoint};
use super::config::TrainConfig;
use super::data_parallel::mean_loss_gradients;
use super::init::{initialize, name_hash, sorted_vars};
use super::objectives::vae_loss;
use super::optimizer::{clip_scale, grad_norm, AdamW, LrSchedule, LrShape};
use super::shapes::SplitMix;
use super::trainer::{
    emit, frozen_builder, prefixed, set_vars, snapshot, step_seed, Events, Setup, Stage,
    StepReport, TrainEvent,
};
use diffuse::loaders::LoadOptions;
use diffuse::models::vae::AutoencoderKL;
use diffuse::rng::TorchCpuRng;
use diffuse::{Error, Result};

/// Images encoded to measure the latents' spread.
const SCALE_SAMPLES: usize = 512;

/// The frozen VAE the denoiser trains on.
pub(crate) struct TrainedVae {
    /// The model, without gradient tracking.
    pub model: AutoencoderKL,
    /// Its weights when trained in this run (`None` when taken from a pretrained folder).
    pub weights: Option<Vec<(String, candle_core::Tensor)>>,
    /// Latents are `(z − shift) · scaling_factor`.
    pub scaling_factor: f64,
    /// The VAE config's `shift_factor` (0 when absent).
    pub shift: f64,
    /// The loss of each step this run made.
    pub losses: Vec<f32>,
}

/// Trains (or loads) the VAE.
pub(crate) fn run(
    config: &TrainConfig,
    setup: &mut Setup,
    resume: Option<&Checkpoint>,
    events: &mut Events,
) -> Result<TrainedVae> {
    let device = &config.device;
    if let Some(folder) = &setup.pretrained {
        let model = folder.load_vae(&LoadOptions {
            dtype: DType::F32,
            device: device.clone(),
            ..LoadOptions::default()
        })?;
        let cfg = model.config().clone();
        return Ok(TrainedVae {
            model,
            weights: None,
            scaling_factor: cfg.scaling_factor,
            shift: cfg.shift_factor.unwrap_or(0.0),
            losses: Vec::new(),
        });
    }
    let cfg = setup.architecture.vae_config()?;
    let vars = VarMap::new();
    let vae = AutoencoderKL::new(VarBuilder::from_varmap(&vars, DType::F32, device), &cfg)?;
    initialize(&vars, setup.seed ^ name_hash("vae"), false)?;
    narrow_posterior(&vars, cfg.latent_channels)?;
    let named = prefixed(sorted_vars(&vars)?, "vae");
    let mut optimizer = AdamW::new(named.clone(), config.adamw)?;
    let steps = config.vae.steps;
    let mut start = 0;
    if let Some(ckpt) = resume {
        let source = ckpt.path.display().to_string();
        set_vars(
            &vars,
            &checkpoint::with_prefix(&ckpt.tensors, "vae"),
            &source,
        )?;
        if ckpt.state.step < steps {
            start = ckpt.state.step;
            optimizer.load_state(
                &checkpoint::with_prefix(&ckpt.tensors, "optimizer"),
                ckpt.state.optimizer_steps,
                &source,
            )?;
        } else {
            start = steps;
        }
    }
    let schedule = LrSchedule {
        base: config.vae.learning_rate,
        warmup: (steps / 10).min(100),
        total: steps,
        shape: LrShape::Cosine,
    };
    let mut losses = Vec::new();
    let started = Instant::now();
    for step in start..steps {
        let seed = step_seed(setup.seed, step);
        let mut picks = SplitMix::new(seed);
        let indices: Vec<usize> = (0..config.vae.batch_size)
            .map(|_| picks.below(config.data.len()))
            .collect();
        let (images, _) = config.data.batch(&indices, device)?;
        let side = config.data.resolution() / cfg.scale_factor();
        let eps_dims = [indices.len(), cfg.latent_channels, side, side];
        let eps = Tensor::from_vec(
            TorchCpuRng::new(seed).randn_f32(&eps_dims),
            eps_dims.as_slice(),
            device,
        )?;
        let (value, grads) = mean_loss_gradients(
            indices.len(),
            config.workers,
            config.mixed_precision_bf16,
            &named,
            |share| {
                let images = images.narrow(0, share.start, share.len())?;
                let posterior = vae.encode(&images)?;
                let std = (&posterior.logvar * 0.5)?.exp()?;
                let z = (&posterior.mean + (std * eps.narrow(0, share.start, share.len())?)?)?;
                let reconstruction = vae.decode(&z)?;
                Ok(vae_loss(
                    &reconstruction,
                    &images,
                    &posterior,
                    config.vae.reconstruction,
                    config.vae.kl_weight,
                )?
                .total)
            },
        )?;
        if !value.is_finite() {
            return Err(Error::invalid(
                "vae.learning_rate",
                format!(
                    "the VAE loss became {value} at step {}; lower the learning rate",
                    step + 1
                ),
            ));
        }
        let scale = clip_scale(grad_norm(&grads, &named)?, config.max_grad_norm);
        let lr = schedule.at(step);
        optimizer.step(&grads, lr, scale)?;
        losses.push(value);
        emit(
            events,
            TrainEvent::Step(StepReport {
                stage: Stage::Vae,
                step: step + 1,
                total: config.total_steps(),
                stage_step: step + 1,
                stage_total: steps,
                loss: value,
                learning_rate: lr,
                steps_per_second: (step + 1 - start) as f64 / started.elapsed().as_secs_f64(),
            }),
        )?;
        if config
            .checkpoint_every
            .is_some_and(|every| (step + 1).is_multiple_of(every))
        {
            let path = checkpoint::checkpoint_path(&setup.checkpoints, step + 1);
            let mut tensors = snapshot(&named)?;
            tensors.extend(
                optimizer
                    .state()
                    .into_iter()
                    .map(|(k, v)| (format!("optimizer.{k}"), v)),
            );
            let state = checkpoint::new_state(
                step + 1,
                setup.seed,
                &setup.architecture,
                None,
                optimizer.steps(),
                0,
            );
            checkpoint::save(&path, &state, &tensors)?;
            emit(events, TrainEvent::Checkpoint(path))?;
        }
    }
    let weights: Vec<(String, Tensor)> = snapshot(&sorted_vars(&vars)?)?;
    let model = AutoencoderKL::new(frozen_builder(&weights, device), &cfg)?;
    let scaling_factor = match resume.and_then(|c| c.state.scaling_factor) {
        Some(s) => s,
        None => {
            emit(
                events,
                TrainEvent::Message("measuring the latents' spread".into()),
            )?;
            measure_scaling_factor(&model, config, setup.seed)?
        }
    };
    Ok(TrainedVae {
        model,
        weights: Some(weights),
        scaling_factor,
        shift: 0.0,
        losses,
    })
}

/// The initial log-variance of the posterior: with σ ≈ 0.02 the decoder sees the encoder's signal from the
/// first step instead of unit noise (the KL term is too weak to shrink σ quickly on its own).
const INITIAL_LOGVAR: f64 = -8.0;

/// Sets the log-variance half of `quant_conv`'s bias to [`INITIAL_LOGVAR`].
fn narrow_posterior(vars: &VarMap, latent_channels: usize) -> Result<()> {
    let data = vars
        .data()
        .lock()
        .map_err(|_| Error::invalid("variables", "a training thread panicked"))?;
    if let Some(bias) = data.get("quant_conv.bias") {
        let values: Vec<f32> = (0..2 * latent_channels)
            .map(|i| {
                if i < latent_channels {
                    0.0
                } else {
                    INITIAL_LOGVAR as f32
                }
            })
            .collect();
        bias.set(&Tensor::from_vec(
            values,
            2 * latent_channels,
            bias.device(),
        )?)?;
    }
    Ok(())
}

/// `1 / std` of posterior samples of up to [`SCALE_SAMPLES`] training images, as Stable Diffusion's
/// scaling factor was chosen.
fn measure_scaling_factor(model: &AutoencoderKL, config: &TrainConfig, seed: u64) -> Result<f64> {
    let count = config.data.len().min(SCALE_SAMPLES);
    let mut rng = TorchCpuRng::new(seed ^ name_hash("scaling"));
    let mut sum = 0f64;
    let mut sum_sq = 0f64;
    let mut n = 0usize;
    for chunk in (0..count).collect::<Vec<_>>().chunks(64) {
        let (images, _) = config.data.batch(chunk, &config.device)?;
        let z = model.encode(&images)?.sample(&mut rng)?;
        let values = z.flatten_all()?.to_vec1::<f32>()?;
        n += values.len();
        for v in values {
            sum += v as f64;
            sum_sq += (v as f64) * (v as f64);
        }
    }
    let mean = sum / n.max(1) as f64;
    let std = (sum_sq / n.max(1) as f64 - mean * mean).max(0.0).sqrt();
    if !std.is_finite() || std < 1e-6 {
        return Err(Error::invalid(
            "VAE",
            format!("the latents have no spread (std {std}); train the VAE longer"),
        ));
    }
    Ok(1.0 / std)
}
