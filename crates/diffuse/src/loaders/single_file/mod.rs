//! Single-file checkpoints: one `.safetensors` file in the CompVis/AUTOMATIC1111 ("LDM") layout, holding the
//! UNet (`model.diffusion_model.`), the VAE (`first_stage_model.`) and the text encoder(s)
//! (`cond_stage_model.transformer.` for SD 1.x, `cond_stage_model.model.` for SD 2.x,
//! `conditioner.embedders.0.transformer.` and `conditioner.embedders.1.model.` for SDXL).
//!
//! The file is memory-mapped once; each component sees it through a key map from diffusers' names to the
//! stored names (with the reshapes, row slices and transposes the layouts differ by), built from the header
//! alone, so a tensor is read and converted only when a model asks for it. What diffusers'
//! `from_single_file` loads is what these maps load: the renames follow `convert_ldm_unet_checkpoint`,
//! `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint` and `convert_open_clip_checkpoint`.
//! Pickled checkpoints (`.ckpt`, `.pt`, `.bin`, ...) are refused: unpickling can run arbitrary code.

pub mod builtin;
pub mod clip_keys;
pub mod detect;
pub mod unet_keys;
pub mod vae_keys;

use std::fmt;
use std::path::{Path, PathBuf};

use super::weights::{KeyMap, WeightFiles};
use crate::models::clip::config::ClipTextConfig;
use crate::models::unet::UNet2DConditionConfig;
use crate::models::vae::AutoencoderKLConfig;
use crate::{Error, Result};
pub use detect::{CheckpointKind, Header};

/// File extensions of pickled checkpoints, which are never opened.
const PICKLE_EXTENSIONS: [&str; 5] = ["ckpt", "pt", "pth", "bin", "pkl"];

/// Whether `path` names a pickled checkpoint by its extension.
pub fn is_pickle_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| PICKLE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The refusal for a pickled checkpoint at `path`.
pub fn pickle_refusal(path: &Path) -> Error {
    Error::Pickle {
        path: path.to_path_buf(),
    }
}

/// An opened single-file checkpoint: its header, its memory map and the model it holds.
pub struct SingleFile {
    path: PathBuf,
    files: WeightFiles,
    header: Header,
    kind: CheckpointKind,
}

impl fmt::Debug for SingleFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SingleFile")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .field("tensors", &self.header.len())
            .finish()
    }
}

impl SingleFile {
    /// Memory-maps `path`, reads its header and detects the model; refuses pickles and files that hold no
    /// Stable Diffusion checkpoint, naming what they hold instead.
    pub fn open(path: &Path) -> Result<Self> {
        if is_pickle_path(path) {
            return Err(pickle_refusal(path));
        }
        let files = WeightFiles::open(&[path.to_path_buf()]).map_err(|e| match e {
            Error::Weights { .. } if starts_like_pickle(path) => pickle_refusal(path),
            other => other,
        })?;
        let header: Header = files
            .stored()
            .into_iter()
            .map(|(name, shape, _)| (name, shape))
            .collect();
        let kind = detect::detect(&header, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            files,
            header,
            kind,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model it holds.
    pub fn kind(&self) -> CheckpointKind {
        self.kind
    }

    /// Every stored tensor's name and shape.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The UNet's weights, as the diffusers UNet of `config` names them.
    pub fn unet(&self, config: &UNet2DConditionConfig) -> Result<WeightFiles> {
        self.component("unet", unet_keys::unet_keys(&self.header, config))
    }

    /// The VAE's weights, as the diffusers VAE of `config` names them.
    pub fn vae(&self, config: &AutoencoderKLConfig) -> Result<WeightFiles> {
        self.component("vae", vae_keys::vae_keys(&self.header, config))
    }

    /// The weights of text encoder `name` (`text_encoder`, `text_encoder_2`) of `config`, from the stored
    /// encoder diffusers picks for an encoder of that width.
    pub fn text_encoder(&self, name: &str, config: &ClipTextConfig) -> Result<WeightFiles> {
        self.component(name, clip_keys::text_encoder_keys(&self.header, config))
    }

    fn component(
        &self,
        name: &str,
        keys: std::result::Result<KeyMap, String>,
    ) -> Result<WeightFiles> {
        let keys = keys.map_err(|message| Error::Weights {
            file: self.path.display().to_string(),
            tensor: format!("({name})"),
            message,
        })?;
        Ok(self.files.mapped(keys))
    }
}

/// Whether the file starts as a zip archive (torch's checkpoint format) or a raw pickle.
fn starts_like_pickle(path: &Path) -> bool {
    use std::io::Read;
    let mut start = [0u8; 2];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut start))
        .is_ok_and(|_| start == *b"PK" || start[0] == 0x80)
}
