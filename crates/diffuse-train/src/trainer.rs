//! A training run from start to export: set up the networks, train the VAE (from scratch only), then the
//! denoiser (with the text encoder when asked), checkpointing on the way, and write the pipeline folder.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde_json::Value;

use super::architecture::Architecture;
use super::checkpoint::{self, Checkpoint};
use super::config::{ModelSource, TrainConfig};
use super::denoiser_stage::{self, TrainedDenoiser};
use super::export::{self, Component, PipelineExport};
use super::init::sorted_vars;
use super::objectives::Prediction;
use super::shapes::splitmix64;
use super::vae_stage;
use diffuse::loaders::json::read_json;
use diffuse::loaders::PipelineFolder;
use diffuse::models::clip::tokenizer::ClipTokenizer;
use diffuse::{Error, Result};

/// The two stages of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The VAE (reconstruction + KL).
    Vae,
    /// The UNet (and the text encoder when trained), on noise prediction.
    Denoiser,
}

impl Stage {
    /// A short name for progress output.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Vae => "vae",
            Stage::Denoiser => "unet",
        }
    }
}

/// One optimizer step done.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// The stage.
    pub stage: Stage,
    /// Steps done over the whole run (1-based).
    pub step: usize,
    /// Steps in the whole run.
    pub total: usize,
    /// Steps done in this stage (1-based).
    pub stage_step: usize,
    /// Steps in this stage.
    pub stage_total: usize,
    /// The step's loss.
    pub loss: f32,
    /// The learning rate used.
    pub learning_rate: f64,
    /// Steps per second since the stage (or the resumed part of it) started.
    pub steps_per_second: f64,
}

/// What a run reports as it goes.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// A phase started or finished (set-up, encoding the data, exporting).
    Message(String),
    /// An optimizer step finished.
    Step(StepReport),
    /// A checkpoint was written.
    Checkpoint(PathBuf),
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The pipeline folder written.
    pub output: PathBuf,
    /// The VAE loss of every VAE step this run made.
    pub vae_losses: Vec<f32>,
    /// The denoising loss of every denoiser step this run made.
    pub denoiser_losses: Vec<f32>,
    /// The VAE's latent scaling factor.
    pub scaling_factor: f64,
}

/// The receiver of [`TrainEvent`]s; returning `Break` stops the run with [`Error::Cancelled`].
pub type Events<'a> = &'a mut dyn FnMut(&TrainEvent) -> ControlFlow<()>;

/// Sends `event`, turning a `Break` into [`Error::Cancelled`].
pub(crate) fn emit(events: &mut Events, event: TrainEvent) -> Result<()> {
    match events(&event) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(Error::Cancelled),
    }
}

/// Everything fixed before training starts.
pub(crate) struct Setup {
    pub architecture: Architecture,
    pub tokenizer: ClipTokenizer,
    pub tokenizer_dir: PathBuf,
    pub scheduler: Value,
    pub prediction: Prediction,
    pub pretrained: Option<PipelineFolder>,
    pub seed: u64,
    pub checkpoints: PathBuf,
}

/// A tokenizer folder given directly or as a pipeline folder holding `tokenizer/`.
fn tokenizer_folder(path: &Path) -> PathBuf {
    let inner = path.join("tokenizer");
    if path.join("model_index.json").is_file() && inner.is_dir() {
        inner
    } else {
        path.to_path_buf()
    }
}

