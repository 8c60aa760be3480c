//! Models from the Hugging Face Hub: a repo id resolved to a snapshot folder in the standard HF cache
//! (shared with Python's `huggingface_hub`), downloading what a diffusers pipeline needs unless offline; and
//! the `--config` of single-file checkpoints, resolved to a folder or to built-in configurations.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use super::folder::ConfigSource;
use super::single_file::builtin;
use super::single_file::{is_pickle_path, pickle_refusal};
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

/// diffuse's own cache folder (model hashes, the bundled model written out): `XDG_CACHE_HOME/diffuse`, else
/// `diffuse` beside the HF cache's parent (`~/.cache/diffuse`), else in the temporary folder.
pub fn diffuse_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            hub_cache_dir()
                .parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(std::env::temp_dir)
        .join("diffuse")
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

/// Resolves `spec` to a model path: an existing local folder or `.safetensors` single-file checkpoint as is,
/// else a Hub repo id (`org/name` or `org/name@revision`) to its snapshot in the HF cache, downloaded first
/// unless `HF_HUB_OFFLINE` is set. Pickled checkpoints (`.ckpt`, ...) are refused.
pub fn resolve_model(spec: &str, variant: Variant) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if is_pickle_path(path) {
        return Err(pickle_refusal(path));
    }
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    resolve_repo(spec, variant, Wanted::Pipeline)
}

/// Resolves the `--config` of a single-file checkpoint, as diffusers' `config=`: an existing local diffusers
/// folder; a Hub id whose configurations are built in (no network); or another Hub repo id, whose
/// configuration and tokenizer files (no weights) come from the HF cache, downloaded first unless
/// `HF_HUB_OFFLINE` is set.
pub fn resolve_config(spec: &str) -> Result<ConfigSource> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(ConfigSource::Folder(path.to_path_buf()));
    }
    let id = spec.split('@').next().unwrap_or(spec);
    if let Some(config) = builtin::named(id).filter(|_| !spec.contains('@')) {
        return Ok(ConfigSource::Builtin(config));
    }
    resolve_repo(spec, Variant::Default, Wanted::Configs).map(ConfigSource::Folder)
}

/// The files of a one-model diffusers repo (e.g. madebyollin/taesd): its config and weights.
const MODEL_FILES: [&str; 2] = ["config.json", "diffusion_pytorch_model.safetensors"];

/// Resolves `spec` to the folder of one diffusers model (`config.json` and `diffusion_pytorch_model.safetensors`,
/// as `ModelMixin.save_pretrained` writes it): an existing local folder as is, else a Hub repo id to its snapshot
/// in the HF cache, downloaded first unless `HF_HUB_OFFLINE` is set. `what` names the setting in errors.
pub fn resolve_model_folder(spec: &str, what: &str) -> Result<PathBuf> {
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
    let (id, revision) = spec.split_once('@').unwrap_or((spec, "main"));
    let repo = Repo::with_revision(id.to_string(), RepoType::Model, revision.to_string());
    let cached = Cache::new(hub_cache_dir()).repo(repo.clone());
    if let [Some(config), Some(_)] = MODEL_FILES.map(|f| cached.get(f)) {
        return snapshot_of(&config);
    }
    if hub_offline() {
        return Err(Error::invalid(
            what,
            format!(
                "{spec} is not in the Hugging Face cache at {} (it needs {}) and HF_HUB_OFFLINE is set",
                hub_cache_dir().display(),
                MODEL_FILES.join(" and ")
            ),
        ));
    }
    let hub_error = |e: hf_hub::api::sync::ApiError| Error::invalid(what, format!("{spec}: {e}"));
    let api = ApiBuilder::from_env()
        .with_cache_dir(hub_cache_dir())
        .with_progress(true)
        .build()
        .map_err(hub_error)?;
    let repo = api.repo(repo);
    let config = repo.get(MODEL_FILES[0]).map_err(hub_error)?;
    repo.get(MODEL_FILES[1]).map_err(hub_error)?;
    snapshot_of(&config)
}

/// What of a Hub repo to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    /// Configurations, tokenizers and weights.
    Pipeline,
    /// Configurations and tokenizers only.
    Configs,
}

fn resolve_repo(spec: &str, variant: Variant, wanted: Wanted) -> Result<PathBuf> {
    let path = Path::new(spec);
    if !looks_like_repo_id(spec) {
        return Err(Error::Io {
            path: path.to_path_buf(),
            cause: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such folder or file, and not a Hub repo id (org/name)",
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
        if hub_offline() || snapshot_complete(&index, wanted) {
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
    download(spec, repo, variant, wanted)
}

fn snapshot_of(model_index: &Path) -> Result<PathBuf> {
    model_index
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::invalid("model", "cache snapshot without a folder"))
}

/// A cached snapshot counts as complete when every component folder named in its index exists and, when
/// weights are wanted, every model component's folder holds safetensors weights (a snapshot fetched for its
/// configurations alone has none).
fn snapshot_complete(model_index: &Path, wanted: Wanted) -> bool {
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
        .all(|c| {
            let dir = root.join(c);
            let has_model = ["unet", "vae", "text_encoder"]
                .iter()
                .any(|m| c.starts_with(m));
            dir.is_dir() && (wanted == Wanted::Configs || !has_model || has_weights(&dir))
        })
}

fn has_weights(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(|e| e.ok()).any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json")
        })
    })
}

fn skip_component(file: &str) -> bool {
    ["safety_checker/", "feature_extractor/", "image_encoder/"]
        .iter()
        .any(|p| file.starts_with(p))
}

/// Which files of a diffusers repo configure a pipeline: `model_index.json`, the component configs, the
/// scheduler config and the tokenizers (what a single-file checkpoint's `--config` needs).
pub fn config_files(files: &[String]) -> Vec<String> {
    files
        .iter()
        .filter(|f| !skip_component(f))
        .filter(|f| {
            f.as_str() == "model_index.json"
                || f.ends_with("/config.json")
                || f.ends_with("scheduler_config.json")
                || (f.starts_with("tokenizer") && (f.ends_with(".json") || f.ends_with(".txt")))
        })
        .cloned()
        .collect()
}

/// Which files of a diffusers repo a pipeline needs: [`config_files`] and the safetensors weights of the
/// wanted variant (never pickles, ONNX or Flax files, nor the safety checker).
pub fn wanted_files(files: &[String], variant: Variant) -> Vec<String> {
    let is_fp16 = |f: &str| f.contains(".fp16.");
    let mut wanted = config_files(files);
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

fn download(spec: &str, repo: Repo, variant: Variant, wanted: Wanted) -> Result<PathBuf> {
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
    let fetched = match wanted {
        Wanted::Pipeline => wanted_files(&files, variant),
        Wanted::Configs => config_files(&files),
    };
    for file in fetched {
        let local = repo.get(&file).map_err(hub_error)?;
        if file == "model_index.json" {
            index = Some(local);
        }
    }
    let index = index
        .ok_or_else(|| Error::invalid("model", format!("{spec}: model_index.json missing")))?;
    snapshot_of(&index)
}
