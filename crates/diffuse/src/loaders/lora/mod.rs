//! LoRA files as model sites publish them, parsed into the modules they change and the tensors of each change
//! (the math is `models::lora_delta`'s): kohya/A1111 (`lora_unet_*`, `lora_te_*`, `lora_te1_*`/`lora_te2_*`, with `.alpha`; LoCon's
//! convolution layers; module names in diffusers' or SGM's spelling), LyCORIS LoHa and LoKr, and
//! diffusers/PEFT (`unet.*`/`text_encoder.*` with `lora_A`/`lora_B`, alpha from diffusers' adapter metadata,
//! from `.alpha` tensors, or none). Only `.safetensors` files are read; pickles are refused.

pub(crate) mod keys;
pub(crate) mod targets;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

pub(crate) use keys::{Component, Module};

use crate::loaders::named_files::map_adapter;
use crate::{Error, Result};

/// How a LoRA file names its modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraFormat {
    /// kohya-ss / AUTOMATIC1111 / LyCORIS: `lora_unet_…`, `lora_te_…` with `lora_down`/`lora_up` (or LoHa's
    /// `hada_*`, LoKr's `lokr_*`) and `.alpha`.
    Kohya,
    /// diffusers / PEFT: `unet.…`/`text_encoder.…` with `lora_A`/`lora_B` (or the older `lora.down`/`lora.up`).
    Diffusers,
}

/// A LoRA file, memory-mapped and parsed into modules; the weights stay in the file until applied.
pub struct LoraFile {
    path: PathBuf,
    tensors: MmapedSafetensors,
    format: LoraFormat,
    modules: Vec<Module>,
    metadata: BTreeMap<String, String>,
}

impl LoraFile {
    /// Opens and parses `path`, refusing pickles (`.pt`, `.ckpt`, `.bin`) and files whose keys are not LoRA
    /// keys of a known format (naming the first such key).
    pub fn open(path: &Path) -> Result<Self> {
        let tensors = map_adapter(path, "LoRA")?;
        let weights_error = |tensor: &str, message: String| Error::Weights {
            file: path.display().to_string(),
            tensor: tensor.to_string(),
            message,
        };
        let metadata = read_metadata(path)?;
        let shapes: BTreeMap<String, Vec<usize>> = tensors
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.shape().to_vec()))
            .collect();
        let scalar = |name: &str| -> std::result::Result<f64, keys::KeyError> {
            let t = tensors
                .load(name, &Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F64))
                .and_then(|t| t.flatten_all())
                .map_err(|e| keys::KeyError::new(name, format!("cannot be read: {e}")))?;
            match t.to_vec1::<f64>().ok().as_deref() {
                Some([value]) if value.is_finite() => Ok(*value),
                _ => Err(keys::KeyError::new(
                    name,
                    format!("expected one finite number, found shape {:?}", t.dims()),
                )),
            }
        };
        let (format, modules) = keys::parse(&shapes, &metadata, &scalar)
            .map_err(|keys::KeyError { tensor, message }| weights_error(&tensor, message))?;
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            format,
            modules,
            metadata,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How the file names its modules.
    pub fn format(&self) -> LoraFormat {
        self.format
    }

    /// How many layers the LoRA changes.
    pub fn module_count(&self) -> usize {
        self.modules.len()
    }

    /// The file's `__metadata__` (kohya's `ss_*` training notes, diffusers' adapter metadata).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    pub(crate) fn modules(&self) -> &[Module] {
        &self.modules
    }

    /// Stored tensor `name` in f32 on `device`.
    pub(crate) fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        self.tensors
            .load(name, device)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| Error::Weights {
                file: self.path.display().to_string(),
                tensor: name.to_string(),
                message: format!("cannot be read: {e}"),
            })
    }
}

/// The safetensors header's `__metadata__` strings.
fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let io = |cause| Error::Io {
        path: path.to_path_buf(),
        cause,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: mapped read-only and only read here.
    let mapped = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&mapped).map_err(|e| Error::Weights {
            file: path.display().to_string(),
            tensor: "(header)".into(),
            message: format!("not a readable safetensors file: {e}"),
        })?;
    Ok(header
        .metadata()
        .clone()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default())
}
