//! The model hash written into PNG metadata: AUTOMATIC1111 records the first 10 hex digits of the sha256 of the
//! checkpoint file, and so does diffuse for a single-file checkpoint; for a diffusers folder it hashes the
//! UNet's weight files, in name order. Hashes are cached by path, size and modification time, so a multi-GB
//! model is read once.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::folder::PipelineFolder;
use super::hub::diffuse_cache_dir;
use super::weights::{find_weight_files, Variant};
use crate::{Error, Result};

fn cache_file() -> PathBuf {
    diffuse_cache_dir().join("model-hashes.json")
}

fn file_key(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    let canonical = std::fs::canonicalize(path).ok()?;
    Some(format!("{}|{}|{modified}", canonical.display(), meta.len()))
}

/// The sha256 of `files` read in order, as 64 lowercase hex digits.
pub fn sha256_files(files: &[PathBuf]) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for path in files {
        let mut file = std::fs::File::open(path).map_err(|cause| Error::Io {
            path: path.clone(),
            cause,
        })?;
        loop {
            let n = file.read(&mut buf).map_err(|cause| Error::Io {
                path: path.clone(),
                cause,
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The 10-hex-digit model hash of a pipeline folder (see the module docs) or of a single-file checkpoint (the
/// whole file, exactly AUTOMATIC1111's hash), from the cache when it is fresh.
pub fn model_hash(folder: &PipelineFolder) -> Result<String> {
    let files = match folder.single_file() {
        Some(file) => vec![file.path().to_path_buf()],
        None => {
            let unet = folder.component_dir("unet")?;
            let mut files = find_weight_files(&unet, "diffusion_pytorch_model", Variant::Default)?;
            files.sort();
            files
        }
    };
    let key = files
        .iter()
        .filter_map(|f| file_key(f))
        .collect::<Vec<_>>()
        .join(";");
    let cache_path = cache_file();
    let mut cache: BTreeMap<String, String> = std::fs::read_to_string(&cache_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if let Some(hash) = cache.get(&key) {
        return Ok(hash.clone());
    }
    let hash = sha256_files(&files)?[..10].to_string();
    cache.insert(key, hash.clone());
    if let Some(dir) = cache_path.parent() {
        // The cache is an optimisation: failing to write it is not an error.
        let _ = std::fs::create_dir_all(dir).and_then(|_| {
            std::fs::write(
                &cache_path,
                serde_json::to_string_pretty(&cache).unwrap_or_default(),
            )
        });
    }
    Ok(hash)
}
