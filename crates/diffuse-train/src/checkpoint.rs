//! Training checkpoints: one safetensors file holding every trained and frozen weight, the optimizer's
//! moments and the EMA weights, with the training state as JSON in the file's metadata.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::architecture::Architecture;
use diffuse::{Error, Result};

/// The metadata key holding [`CheckpointState`].
const STATE_KEY: &str = "diffuse_training_state";
/// The layout version written by this code.
const FORMAT: u32 = 1;

/// Where training stands, stored with the tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Layout version (1).
    pub format: u32,
    /// Training steps done, over all stages.
    pub step: usize,
    /// The seed the run was started with.
    pub seed: u64,
    /// `unet/config.json`.
    pub unet: Value,
    /// `vae/config.json`.
    pub vae: Value,
    /// `text_encoder/config.json`.
    pub text_encoder: Value,
    /// The VAE's latent scaling factor, once known (after the VAE stage, or from the pretrained folder).
    pub scaling_factor: Option<f64>,
    /// Updates the denoiser's optimizer has made (its bias corrections depend on it).
    pub optimizer_steps: usize,
    /// Updates the EMA has made.
    pub ema_updates: usize,
}

impl CheckpointState {
    /// The architecture the checkpoint was trained with.
    pub fn architecture(&self) -> Architecture {
        Architecture {
            unet: self.unet.clone(),
            vae: self.vae.clone(),
            text_encoder: self.text_encoder.clone(),
        }
    }
}

/// A loaded checkpoint.
pub struct Checkpoint {
    /// The file it came from.
    pub path: PathBuf,
    /// The training state.
    pub state: CheckpointState,
    /// Every stored tensor by name (`vae.*`, `unet.*`, `text_encoder.*`, `optimizer.*`, `ema.*`).
    pub tensors: HashMap<String, Tensor>,
}

/// The checkpoint file for `step` in `folder`: `step-000500.safetensors`.
pub fn checkpoint_path(folder: &Path, step: usize) -> PathBuf {
    folder.join(format!("step-{step:06}.safetensors"))
}

/// The newest checkpoint (highest step) in `folder`, if any.
pub fn latest_checkpoint(folder: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(folder).ok()?;
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let step = name
                .strip_prefix("step-")?
                .strip_suffix(".safetensors")?
                .parse::<usize>()
                .ok()?;
            Some((step, p))
        })
        .max_by_key(|(step, _)| *step)
        .map(|(_, p)| p)
}

/// Writes `tensors` and `state` to `path` (through a temporary file, so a crash never leaves half a file).
pub fn save(path: &Path, state: &CheckpointState, tensors: &[(String, Tensor)]) -> Result<()> {
    let json = serde_json::to_string(state).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let metadata = HashMap::from([(STATE_KEY.to_string(), json)]);
    let tmp = path.with_extension("safetensors.tmp");
    let contiguous = tensors
        .iter()
        .map(|(name, t)| Ok((name.clone(), t.contiguous()?)))
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(contiguous, Some(metadata), &tmp).map_err(|e| Error::Io {
        path: tmp.clone(),
        cause: std::io::Error::other(e.to_string()),
    })?;
    std::fs::rename(&tmp, path).map_err(|cause| Error::Io {
        path: path.to_path_buf(),
        cause,
    })
}

/// Reads a checkpoint written by [`save`].
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|cause| Error::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    let not_checkpoint = |why: String| Error::Weights {
        file: path.display().to_string(),
        tensor: "(header)".into(),
        message: format!("not a diffuse training checkpoint: {why}"),
    };
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| not_checkpoint(e.to_string()))?;
    let json = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .ok_or_else(|| not_checkpoint(format!("no `{STATE_KEY}` metadata")))?;
    let state: CheckpointState = serde_json::from_str(json).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: format!("metadata `{STATE_KEY}`: {e}"),
    })?;
    if state.format != FORMAT {
        return Err(not_checkpoint(format!(
            "layout version {} (this build reads {FORMAT})",
            state.format
        )));
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| not_checkpoint(e.to_string()))?;
    Ok(Checkpoint {
        path: path.to_path_buf(),
        state,
        tensors,
    })
}

/// The tensors of `checkpoint` whose names start with `prefix.`, with the prefix removed.
pub fn with_prefix(tensors: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    let p = format!("{prefix}.");
    tensors
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(&p).map(|rest| (rest.to_string(), v.clone())))
        .collect()
}

/// The checkpoint's state as the first format-version this code writes.
pub fn new_state(
    step: usize,
    seed: u64,
    architecture: &Architecture,
    scaling_factor: Option<f64>,
    optimizer_steps: usize,
    ema_updates: usize,
) -> CheckpointState {
    CheckpointState {
        format: FORMAT,
        step,
        seed,
        unet: architecture.unet.clone(),
        vae: architecture.vae.clone(),
        text_encoder: architecture.text_encoder.clone(),
        scaling_factor,
        optimizer_steps,
        ema_updates,
    }
}