impl Setup {
    fn new(config: &TrainConfig) -> Result<Self> {
        let resolution = config.data.resolution();
        let checkpoints = config.output.join("checkpoints");
        match &config.source {
            ModelSource::Scratch { tokenizer } => {
                let tokenizer_dir = tokenizer_folder(tokenizer);
                let tokenizer = ClipTokenizer::from_folder(&tokenizer_dir)?;
                let prediction = config.denoiser.prediction.unwrap_or(Prediction::Epsilon);
                let mut scheduler = export::dpm_solver_config(prediction.as_str());
                set_zero_terminal_snr(
                    &mut scheduler,
                    config.denoiser.zero_terminal_snr,
                    prediction,
                )?;
                Ok(Self {
                    architecture: Architecture::tiny(resolution, &tokenizer)?,
                    tokenizer,
                    tokenizer_dir,
                    scheduler,
                    prediction,
                    pretrained: None,
                    seed: config.seed,
                    checkpoints,
                })
            }
            ModelSource::Pretrained { folder } => {
                let pipeline = PipelineFolder::open(folder)?;
                let component = |name: &str, file: &str| -> Result<Value> {
                    read_json(&pipeline.component_dir(name)?.join(file))
                };
                let architecture = Architecture {
                    unet: component("unet", "config.json")?,
                    vae: component("vae", "config.json")?,
                    text_encoder: component("text_encoder", "config.json")?,
                };
                let factor = architecture.vae_config()?.scale_factor();
                if !resolution.is_multiple_of(factor) {
                    return Err(Error::invalid(
                        "resolution",
                        format!("{resolution}: must be a multiple of the VAE's factor {factor}"),
                    ));
                }
                let mut scheduler = component("scheduler", "scheduler_config.json")?;
                let stored = scheduler
                    .get("prediction_type")
                    .and_then(Value::as_str)
                    .unwrap_or("epsilon")
                    .to_string();
                let prediction = match config.denoiser.prediction {
                    Some(p) => p,
                    None => Prediction::parse(&stored, "scheduler_config.json prediction_type")?,
                };
                if let Some(obj) = scheduler.as_object_mut() {
                    obj.insert("prediction_type".into(), prediction.as_str().into());
                }
                set_zero_terminal_snr(
                    &mut scheduler,
                    config.denoiser.zero_terminal_snr,
                    prediction,
                )?;
                let tokenizer_dir = pipeline.component_dir("tokenizer")?;
                Ok(Self {
                    architecture,
                    tokenizer: pipeline.load_tokenizer("tokenizer")?,
                    tokenizer_dir,
                    scheduler,
                    prediction,
                    pretrained: Some(pipeline),
                    seed: config.seed,
                    checkpoints,
                })
            }
        }
    }
}

/// Turns zero-terminal-SNR training on or off in `scheduler` (`None` keeps its setting): the rescaled betas
/// (`rescale_betas_zero_snr`) and trailing timesteps, so that sampling starts from the pure-noise timestep
/// the model was trained on. Rejects it with ε-prediction, which carries no information at zero SNR.
fn set_zero_terminal_snr(
    scheduler: &mut Value,
    zero_snr: Option<bool>,
    prediction: Prediction,
) -> Result<()> {
    let Some(obj) = scheduler.as_object_mut() else {
        return Err(Error::invalid(
            "scheduler_config.json",
            "expected a JSON object",
        ));
    };
    if let Some(on) = zero_snr {
        obj.insert("rescale_betas_zero_snr".into(), on.into());
        if on {
            obj.insert("timestep_spacing".into(), "trailing".into());
        }
    }
    let on = obj
        .get("rescale_betas_zero_snr")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if on && prediction == Prediction::Epsilon {
        return Err(Error::invalid(
            "denoiser.zero_terminal_snr",
            "needs `denoiser.prediction` v_prediction: at zero SNR the model's input is the noise itself",
        ));
    }
    Ok(())
}

/// The seed of everything random in step `step` (batches, noise), so that a resumed run draws what an
/// uninterrupted one would have.
pub(crate) fn step_seed(seed: u64, step: usize) -> u64 {
    splitmix64(seed ^ splitmix64(step as u64 + 1))
}

/// `vars` renamed `prefix.<name>`.
pub(crate) fn prefixed(vars: Vec<(String, Var)>, prefix: &str) -> Vec<(String, Var)> {
    vars.into_iter()
        .map(|(name, var)| (format!("{prefix}.{name}"), var))
        .collect()
}

