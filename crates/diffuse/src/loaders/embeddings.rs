//! Textual-inversion embeddings as model sites and diffusers publish them: AUTOMATIC1111's `.safetensors`
//! (`emb_params`, or `string_to_param.*`), diffusers' `learned_embeds.safetensors` (`{token: vector}`), and SDXL's
//! `clip_l`/`clip_g` pairs; one vector or several. Only `.safetensors` files are read; pickles are refused.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::loaders::named_files::map_adapter;
use crate::{Error, Result};

/// An embedding's vectors for each text encoder it has them for.
#[derive(Debug, Clone)]
pub struct Embedding {
    /// The word that stands for it in prompts.
    pub trigger: String,
    /// The file it came from.
    pub path: PathBuf,
    /// `[vectors, width]` for SD's text encoder, or SDXL's first (`clip_l`).
    pub first: Option<Tensor>,
    /// `[vectors, width]` for SDXL's second text encoder (`clip_g`).
    pub second: Option<Tensor>,
}

impl Embedding {
    /// Reads `path`; the trigger word is `token`, else diffusers' stored token, else the file's stem (as
    /// A1111 names embeddings).
    pub fn open(path: &Path, token: Option<&str>) -> Result<Self> {
        let tensors = map_adapter(path, "embedding")?;
        let bad = |tensor: &str, message: String| Error::Weights {
            file: path.display().to_string(),
            tensor: tensor.to_string(),
            message,
        };
        let names: Vec<String> = tensors.tensors().into_iter().map(|(n, _)| n).collect();
        let load = |name: &str| -> Result<Tensor> {
            let t = tensors
                .load(name, &Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| bad(name, format!("cannot be read: {e}")))?;
            let t = match t.rank() {
                1 => t.unsqueeze(0)?,
                2 => t,
                _ => {
                    return Err(bad(
                        name,
                        format!("expected [vectors, width], found shape {:?}", t.dims()),
                    ))
                }
            };
            if t.dim(0)? == 0 {
                return Err(bad(name, "holds no vectors".into()));
            }
            Ok(t)
        };
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let has = |n: &str| names.iter().any(|k| k == n);
        let (stored_token, first, second) = if has("clip_l") || has("clip_g") {
            (
                None,
                has("clip_l").then(|| load("clip_l")).transpose()?,
                has("clip_g").then(|| load("clip_g")).transpose()?,
            )
        } else if has("emb_params") {
            (None, Some(load("emb_params")?), None)
        } else if let Some(key) = names.iter().find(|k| k.starts_with("string_to_param.")) {
            (None, Some(load(key)?), None)
        } else if let [token] = names.as_slice() {
            // diffusers' learned_embeds: one tensor, named by its token.
            (Some(token.clone()), Some(load(token)?), None)
        } else {
            return Err(bad(
                names.first().map_or("(none)", String::as_str),
                format!(
                    "not a textual-inversion embedding: expected `emb_params`, `string_to_param.*`, \
                     `clip_l`/`clip_g`, or one tensor named by its token; found {} tensors",
                    names.len()
                ),
            ));
        };
        let trigger = token
            .map(str::to_string)
            .or(stored_token)
            .unwrap_or(stem)
            .trim()
            .to_string();
        if trigger.is_empty() {
            return Err(bad("(trigger)", "the trigger word is empty".into()));
        }
        Ok(Self {
            trigger,
            path: path.to_path_buf(),
            first,
            second,
        })
    }

    /// How many token positions it takes.
    pub fn vectors(&self) -> usize {
        self.first
            .as_ref()
            .or(self.second.as_ref())
            .and_then(|t| t.dims().first().copied())
            .unwrap_or(0)
    }
}
