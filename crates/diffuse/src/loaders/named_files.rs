//! A folder of adapter files named by their stems, as AUTOMATIC1111 resolves `<lora:NAME:…>` tags and
//! embedding trigger words: `NAME.safetensors` anywhere under the folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;

use crate::loaders::single_file::{is_pickle_path, pickle_refusal};
use crate::{Error, Result};

/// Memory-maps the adapter file `path` (a LoRA or an embedding, `what` in the not-found message), refusing
/// pickles without reading them and naming the file when it is missing or not safetensors.
pub(crate) fn map_adapter(path: &Path, what: &str) -> Result<MmapedSafetensors> {
    if is_pickle_path(path) {
        return Err(pickle_refusal(path));
    }
    if !path.is_file() {
        return Err(Error::Io {
            path: path.to_path_buf(),
            cause: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no such {what} file"),
            ),
        });
    }
    // SAFETY: mapped read-only; diffuse never writes to a file it has mapped.
    unsafe { MmapedSafetensors::new(path) }.map_err(|e| Error::Weights {
        file: path.display().to_string(),
        tensor: "(header)".into(),
        message: format!("not a readable safetensors file: {e}"),
    })
}

/// The `.safetensors` files under a folder (subfolders included), by file stem.
#[derive(Debug, Clone, Default)]
pub struct NamedFiles {
    root: PathBuf,
    files: BTreeMap<String, PathBuf>,
}

impl NamedFiles {
    /// Lists the `.safetensors` files under `root`. Where two files share a stem, the first in path order wins.
    pub fn scan(root: &Path) -> Result<Self> {
        let mut paths = Vec::new();
        collect(root, &mut paths)?;
        paths.sort();
        let mut files = BTreeMap::new();
        for path in paths {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                files.entry(stem.to_string()).or_insert(path);
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            files,
        })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every name with its file, in name order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.files.iter().map(|(n, p)| (n.as_str(), p.as_path()))
    }

    /// The file called `name` (a stem, never a path). `field` names where the name came from, for the error.
    pub fn resolve(&self, name: &str, field: &str) -> Result<&Path> {
        if let Some(path) = self.files.get(name) {
            return Ok(path);
        }
        let known: Vec<&str> = self.files.keys().map(String::as_str).collect();
        let listed = if known.is_empty() {
            "it holds no .safetensors files".to_string()
        } else {
            format!("it holds: {}", known.join(", "))
        };
        Err(Error::invalid(
            field,
            format!("no `{name}.safetensors` in its folder ({listed})"),
        ))
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let io = |cause| Error::Io {
        path: dir.to_path_buf(),
        cause,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
        {
            out.push(path);
        }
    }
    Ok(())
}