/// Sets every variable of `vars` from `tensors` (same names); `source` names the file in errors.
pub(crate) fn set_vars(
    vars: &VarMap,
    tensors: &HashMap<String, Tensor>,
    source: &str,
) -> Result<()> {
    for (name, var) in sorted_vars(vars)? {
        let t = tensors.get(&name).ok_or_else(|| Error::Weights {
            file: source.into(),
            tensor: name.clone(),
            message: "missing (the checkpoint is for another architecture)".into(),
        })?;
        if t.dims() != var.dims() {
            return Err(Error::Weights {
                file: source.into(),
                tensor: name,
                message: format!(
                    "shape {:?}, but this architecture has {:?}",
                    t.dims(),
                    var.dims()
                ),
            });
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(())
}

/// A copy of the current values of `vars`, detached from any graph.
pub(crate) fn snapshot(vars: &[(String, Var)]) -> Result<Vec<(String, Tensor)>> {
    vars.iter()
        .map(|(name, var)| Ok((name.clone(), var.as_tensor().copy()?.detach())))
        .collect()
}

/// A non-trainable [`VarBuilder`] over `weights`.
pub(crate) fn frozen_builder(weights: &[(String, Tensor)], device: &Device) -> VarBuilder<'static> {
    let map: HashMap<String, Tensor> = weights.iter().cloned().collect();
    VarBuilder::from_tensors(map, DType::F32, device)
}

/// Loads the checkpoint to resume from and checks that it was made for this architecture.
fn load_resume(config: &TrainConfig, setup: &Setup) -> Result<Option<Checkpoint>> {
    let Some(path) = &config.resume else {
        return Ok(None);
    };
    let path = if path.as_os_str() == "latest" {
        checkpoint::latest_checkpoint(&setup.checkpoints).ok_or_else(|| Error::Io {
            path: setup.checkpoints.clone(),
            cause: std::io::Error::new(std::io::ErrorKind::NotFound, "no checkpoint to resume"),
        })?
    } else {
        path.clone()
    };
    let ckpt = checkpoint::load(&path, &config.device)?;
    if let Some(diff) = setup.architecture.difference(&ckpt.state.architecture()) {
        return Err(Error::invalid(
            "resume",
            format!(
                "{}: the checkpoint is for another architecture ({diff}: this run vs the checkpoint)",
                path.display()
            ),
        ));
    }
    if ckpt.state.step > config.total_steps() {
        return Err(Error::invalid(
            "resume",
            format!(
                "{}: the checkpoint is at step {}, past this run's {} steps",
                path.display(),
                ckpt.state.step,
                config.total_steps()
            ),
        ));
    }
    Ok(Some(ckpt))
}

/// Runs `config` to the end and writes the pipeline folder, reporting progress to `events`.
pub fn train(config: &TrainConfig, events: Events) -> Result<TrainReport> {
    let mut events = events;
    config.validate()?;
    export::ensure_writable(&config.output)?;
    let mut setup = Setup::new(config)?;
    denoiser_stage::phases(config, &setup)?;
    let resume = load_resume(config, &setup)?;
    if let Some(ckpt) = &resume {
        setup.seed = ckpt.state.seed;
        emit(
            &mut events,
            TrainEvent::Message(format!(
                "resuming from {} at step {} (seed {})",
                ckpt.path.display(),
                ckpt.state.step,
                ckpt.state.seed
            )),
        )?;
    }
    emit(
        &mut events,
        TrainEvent::Message(format!("data: {}", config.data.describe())),
    )?;
    if config.checkpoint_every.is_some() {
        export::ensure_writable(&setup.checkpoints)?;
    }

    let vae = vae_stage::run(config, &mut setup, resume.as_ref(), &mut events)?;
    let denoiser = denoiser_stage::run(config, &setup, &vae, resume.as_ref(), &mut events)?;

    emit(
        &mut events,
        TrainEvent::Message(format!("writing {}", config.output.display())),
    )?;
    write_output(config, &setup, &vae, denoiser.clone())?;
    Ok(TrainReport {
        output: config.output.clone(),
        vae_losses: vae.losses.clone(),
        denoiser_losses: denoiser.losses,
        scaling_factor: vae.scaling_factor,
    })
}

fn write_output(
    config: &TrainConfig,
    setup: &Setup,
    vae: &vae_stage::TrainedVae,
    denoiser: TrainedDenoiser,
) -> Result<()> {
    let copied = |name: &str| -> Result<Component> {
        match &setup.pretrained {
            Some(folder) => Ok(Component::Copied(folder.component_dir(name)?)),
            None => Err(Error::invalid(
                name,
                "no trained weights and no pretrained folder to copy from",
            )),
        }
    };
    let vae_component = match &vae.weights {
        Some(weights) => {
            let mut config_json = setup.architecture.vae.clone();
            if let Some(obj) = config_json.as_object_mut() {
                obj.insert("scaling_factor".into(), vae.scaling_factor.into());
            }
            Component::Trained {
                config: config_json,
                weights: weights.clone(),
            }
        }
        None => copied("vae")?,
    };
    let text_encoder = match denoiser.text_encoder {
        Some(weights) => Component::Trained {
            config: setup.architecture.text_encoder.clone(),
            weights: export::text_model_names(weights),
        },
        None => copied("text_encoder")?,
    };
    let export = PipelineExport {
        unet: Component::Trained {
            config: setup.architecture.unet.clone(),
            weights: denoiser.unet,
        },
        vae: vae_component,
        text_encoder,
        tokenizer: setup.tokenizer_dir.clone(),
        scheduler: setup.scheduler.clone(),
        dtype: config.save_dtype,
    };
    export::write_pipeline(&config.output, &export)
}
