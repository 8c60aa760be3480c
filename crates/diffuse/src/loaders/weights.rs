//! Weights from `*.safetensors` files, memory-mapped, with errors that name the file and the tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::{Error, Result};

/// Where a tensor a model asks for is stored, when it is not under the model's own name, and how the stored
/// tensor becomes the one asked for. The transform runs when the tensor is loaded, on that tensor alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// The name in the file.
    pub name: String,
    /// How the stored tensor becomes the one asked for.
    pub transform: Transform,
}

/// What turns a stored tensor into the tensor a model asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Used as stored.
    None,
    /// The same values in another shape (e.g. a 1×1 convolution kernel for a linear layer), reshaped to the
    /// shape asked for.
    Reshape,
    /// `len` rows from row `start` (dimension 0): one of OpenCLIP's fused `in_proj` q, k, v blocks.
    Rows {
        /// The first row.
        start: usize,
        /// How many rows.
        len: usize,
    },
    /// The stored matrix transposed (OpenCLIP's `text_projection` multiplies on the other side).
    Transpose,
}

impl StoredKey {
    /// `name`, used as stored.
    pub fn renamed(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            transform: Transform::None,
        }
    }

    /// `name`, reshaped to the shape asked for.
    pub fn reshaped(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            transform: Transform::Reshape,
        }
    }

    /// `name` with `transform`.
    pub fn with(name: impl Into<String>, transform: Transform) -> Self {
        Self {
            name: name.into(),
            transform,
        }
    }
}

/// A renaming from the names the models ask for (diffusers' keys) to the names stored in the files.
pub type KeyMap = HashMap<String, StoredKey>;

/// A set of safetensors files that together hold one component's weights.
pub struct WeightFiles {
    tensors: Arc<MmapedSafetensors>,
    files: Vec<PathBuf>,
    keys: KeyMap,
    only_mapped: bool,
}

impl WeightFiles {
    /// Memory-maps `files` and reads their headers; a tensor present in several files is taken from the last.
    pub fn open(files: &[PathBuf]) -> Result<Self> {
        for file in files {
            if !file.is_file() {
                return Err(Error::Io {
                    path: file.clone(),
                    cause: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                });
            }
        }
        // SAFETY: the files are mapped read-only; diffuse never writes to a weights file it has mapped, and a
        // file changed by another process while mapped is outside what any mmap-based loader can guard against.
        let tensors = unsafe { MmapedSafetensors::multi(files) }.map_err(|e| Error::Weights {
            file: display_files(files),
            tensor: "(header)".into(),
            message: format!("not a readable safetensors file: {e}"),
        })?;
        Ok(Self {
            tensors: Arc::new(tensors),
            files: files.to_vec(),
            keys: KeyMap::new(),
            only_mapped: false,
        })
    }

    /// Uses `keys` to find tensors stored under other names; other names are looked up as they are.
    pub fn with_keys(mut self, keys: KeyMap) -> Self {
        self.keys = keys;
        self
    }

    /// The same files (sharing the mapping) seen through `keys` alone: a name missing from `keys` is missing,
    /// for files in another layout (a single-file checkpoint) where no tensor is stored under the name a model
    /// asks for. [`WeightFiles::stored`] then lists only the tensors `keys` refers to.
    pub fn mapped(&self, keys: KeyMap) -> Self {
        Self {
            tensors: Arc::clone(&self.tensors),
            files: self.files.clone(),
            keys,
            only_mapped: true,
        }
    }

