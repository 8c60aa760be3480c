//! The denoiser stage: encode the data once with the frozen VAE, then train the UNet (and the text encoder
//! when asked) to predict the noise, with caption dropout, EMA and checkpoints.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::checkpoint::{self, Checkpoint};
use super::config::{DenoiserSettings, TrainConfig};
use super::data_parallel::mean_loss_gradients;
use super::ema::Ema;
use super::init::{initialize, name_hash, sorted_vars};
use super::objectives::DenoisingObjective;
use super::optimizer::{clip_scale, grad_norm, AdamW, LrSchedule};
use super::shapes::SplitMix;
use super::timestep_bias::TimestepSampler;
use super::trainer::{
    emit, prefixed, set_vars, snapshot, step_seed, Events, Setup, Stage, StepReport, TrainEvent,
};
use super::vae_stage::TrainedVae;
use diffuse::loaders::{LoadOptions, PipelineFolder, Variant};
use diffuse::models::clip::text_model::ClipTextModel;
use diffuse::models::unet::{ExtraConditioning, UNet2DConditionModel};
use diffuse::rng::TorchCpuRng;
use diffuse::schedulers::{NoiseSchedule, SchedulerConfig};
use diffuse::{Error, Result};

/// Images encoded per VAE call when caching the latents.
const ENCODE_CHUNK: usize = 64;

/// The trained denoiser's exported weights.
#[derive(Clone)]
pub(crate) struct TrainedDenoiser {
    /// The UNet's weights (EMA when enabled).
    pub unet: Vec<(String, Tensor)>,
    /// The text encoder's weights when it was trained.
    pub text_encoder: Option<Vec<(String, Tensor)>>,
    /// The loss of each step this run made.
    pub losses: Vec<f32>,
}

/// The posterior of every training image and its caption.
struct LatentCache {
    mean: Tensor,
    std: Tensor,
    captions: Vec<String>,
}

fn encode_all(config: &TrainConfig, vae: &TrainedVae, events: &mut Events) -> Result<LatentCache> {
    let n = config.data.len();
    emit(
        events,
        TrainEvent::Message(format!("encoding {n} images with the frozen VAE")),
    )?;
    let mut means = Vec::new();
    let mut stds = Vec::new();
    let mut captions = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(ENCODE_CHUNK) {
        let (images, texts) = config.data.batch(chunk, &config.device)?;
        let posterior = vae.model.encode(&images)?;
        means.push(posterior.mean);
        stds.push((posterior.logvar * 0.5)?.exp()?);
        captions.extend(texts);
    }
    Ok(LatentCache {
        mean: Tensor::cat(&means, 0)?.contiguous()?,
        std: Tensor::cat(&stds, 0)?.contiguous()?,
        captions,
    })
}

/// The text encoder: its variables when built here (from scratch, or to be trained), and whether it trains.
struct TextEncoder {
    model: ClipTextModel,
    vars: Option<VarMap>,
    trained: bool,
}

/// Copies the weights of component `name` of `folder` into `vars` (names as the diffuse model asks for them;
/// the Hub's `text_model.` prefix is tried too).
fn load_pretrained(
    vars: &VarMap,
    folder: &PipelineFolder,
    name: &str,
    device: &Device,
) -> Result<()> {
    let vb = folder
        .weight_files(name, Variant::Default)?
        .var_builder(DType::F32, device);
    for (key, var) in sorted_vars(vars)? {
        let stored =
            if !vb.contains_tensor(&key) && vb.contains_tensor(&format!("text_model.{key}")) {
                format!("text_model.{key}")
            } else {
                key
            };
        var.set(&vb.get(var.dims(), &stored)?)?;
    }
    Ok(())
}

fn text_encoder(config: &TrainConfig, setup: &Setup) -> Result<TextEncoder> {
    let device = &config.device;
    let cfg = setup.architecture.text_encoder_config()?;
    if !config.denoiser.train_text_encoder && !config.from_scratch() {
        if let Some(folder) = &setup.pretrained {
            let model = folder.load_text_encoder(
                "text_encoder",
                &LoadOptions {
                    dtype: DType::F32,
                    device: device.clone(),
                    variant: Variant::Default,
                    quantize: None,
                },
            )?;
            return Ok(TextEncoder {
                model,
                vars: None,
                trained: false,
            });
        }
    }
    let vars = VarMap::new();
    let model = ClipTextModel::new(
        VarBuilder::from_varmap(&vars, DType::F32, device),
        &cfg,
        false,
    )?;
    match &setup.pretrained {
        Some(folder) => load_pretrained(&vars, folder, "text_encoder", device)?,
        None => initialize(&vars, setup.seed ^ name_hash("text_encoder"), false)?,
    }
    Ok(TextEncoder {
        model,
        vars: Some(vars),
        trained: config.denoiser.train_text_encoder,
    })
}

