//! Models from the Hugging Face Hub: a repo id resolved to a snapshot folder in the standard HF cache
//! (shared with Python's `huggingface_hub`), downloading what a diffusers pipeline needs unless offline.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use super::weights::Variant;
use crate::{Error, Result};

/// The HF cache folder, as `huggingface_hub` finds it: `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`, `HF_HOME/hub`,
/// `XDG_CACHE_HOME/huggingface/hub`, then `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| var("XDG_CACHE_HOME").map(|x| x.join("huggingface").join("hub")))
        .unwrap_or_else(|| {
            var("HOME")
                .unwrap_or_else(|| PathBuf::from("."))
                .join(".cache")
                .join("huggingface")
                .join("hub")
        })
}

/// Whether `HF_HUB_OFFLINE` asks for no network access (`1`, `true`, `yes`, `on`).
pub fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// Whether `spec` reads as a Hub repo id (`org/name`, optionally `@revision`) rather than a path.
pub fn looks_like_repo_id(spec: &str) -> bool {
    let id = spec.split('@').next().unwrap_or(spec);
    let parts: Vec<&str> = id.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !p.starts_with('.')
        })
}

/// Resolves `spec` to a pipeline folder: an existing local folder as is, else a Hub repo id (`org/name` or
/// `org/name@revision`) to its snapshot in the HF cache, downloaded first unless `HF_HUB_OFFLINE` is set.
pub fn resolve_model(spec: &str, variant: Variant) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if !looks_like_repo_id(spec) {
        return Err(Error::Io {
            path: path.to_path_buf(),
            cause: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such folder, and not a Hub repo id (org/name)",
            ),
        });
    }
    let (id, revision) = match spec.split_once('@') {
        Some((id, rev)) => (id, rev),
        None => (spec, "main"),
    };
    let repo = Repo::with_revision(id.to_string(), RepoType::Model, revision.to_string());
    let cache = Cache::new(hub_cache_dir());
    if let Some(index) = cache.repo(repo.clone()).get("model_index.json") {
        if hub_offline() || snapshot_complete(&index) {
            return snapshot_of(&index);
        }
    }
    if hub_offline() {
        return Err(Error::invalid(
            "model",
            format!(
                "{spec} is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set",
                hub_cache_dir().display()
            ),
        ));
    }
    download(spec, repo, variant)
}

fn snapshot_of(model_index: &Path) -> Result<PathBuf> {
    model_index
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::invalid("model", "cache snapshot without a folder"))
}

/// A cached snapshot counts as complete when every component folder named in its index exists.
fn snapshot_complete(model_index: &Path) -> bool {
    let Ok(index) = super::model_index::ModelIndex::read(model_index) else {
        return false;
    };
    let Some(root) = model_index.parent() else {
        return false;
    };
    index
        .components
        .keys()
        .filter(|c| {
            !matches!(
                c.as_str(),
                "safety_checker" | "feature_extractor" | "image_encoder"
            )
        })
        .all(|c| root.join(c).is_dir())
}

/// Which files of a diffusers repo a pipeline needs: configs, tokenizers and the safetensors weights of the
/// wanted variant (never pickles, ONNX or Flax files, nor the safety checker).
pub fn wanted_files(files: &[String], variant: Variant) -> Vec<String> {
    let skip_component = |f: &str| {
        ["safety_checker/", "feature_extractor/", "image_encoder/"]
            .iter()
            .any(|p| f.starts_with(p))
    };
    let is_fp16 = |f: &str| f.contains(".fp16.");
    let mut wanted: Vec<String> = files
        .iter()
        .filter(|f| !skip_component(f))
        .filter(|f| {
            f.as_str() == "model_index.json"
                || f.ends_with("/config.json")
                || f.ends_with("scheduler_config.json")
                || (f.starts_with("tokenizer") && (f.ends_with(".json") || f.ends_with(".txt")))
        })
        .cloned()
        .collect();
    // Weights: per component folder, the wanted variant if present, else the other.
    let mut folders: Vec<&str> = files
        .iter()
        .filter(|f| f.ends_with(".safetensors") || f.ends_with(".safetensors.index.json"))
        .filter(|f| !skip_component(f))
        .filter_map(|f| f.split_once('/').map(|(dir, _)| dir))
        .collect();
    folders.sort();
    folders.dedup();
    for dir in folders {
        let in_dir: Vec<&String> = files
            .iter()
            .filter(|f| {
                f.split_once('/')
                    .is_some_and(|(d, rest)| d == dir && !rest.contains('/'))
            })
            .filter(|f| f.ends_with(".safetensors") || f.ends_with(".safetensors.index.json"))
            .collect();
        let prefer_fp16 = variant == Variant::Fp16;
        let preferred: Vec<&String> = in_dir
            .iter()
            .copied()
            .filter(|f| is_fp16(f) == prefer_fp16)
            .collect();
        let chosen = if preferred.is_empty() {
            in_dir
        } else {
            preferred
        };
        wanted.extend(chosen.into_iter().cloned());
    }
    wanted
}

fn download(spec: &str, repo: Repo, variant: Variant) -> Result<PathBuf> {
    let hub_error =
        |e: hf_hub::api::sync::ApiError| Error::invalid("model", format!("{spec}: {e}"));
    let api = ApiBuilder::from_env()
        .with_cache_dir(hub_cache_dir())
        .with_progress(true)
        .build()
        .map_err(hub_error)?;
    let repo = api.repo(repo);
    let info = repo.info().map_err(hub_error)?;
    let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    if !files.iter().any(|f| f == "model_index.json") {
        return Err(Error::invalid(
            "model",
            format!("{spec} has no model_index.json: not a diffusers pipeline repo"),
        ));
    }
    let mut index = None;
    for file in wanted_files(&files, variant) {
        let local = repo.get(&file).map_err(hub_error)?;
        if file == "model_index.json" {
            index = Some(local);
        }
    }
    let index = index
        .ok_or_else(|| Error::invalid("model", format!("{spec}: model_index.json missing")))?;
    snapshot_of(&index)
}