    /// The names and shapes of every stored tensor (for [`WeightFiles::mapped`] files, every tensor the key
    /// map refers to), with their stored dtypes, in name order.
    pub fn stored(&self) -> Vec<(String, Vec<usize>, safetensors::Dtype)> {
        let referred: Option<std::collections::HashSet<&str>> = self
            .only_mapped
            .then(|| self.keys.values().map(|k| k.name.as_str()).collect());
        let mut all: Vec<_> = self
            .tensors
            .tensors()
            .into_iter()
            .filter(|(name, _)| referred.as_ref().is_none_or(|r| r.contains(name.as_str())))
            .map(|(name, view)| (name, view.shape().to_vec(), view.dtype()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// A [`VarBuilder`] reading these files, converting to `dtype` on `device`.
    pub fn var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }

    fn label(&self) -> String {
        display_files(&self.files)
    }

    fn lookup(&self, name: &str) -> Option<StoredKey> {
        match self.keys.get(name) {
            Some(stored) => Some(stored.clone()),
            None if self.only_mapped => None,
            None => Some(StoredKey::renamed(name)),
        }
    }

    fn weights_error(&self, tensor: &str, message: String) -> candle_core::Error {
        candle_core::Error::Msg(format!("{}: tensor `{tensor}`: {message}", self.label()))
    }

    /// Why `name` is missing from mapped files: when another tensor of its module is stored (`bias` for a
    /// missing `weight`), the name it would have been stored under.
    fn unmapped_message(&self, name: &str) -> String {
        let generic = "missing from the checkpoint (no stored tensor converts to it)".to_string();
        let Some((module, _)) = name.rsplit_once('.') else {
            return generic;
        };
        let sibling = self.keys.iter().find_map(|(asked, stored)| {
            let (sibling_module, last) = asked.rsplit_once('.')?;
            let stored_module = stored.name.strip_suffix(&format!(".{last}"))?;
            (sibling_module == module).then_some(stored_module)
        });
        match (sibling, name.rsplit_once('.')) {
            (Some(stored_module), Some((_, last))) => {
                format!("missing from the checkpoint (expected as `{stored_module}.{last}`)")
            }
            _ => generic,
        }
    }

    /// Loads the tensor asked for as `name` in `dtype`, transformed; `Reshape` is left to the caller, which
    /// knows the shape asked for.
    fn load(
        &self,
        name: &str,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<(Tensor, Transform)> {
        let stored = self
            .lookup(name)
            .ok_or_else(|| self.weights_error(name, self.unmapped_message(name)))?;
        let view = self.tensors.get(&stored.name).map_err(|_| {
            let shown = if stored.name == name {
                String::new()
            } else {
                format!(" (stored as `{}`)", stored.name)
            };
            self.weights_error(name, format!("missing from the weights{shown}"))
        })?;
        let tensor = read(&view, dtype, dev)
            .map_err(|e| self.weights_error(name, format!("cannot be read: {e}")))?;
        release_pages(view.data());
        let tensor = match stored.transform {
            Transform::None | Transform::Reshape => tensor,
            Transform::Rows { start, len } => {
                let rows = tensor.dims().first().copied().unwrap_or(0);
                if start + len > rows {
                    return Err(self.weights_error(
                        name,
                        format!(
                            "rows {start}..{} of `{}` asked for, but it has {rows} rows (shape {:?})",
                            start + len,
                            stored.name,
                            tensor.dims()
                        ),
                    ));
                }
                // A copy, so that the model does not keep the whole fused tensor alive.
                tensor.narrow(0, start, len)?.copy()?
            }
            Transform::Transpose => {
                if tensor.rank() != 2 {
                    return Err(self.weights_error(
                        name,
                        format!(
                            "`{}` should be a matrix to transpose, found shape {:?}",
                            stored.name,
                            tensor.dims()
                        ),
                    ));
                }
                tensor.t()?.contiguous()?
            }
        };
        Ok((tensor, stored.transform))
    }
}

impl SimpleBackend for WeightFiles {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let (tensor, transform) = self.load(name, dtype, dev)?;
        let tensor = if tensor.shape() == &shape {
            tensor
        } else if transform == Transform::Reshape && tensor.elem_count() == shape.elem_count() {
            tensor.reshape(shape)?
        } else {
            return Err(self.weights_error(
                name,
                format!(
                    "expected shape {:?}, found {:?}",
                    shape.dims(),
                    tensor.dims()
                ),
            ));
        };
        tensor.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)?.0.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.lookup(name)
            .is_some_and(|stored| self.tensors.get(&stored.name).is_ok())
    }
}

/// Every tensor a model took from its weights while it was built, under the name it asked for. The tensors
/// are the model's own (the same storage, no copy), so a variant of the model that replaces a few of them
/// ([`Overlay`]) shares the rest.
#[derive(Clone, Default)]
pub(crate) struct TensorRecord(Arc<Mutex<HashMap<String, Tensor>>>);

impl TensorRecord {
    /// A [`VarBuilder`] reading `files` as [`WeightFiles::var_builder`] does, recording what it hands out.
    pub(crate) fn var_builder(
        &self,
        files: WeightFiles,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        let backend = Recording {
            files,
            record: self.clone(),
        };
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
    }

    /// The recorded tensors.
    pub(crate) fn tensors(&self) -> HashMap<String, Tensor> {
        self.0.lock().map(|t| t.clone()).unwrap_or_default()
    }

    fn insert(&self, name: &str, tensor: &Tensor) {
        if let Ok(mut tensors) = self.0.lock() {
            tensors.insert(name.to_string(), tensor.clone());
        }
    }
}

/// [`WeightFiles`] that record every tensor they hand out.
struct Recording {
    files: WeightFiles,
    record: TensorRecord,
}

impl SimpleBackend for Recording {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.files.get(shape, name, init, dtype, dev)?;
        self.record.insert(name, &tensor);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let tensor = self.files.get_unchecked(name, dtype, dev)?;
        self.record.insert(name, &tensor);
        Ok(tensor)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.files.contains_tensor(name)
    }
}

/// A model's recorded tensors with some of them replaced: the weights of a variant of an already loaded model
/// (with LoRAs merged), read without touching its files.
pub(crate) struct Overlay {
    /// The tensors the model was built from.
    pub(crate) base: Arc<HashMap<String, Tensor>>,
    /// Replacements, by the same names.
    pub(crate) replaced: HashMap<String, Tensor>,
}

impl Overlay {
    fn tensor(&self, name: &str) -> candle_core::Result<&Tensor> {
        self.replaced
            .get(name)
            .or_else(|| self.base.get(name))
            .ok_or_else(|| {
                candle_core::Error::Msg(format!("tensor `{name}` was not part of the loaded model"))
            })
    }

