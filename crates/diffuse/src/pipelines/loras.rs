//! LoRAs for one generation. The loaded pipeline never changes: a set of LoRAs gets its own UNet and text
//! encoders, built from the loaded models' tensors with each changed layer's weight replaced by
//! `W + Σ weightᵢ · ΔWᵢ` (merged, so a step costs what a plain step costs) and every other tensor shared.
//! The last few sets are kept, so a series of generations with the same LoRAs prepares them once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};

use super::prompt::{SecondEncoder, TextEncoder, TextEncoders};
use super::request::RequestField;
use crate::loaders::lora::targets::Targets;
use crate::loaders::lora::{Component, LoraFile};
use crate::loaders::named_files::NamedFiles;
use crate::loaders::single_file::{is_pickle_path, pickle_refusal};
use crate::loaders::weights::Overlay;
use crate::models::clip::text_model::ClipTextModel;
use crate::models::config_values::PerBlock;
use crate::models::lora_delta::delta;
use crate::models::unet::UNet2DConditionModel;
use crate::{Error, Result};

/// How many LoRA sets stay prepared (each holds its own copy of every layer its LoRAs change).
const PREPARED_SETS: usize = 2;

/// Where a LoRA comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LoraSource {
    /// A name (file stem) in the pipeline's LoRA folder, as `<lora:NAME:…>` tags give it.
    Name(String),
    /// A file.
    File(PathBuf),
}

/// A LoRA for one generation, with AUTOMATIC1111's two multipliers (negative ones included).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraChoice {
    /// The LoRA.
    pub source: LoraSource,
    /// The multiplier on its text encoder layers.
    pub text_encoder_weight: f64,
    /// The multiplier on its UNet layers.
    pub unet_weight: f64,
}

impl LoraChoice {
    /// `path` with `weight` on both the text encoders and the UNet.
    pub fn file(path: impl Into<PathBuf>, weight: f64) -> Self {
        Self {
            source: LoraSource::File(path.into()),
            text_encoder_weight: weight,
            unet_weight: weight,
        }
    }

    /// The LoRA called `name` in the pipeline's LoRA folder, with `weight` on both models.
    pub fn named(name: impl Into<String>, weight: f64) -> Self {
        Self {
            source: LoraSource::Name(name.into()),
            text_encoder_weight: weight,
            unet_weight: weight,
        }
    }