/// The token ids of `captions` as a `[n, max_length]` u32 tensor.
fn token_ids(setup: &Setup, captions: &[String], device: &Device) -> Result<Tensor> {
    let tokens = setup.tokenizer.encode_batch(captions)?;
    let length = setup.tokenizer.max_length();
    let ids: Vec<u32> = tokens.iter().flat_map(|t| t.ids.iter().copied()).collect();
    Ok(Tensor::from_vec(ids, (captions.len(), length), device)?)
}

/// One phase of the denoiser stage: its first step, its timestep distribution and its learning rates.
pub(crate) struct Phase {
    first_step: usize,
    objective: DenoisingObjective,
    learning_rate: LrSchedule,
    batch_size: usize,
}

/// The main phase, then the refinement phase if there is one, each with its own warm-up and decay. Called
/// before the VAE stage too, so that a timestep setting outside the schedule fails before the first step.
pub(crate) fn phases(config: &TrainConfig, setup: &Setup) -> Result<Vec<Phase>> {
    let settings = &config.denoiser;
    let scheduler = SchedulerConfig::from_json_str(&setup.scheduler.to_string())?;
    let schedule = NoiseSchedule::from_config(&scheduler)?;
    let objective = DenoisingObjective {
        timesteps: TimestepSampler::new(&settings.timestep_bias, schedule.num_train_timesteps())?,
        schedule,
        prediction: setup.prediction,
        min_snr_gamma: settings.min_snr_gamma,
        noise_offset: settings.noise_offset,
    };
    phases_of(settings, &objective, config.batch_size)
}

/// The phases of `settings` around `objective` and `batch_size`, the main phase's.
fn phases_of(
    settings: &DenoiserSettings,
    objective: &DenoisingObjective,
    batch_size: usize,
) -> Result<Vec<Phase>> {
    let mut phases = vec![Phase {
        first_step: 0,
        objective: objective.clone(),
        learning_rate: LrSchedule {
            base: settings.learning_rate,
            warmup: settings.warmup_steps,
            total: settings.steps,
            shape: settings.lr_shape,
        },
        batch_size,
    }];
    if let Some(refine) = settings.refinement {
        phases.push(Phase {
            first_step: settings.steps,
            objective: DenoisingObjective {
                timesteps: TimestepSampler::below(
                    refine.max_timestep,
                    objective.schedule.num_train_timesteps(),
                )?,
                ..objective.clone()
            },
            learning_rate: LrSchedule {
                base: refine.learning_rate,
                warmup: settings.warmup_steps,
                total: refine.steps,
                shape: settings.lr_shape,
            },
            batch_size: refine.batch_size.unwrap_or(batch_size),
        });
    }
    Ok(phases)
}

/// The phase of the stage's `step` (0-based) and its learning rate there.
fn phase_at(phases: &[Phase], step: usize) -> (&Phase, f64) {
    let phase = phases
        .iter()
        .rev()
        .find(|p| p.first_step <= step)
        .unwrap_or(&phases[0]);
    (phase, phase.learning_rate.at(step - phase.first_step))
}