    /// A [`VarBuilder`] over these tensors.
    pub(crate) fn var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }
}

impl SimpleBackend for Overlay {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.tensor(name)?;
        if tensor.shape() != &shape {
            return Err(candle_core::Error::Msg(format!(
                "tensor `{name}`: expected shape {:?}, found {:?}",
                shape.dims(),
                tensor.dims()
            )));
        }
        tensor.to_dtype(dtype)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.tensor(name)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.replaced.contains_key(name) || self.base.contains_key(name)
    }
}

/// A stored tensor in `dtype`. f32 weights asked for in bf16 on the CPU (full-size checkpoints run in bf16)
/// are rounded straight from the mapped bytes, in parallel, as candle's `to_dtype` rounds them (to nearest,
/// ties to even), without an intermediate f32 copy; everything else is read, then converted.
fn read(
    view: &safetensors::tensor::TensorView<'_>,
    dtype: DType,
    dev: &Device,
) -> candle_core::Result<Tensor> {
    if dtype == DType::BF16 && view.dtype() == safetensors::Dtype::F32 && dev.is_cpu() {
        /// Values per parallel chunk.
        const CHUNK: usize = 1 << 16;
        let bytes = view.data();
        let mut values = vec![half::bf16::ZERO; bytes.len() / 4];
        values
            .par_chunks_mut(CHUNK)
            .zip(bytes.par_chunks(4 * CHUNK))
            .for_each(|(dst, src)| {
                for (d, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                    *d = half::bf16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                }
            });
        return Tensor::from_vec(values, view.shape(), dev);
    }
    view.load(dev)?.to_dtype(dtype)
}

/// Drops the mapped pages lying wholly inside `bytes` from this process once they have been copied, so that
/// loading does not hold the file's pages and the loaded copy at once (the peak RSS of a load would otherwise be
/// twice the weights). The mapping is read-only and file-backed: a later read simply faults the page back in.
fn release_pages(bytes: &[u8]) {
    #[cfg(unix)]
    {
        const PAGE: usize = 4096;
        let start = bytes.as_ptr() as usize;
        let first = start.div_ceil(PAGE) * PAGE;
        let last = (start + bytes.len()) / PAGE * PAGE;
        if last > first {
            // SAFETY: [first, last) lies inside the read-only file mapping that `bytes` borrows; MADV_DONTNEED
            // on such a mapping only unmaps pages, which are re-read from the file (unchanged) if touched again.
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }
}

fn display_files(files: &[PathBuf]) -> String {
    match files {
        [one] => one.display().to_string(),
        [first, ..] => format!(
            "{} (+{} more shards)",
            first.display(),
            files.len().saturating_sub(1)
        ),
        [] => "(no files)".into(),
    }
}

/// Which stored precision variant of the weight files to prefer, as diffusers' `variant=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Variant {
    /// The plain files (`model.safetensors`); falls back to the `fp16` variant when only that exists.
    #[default]
    Default,
    /// The `fp16` variant files (`model.fp16.safetensors`), falling back to the plain ones.
    Fp16,
}

/// Finds the weight files of a component folder whose weights are called `stem` (`diffusion_pytorch_model` or
/// `model`): a single file, the `fp16` variant, or shards listed in a `*.safetensors.index.json`.
pub fn find_weight_files(folder: &Path, stem: &str, variant: Variant) -> Result<Vec<PathBuf>> {
    let plain = [
        folder.join(format!("{stem}.safetensors")),
        folder.join(format!("{stem}.safetensors.index.json")),
    ];
    let fp16 = [
        folder.join(format!("{stem}.fp16.safetensors")),
        folder.join(format!("{stem}.safetensors.index.fp16.json")),
        folder.join(format!("{stem}.fp16.safetensors.index.json")),
    ];
    let order: Vec<&PathBuf> = match variant {
        Variant::Default => plain.iter().chain(fp16.iter()).collect(),
        Variant::Fp16 => fp16.iter().chain(plain.iter()).collect(),
    };
    for candidate in order {
        if !candidate.is_file() {
            continue;
        }
        let is_index = candidate
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".json"));
        return if is_index {
            shards_from_index(candidate)
        } else {
            Ok(vec![candidate.clone()])
        };
    }
    Err(Error::Io {
        path: folder.join(format!("{stem}.safetensors")),
        cause: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no weights found (looked for .safetensors, the fp16 variant and sharded index files; .bin/.ckpt \
             pickles are never loaded)",
        ),
    })
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>> {
    let parsed: ShardIndex = crate::loaders::json::read_json(index)?;
    let folder = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<String> = parsed.weight_map.into_values().collect();
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(Error::Json {
            path: index.to_path_buf(),
            message: "`weight_map` lists no files".into(),
        });
    }
    files
        .into_iter()
        .map(|name| {
            if name.contains('/') || name.contains('\\') || name.contains("..") {
                Err(Error::Json {
                    path: index.to_path_buf(),
                    message: format!("shard `{name}` is not a file name in the same folder"),
                })
            } else {
                Ok(folder.join(name))
            }
        })
        .collect()
}
