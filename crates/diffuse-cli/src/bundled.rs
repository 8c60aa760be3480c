//! The bundled model, inside the binary: written out once to diffuse's cache folder, so that an installed or
//! copied `diffuse` has its default model wherever it runs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use diffuse::loaders::hub::diffuse_cache_dir;

/// The folder's name, which PNG parameters record as the model.
const NAME: &str = "diffuse-tiny";

/// One file of models/diffuse-tiny: its path in the folder and its bytes.
macro_rules! bundled_file {
    ($path:literal) => {
        (
            $path,
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../models/diffuse-tiny/",
                $path
            )) as &[u8],
        )
    };
}

/// Every file of the bundled model.
const FILES: &[(&str, &[u8])] = &[
    bundled_file!("model_index.json"),
    bundled_file!("scheduler/scheduler_config.json"),
    bundled_file!("text_encoder/config.json"),
    bundled_file!("text_encoder/model.safetensors"),
    bundled_file!("tokenizer/merges.txt"),
    bundled_file!("tokenizer/special_tokens_map.json"),
    bundled_file!("tokenizer/tokenizer_config.json"),
    bundled_file!("tokenizer/vocab.json"),
    bundled_file!("unet/config.json"),
    bundled_file!("unet/diffusion_pytorch_model.safetensors"),
    bundled_file!("vae/config.json"),
    bundled_file!("vae/diffusion_pytorch_model.safetensors"),
];

/// The bundled model's folder, written out on first use under `diffuse_cache_dir()/bundled/<content hash>/`
/// (another build's model never shadows this one's).
pub fn bundled_model() -> Result<PathBuf> {
    let root = diffuse_cache_dir()
        .join("bundled")
        .join(format!("{:016x}", content_hash()));
    let folder = root.join(NAME);
    if is_complete(&folder) {
        return Ok(folder);
    }
    // Written beside the final folder and renamed into place, so that a concurrent run never sees half a model.
    let partial = root.join(format!("{NAME}.partial-{}", std::process::id()));
    write_files(&partial)
        .with_context(|| format!("cannot write the bundled model to {}", partial.display()))?;
    match std::fs::rename(&partial, &folder) {
        Ok(()) => Ok(folder),
        // Another process put it there first.
        Err(_) if is_complete(&folder) => {
            let _ = std::fs::remove_dir_all(&partial);
            Ok(folder)
        }
        Err(e) => {
            Err(e).with_context(|| format!("cannot move the bundled model to {}", folder.display()))
        }
    }
}

fn write_files(folder: &Path) -> std::io::Result<()> {
    for (path, bytes) in FILES {
        let target = folder.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(target, bytes)?;
    }
    Ok(())
}

/// Whether every file is there with its size (a folder renamed into place is whole).
fn is_complete(folder: &Path) -> bool {
    FILES.iter().all(|(path, bytes)| {
        std::fs::metadata(folder.join(path)).is_ok_and(|m| m.len() == bytes.len() as u64)
    })
}

/// FNV-1a over the files' names and bytes.
fn content_hash() -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (path, bytes) in FILES {
        for byte in path.bytes().chain(bytes.iter().copied()) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_model_folder_is_bundled() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/diffuse-tiny");
        let mut on_disk = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let relative = path.strip_prefix(&root).unwrap();
                    on_disk.push(relative.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        on_disk.sort();
        let mut bundled: Vec<String> = FILES.iter().map(|(p, _)| p.to_string()).collect();
        bundled.sort();
        assert_eq!(bundled, on_disk);
    }
}