/// Trains the denoiser.
pub(crate) fn run(
    config: &TrainConfig,
    setup: &Setup,
    vae: &TrainedVae,
    resume: Option<&Checkpoint>,
    events: &mut Events,
) -> Result<TrainedDenoiser> {
    let device = &config.device;
    let settings = &config.denoiser;
    let offset = config.vae_steps();
    let cache = encode_all(config, vae, events)?;

    let text = text_encoder(config, setup)?;
    let unet_vars = VarMap::new();
    let unet = UNet2DConditionModel::new(
        VarBuilder::from_varmap(&unet_vars, DType::F32, device),
        &setup.architecture.unet_config()?,
    )?;
    match &setup.pretrained {
        Some(folder) => load_pretrained(&unet_vars, folder, "unet", device)?,
        None => initialize(&unet_vars, setup.seed ^ name_hash("unet"), true)?,
    }
    let mut trainable: Vec<(String, Var)> = prefixed(sorted_vars(&unet_vars)?, "unet");
    if let Some(vars) = text.vars.as_ref().filter(|_| text.trained) {
        trainable.extend(prefixed(sorted_vars(vars)?, "text_encoder"));
    }
    let mut optimizer = AdamW::new(trainable.clone(), config.adamw)?;
    if let Some(lr) = settings.text_encoder_learning_rate {
        optimizer.scale_learning_rate("text_encoder.", lr / settings.learning_rate);
    }
    let mut ema = config
        .ema_decay
        .map(|decay| Ema::new(&trainable, decay))
        .transpose()?;

    let mut start = 0;
    if let Some(ckpt) = resume.filter(|c| c.state.step > offset) {
        let source = ckpt.path.display().to_string();
        set_vars(
            &unet_vars,
            &checkpoint::with_prefix(&ckpt.tensors, "unet"),
            &source,
        )?;
        if let Some(vars) = text.vars.as_ref().filter(|_| text.trained) {
            set_vars(
                vars,
                &checkpoint::with_prefix(&ckpt.tensors, "text_encoder"),
                &source,
            )?;
        }
        optimizer.load_state(
            &checkpoint::with_prefix(&ckpt.tensors, "optimizer"),
            ckpt.state.optimizer_steps,
            &source,
        )?;
        if let Some(ema) = &mut ema {
            ema.load(&ckpt.tensors, ckpt.state.ema_updates, &source)?;
        }
        start = ckpt.state.step - offset;
    }

    let phases = phases(config, setup)?;
    let steps = config.denoiser_steps();
    let n = cache.captions.len();
    let mut losses = Vec::new();
    let started = Instant::now();
    for step in start..steps {
        let (phase, lr) = phase_at(&phases, step);
        let objective = &phase.objective;
        let seed = step_seed(setup.seed, offset + step);
        let mut picks = SplitMix::new(seed);
        let indices: Vec<usize> = (0..phase.batch_size).map(|_| picks.below(n)).collect();
        let captions: Vec<String> = indices
            .iter()
            .map(|&i| {
                if (picks.unit() as f64) < settings.caption_dropout {
                    String::new()
                } else {
                    cache.captions[i].clone()
                }
            })
            .collect();
        let mut rng = TorchCpuRng::new(seed);
        let index = Tensor::from_vec(
            indices.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            indices.len(),
            device,
        )?;
        let mean = cache.mean.index_select(&index, 0)?;
        let std = cache.std.index_select(&index, 0)?;
        let eps = Tensor::from_vec(rng.randn_f32(mean.dims()), mean.dims(), device)?;
        let latents = ((mean + (std * eps)?)? - vae.shift)?.affine(vae.scaling_factor, 0.0)?;
        let noised = objective.noise(&latents, &mut rng)?;
        let (value, grads) = mean_loss_gradients(
            captions.len(),
            config.workers,
            config.mixed_precision_bf16,
            &trainable,
            |share| {
                let context = text
                    .model
                    .forward(&token_ids(setup, &captions[share.clone()], device)?)?
                    .last_hidden_state;
                let part = noised.narrow(share)?;
                let prediction = unet.forward(
                    &part.noisy,
                    &part.timesteps,
                    Some(&context),
                    &ExtraConditioning::default(),
                )?;
                objective.loss(&prediction, &part)
            },
        )?;
        if !value.is_finite() {
            return Err(Error::invalid(
                "denoiser.learning_rate",
                format!(
                    "the loss became {value} at step {}; lower the learning rate",
                    step + 1
                ),
            ));
        }
        let scale = clip_scale(grad_norm(&grads, &trainable)?, config.max_grad_norm);
        optimizer.step(&grads, lr, scale)?;
        if let Some(ema) = &mut ema {
            ema.update(&trainable)?;
        }
        losses.push(value);
        emit(
            events,
            TrainEvent::Step(StepReport {
                stage: Stage::Denoiser,
                step: offset + step + 1,
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
            .is_some_and(|every| (offset + step + 1).is_multiple_of(every))
        {
            let path = checkpoint::checkpoint_path(&setup.checkpoints, offset + step + 1);
            let mut tensors = snapshot(&trainable)?;
            if let Some(weights) = &vae.weights {
                tensors.extend(weights.iter().map(|(k, v)| (format!("vae.{k}"), v.clone())));
            }
            tensors.extend(
                optimizer
                    .state()
                    .into_iter()
                    .map(|(k, v)| (format!("optimizer.{k}"), v)),
            );
            if let Some(ema) = &ema {
                tensors.extend(
                    ema.weights()
                        .iter()
                        .map(|(k, v)| (format!("ema.{k}"), v.clone())),
                );
            }
            let state = checkpoint::new_state(
                offset + step + 1,
                setup.seed,
                &setup.architecture,
                Some(vae.scaling_factor),
                optimizer.steps(),
                ema.as_ref().map_or(0, Ema::updates),
            );
            checkpoint::save(&path, &state, &tensors)?;
            emit(events, TrainEvent::Checkpoint(path))?;
        }
    }

    let finals: Vec<(String, Tensor)> = match &ema {
        Some(ema) => ema.weights().to_vec(),
        None => snapshot(&trainable)?,
    };
    let mut by_component: HashMap<&str, Vec<(String, Tensor)>> = HashMap::new();
    for (name, t) in finals {
        if let Some((component, rest)) = name.split_once('.') {
            let key = if component == "unet" {
                "unet"
            } else {
                "text_encoder"
            };
            by_component
                .entry(key)
                .or_default()
                .push((rest.to_string(), t));
        }
    }
    // A text encoder built here but not trained is exported as it was initialized.
    let text_encoder = match &text.vars {
        Some(_) if text.trained => Some(by_component.remove("text_encoder").unwrap_or_default()),
        Some(vars) => Some(snapshot(&sorted_vars(vars)?)?),
        None => None,
    };
    Ok(TrainedDenoiser {
        unet: by_component.remove("unet").unwrap_or_default(),
        text_encoder,
        losses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Refinement;
    use crate::objectives::Prediction;
    use crate::optimizer::LrShape;
    use crate::timestep_bias::TimestepBias;

    /// The refinement phase starts after the main steps, draws every timestep below its limit, and warms its
    /// own peak learning rate up from 0.
    #[test]
    fn refinement_phase_follows_the_main_steps() {
        let scheduler =
            SchedulerConfig::from_json_str(r#"{"_class_name": "DDPMScheduler"}"#).unwrap();
        let objective = DenoisingObjective {
            timesteps: TimestepSampler::new(&TimestepBias::default(), 1000).unwrap(),
            schedule: NoiseSchedule::from_config(&scheduler).unwrap(),
            prediction: Prediction::VPrediction,
            min_snr_gamma: None,
            noise_offset: 0.0,
        };
        let settings = DenoiserSettings {
            steps: 10,
            learning_rate: 1e-3,
            warmup_steps: 4,
            lr_shape: LrShape::Cosine,
            prediction: None,
            zero_terminal_snr: None,
            min_snr_gamma: None,
            noise_offset: 0.0,
            timestep_bias: TimestepBias::default(),
            refinement: Some(Refinement {
                steps: 6,
                learning_rate: 2e-4,
                max_timestep: 300,
                batch_size: Some(8),
            }),
            caption_dropout: 0.1,
            train_text_encoder: false,
            text_encoder_learning_rate: None,
        };
        let phases = phases_of(&settings, &objective, 32).unwrap();
        assert_eq!(phase_at(&phases, 9).0.batch_size, 32);
        assert_eq!(phase_at(&phases, 10).0.batch_size, 8);
        let mut rng = TorchCpuRng::new(1);
        let highest = |step: usize, rng: &mut TorchCpuRng| {
            let (phase, _) = phase_at(&phases, step);
            (0..2000)
                .map(|_| phase.objective.timesteps.sample(rng))
                .max()
                .unwrap_or(0)
        };
        assert!(highest(9, &mut rng) >= 990);
        assert!(highest(10, &mut rng) == 299);
        assert!(highest(15, &mut rng) == 299);
        let lr = |step| phase_at(&phases, step).1;
        assert!((lr(4) - 1e-3).abs() < 1e-15 && lr(9) < 1e-4);
        assert_eq!(lr(10), 0.0);
        assert!((lr(12) - 1e-4).abs() < 1e-15 && (lr(14) - 2e-4).abs() < 1e-15);
    }
}