    /// The multipliers must be finite numbers.
    pub(crate) fn validate(&self) -> Result<()> {
        for (what, w) in [
            ("text encoder", self.text_encoder_weight),
            ("UNet", self.unet_weight),
        ] {
            if !w.is_finite() {
                return Err(Error::invalid(
                    RequestField::Loras.name(),
                    format!(
                        "{}: the {what} weight {w} is not a finite number",
                        self.label()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn label(&self) -> String {
        match &self.source {
            LoraSource::Name(n) => n.clone(),
            LoraSource::File(p) => p.display().to_string(),
        }
    }
}

/// A LoRA resolved to its file, with its multipliers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResolvedLora {
    pub path: PathBuf,
    pub text_encoder_weight: f64,
    pub unet_weight: f64,
}

/// Resolves `choices` (names through `dir`), dropping those whose weights are both 0.
pub(crate) fn resolve(choices: &[LoraChoice], dir: Option<&Path>) -> Result<Vec<ResolvedLora>> {
    let mut listing: Option<NamedFiles> = None;
    let mut out = Vec::new();
    for choice in choices {
        choice.validate()?;
        if choice.text_encoder_weight == 0.0 && choice.unet_weight == 0.0 {
            continue;
        }
        let path = match &choice.source {
            LoraSource::File(path) => path.clone(),
            LoraSource::Name(name) => {
                let Some(dir) = dir else {
                    return Err(Error::invalid(
                        RequestField::Loras.name(),
                        format!(
                            "<lora:{name}:…> names a LoRA, but the pipeline has no LoRA folder to look it up in"
                        ),
                    ));
                };
                if listing.is_none() {
                    listing = Some(NamedFiles::scan(dir)?);
                }
                listing
                    .as_ref()
                    .map(|l| l.resolve(name, RequestField::Loras.name()))
                    .transpose()?
                    .map(Path::to_path_buf)
                    .unwrap_or_default()
            }
        };
        if is_pickle_path(&path) {
            return Err(pickle_refusal(&path));
        }
        out.push(ResolvedLora {
            path,
            text_encoder_weight: choice.text_encoder_weight,
            unet_weight: choice.unet_weight,
        });
    }
    Ok(out)
}

/// The tensors the loaded UNet and text encoders were built from, by name.
pub(crate) struct BaseTensors {
    pub unet: Arc<HashMap<String, Tensor>>,
    pub text_encoder: Arc<HashMap<String, Tensor>>,
    pub text_encoder_2: Arc<HashMap<String, Tensor>>,
}

/// A UNet and text encoders with a set of LoRAs merged in.
pub(crate) struct Adapted {
    /// The text encoders (rebuilt over the shared tensors even where unchanged).
    pub text: TextEncoders,
    /// The UNet, where the LoRAs change it.
    pub unet: Option<UNet2DConditionModel>,
}

/// What identifies a prepared set: each file (with its size and modification time, so an edited file is
/// read again) and its multipliers, in order.
type SetKey = Vec<(PathBuf, u64, u128, u64, u64)>;

/// The prepared sets, most recently used last.
#[derive(Default)]
pub(crate) struct PreparedSets(Mutex<Vec<(SetKey, Arc<Adapted>)>>);

impl PreparedSets {
    /// The models for `loras`, prepared now unless they were recently.
    pub(crate) fn get_or_prepare(
        &self,
        loras: &[ResolvedLora],
        prepare: impl FnOnce(&[ResolvedLora]) -> Result<Adapted>,
    ) -> Result<Arc<Adapted>> {
        let key = set_key(loras)?;
        if let Ok(mut sets) = self.0.lock() {
            if let Some(i) = sets.iter().position(|(k, _)| *k == key) {
                let entry = sets.remove(i);
                let adapted = Arc::clone(&entry.1);
                sets.push(entry);
                return Ok(adapted);
            }
        }
        // Prepared outside the lock: generations with other sets (or none) go on meanwhile.
        let adapted = Arc::new(prepare(loras)?);
        if let Ok(mut sets) = self.0.lock() {
            if sets.len() >= PREPARED_SETS {
                sets.remove(0);
            }
            sets.push((key, Arc::clone(&adapted)));
        }
        Ok(adapted)
    }
}

fn set_key(loras: &[ResolvedLora]) -> Result<SetKey> {
    loras
        .iter()
        .map(|l| {
            let meta = std::fs::metadata(&l.path).map_err(|cause| Error::Io {
                path: l.path.clone(),
                cause,
            })?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            let path = std::fs::canonicalize(&l.path).unwrap_or_else(|_| l.path.clone());
            Ok((
                path,
                meta.len(),
                modified,
                l.text_encoder_weight.to_bits(),
                l.unet_weight.to_bits(),
            ))
        })
        .collect()
}

/// The models of one pipeline that LoRAs change, and what rebuilding them needs.
pub(crate) struct Base<'a> {
    pub tensors: &'a BaseTensors,
    pub text: &'a TextEncoders,
    pub unet: &'a UNet2DConditionModel,
    pub dtype: DType,
    pub device: &'a Device,
}

/// Merges `loras` into copies of `base`'s UNet and text encoders.
pub(crate) fn prepare(base: &Base, loras: &[ResolvedLora]) -> Result<Adapted> {
    let files = loras
        .iter()
        .map(|l| LoraFile::open(&l.path))
        .collect::<Result<Vec<_>>>()?;
    let layers_per_block = match &base.unet.config().layers_per_block {
        PerBlock::One(n) => Some(*n),
        PerBlock::Each(_) => None,
    };
    let components = [
        (Component::Unet, &base.tensors.unet, layers_per_block),
        (Component::TextEncoder, &base.tensors.text_encoder, None),
        (Component::TextEncoder2, &base.tensors.text_encoder_2, None),
    ];
    let mut replaced: HashMap<Component, HashMap<String, Tensor>> = HashMap::new();
    for (component, tensors, lpb) in components {
        let targets = Targets::new(component, tensors.keys(), lpb);
        let mut sums: HashMap<String, Tensor> = HashMap::new();
        for (file, lora) in files.iter().zip(loras) {
            let weight = match component {
                Component::Unet => lora.unet_weight,
                _ => lora.text_encoder_weight,
            };
            for module in file.modules().iter().filter(|m| m.component == component) {
                let unfit = |why: String| Error::Weights {
                    file: file.path().display().to_string(),
                    tensor: module.key.clone(),
                    message: why,
                };
                if tensors.is_empty() {
                    return Err(unfit(format!(
                        "changes a `{}` this model does not have (a LoRA for another architecture?)",
                        component.folder_name()
                    )));
                }
                let layer = targets.resolve(&module.name).ok_or_else(|| {
                    unfit(format!(
                        "names no layer of this model's {} (a LoRA for another architecture?)",
                        component.folder_name()
                    ))
                })?;
                if weight == 0.0 {
                    continue;
                }
                let weight_name = format!("{layer}.weight");
                let Some(original) = tensors.get(&weight_name) else {
                    continue;
                };
                let device = original.device();
                let change = delta(
                    &file.path().display().to_string(),
                    module,
                    original.dims(),
                    weight,
                    &|name| file.tensor(name, device),
                )?;
                add(&mut sums, weight_name, change.weight)?;
                if let Some(bias) = change.bias {
                    let bias_name = format!("{layer}.bias");
                    if !tensors.contains_key(&bias_name) {
                        return Err(unfit(format!(
                            "changes the bias of `{layer}`, which has none"
                        )));
                    }
                    add(&mut sums, bias_name, bias)?;
                }
            }
        }
        let mut merged = HashMap::new();
        for (name, sum) in sums {
            let original = &tensors[&name];
            let value = (original.to_dtype(DType::F32)? + sum)?.to_dtype(original.dtype())?;
            merged.insert(name, value);
        }
        replaced.insert(component, merged);
    }
    let mut take = |c: Component| replaced.remove(&c).unwrap_or_default();
    let (unet_changes, te_changes, te2_changes) = (
        take(Component::Unet),
        take(Component::TextEncoder),
        take(Component::TextEncoder2),
    );
    let unet = if unet_changes.is_empty() {
        None
    } else {
        Some(crate::kernels::int8::building(
            base.unet.quantization(),
            || {
                UNet2DConditionModel::new(
                    Overlay {
                        base: Arc::clone(&base.tensors.unet),
                        replaced: unet_changes,
                    }
                    .var_builder(base.dtype, base.device),
                    base.unet.config(),
                )
            },
        )?)
    };
    let rebuild = |encoder: &ClipTextModel,
                   tensors: &Arc<HashMap<String, Tensor>>,
                   changes: HashMap<String, Tensor>|
     -> Result<ClipTextModel> {
        ClipTextModel::new(
            Overlay {
                base: Arc::clone(tensors),
                replaced: changes,
            }
            .var_builder(base.dtype, base.device),
            encoder.config(),
            encoder.has_projection(),
        )
    };
    let first = match &base.text.first {
        Some(first) => Some(TextEncoder {
            tokenizer: first.tokenizer.clone(),
            encoder: rebuild(&first.encoder, &base.tensors.text_encoder, te_changes)?,
        }),
        None => None,
    };
    let second = match &base.text.second {
        Some(second) => Some(Box::new(SecondEncoder {
            tokenizer: second.tokenizer.clone(),
            encoder: rebuild(&second.encoder, &base.tensors.text_encoder_2, te2_changes)?,
            force_zeros_for_empty_prompt: second.force_zeros_for_empty_prompt,
        })),
        None => None,
    };
    Ok(Adapted {
        text: TextEncoders { first, second },
        unet,
    })
}

fn add(sums: &mut HashMap<String, Tensor>, name: String, delta: Tensor) -> Result<()> {
    let sum = match sums.remove(&name) {
        Some(previous) => (previous + delta)?,
        None => delta,
    };
    sums.insert(name, sum);
    Ok(())
}
