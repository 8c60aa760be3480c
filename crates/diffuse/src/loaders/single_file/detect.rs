//! Which model a single-file checkpoint holds, decided from marker tensors and their shapes in the order of
//! diffusers' `infer_diffusers_model_type`, with the layouts diffusers would misread as SD 1.x refused.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use crate::{Error, Result};

/// Every tensor name of a checkpoint with its shape.
pub type Header = BTreeMap<String, Vec<usize>>;

/// The LDM UNet's first convolution: present in every SD checkpoint; its input channels tell inpainting
/// (9) and InstructPix2Pix (8) UNets apart.
pub const UNET_CONV_IN: &str = "model.diffusion_model.input_blocks.0.0.weight";
/// SD 2.x: the first cross-attention's key projection reads 1024-wide OpenCLIP embeddings.
const V2_MARKER: &str =
    "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight";
/// SDXL base: the second text encoder (OpenCLIP ViT-bigG).
const XL_BASE_MARKER: &str =
    "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias";
/// SDXL refiner: OpenCLIP as the first and only text encoder.
const XL_REFINER_MARKER: &str =
    "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias";

/// Checkpoints diffusers recognises but diffuse cannot run, by a marker tensor each, in diffusers' order.
const UNSUPPORTED: [(&str, &str); 12] = [
    ("edm_mean", "Playground v2.5 (diffusers type `playground-v2-5`)"),
    (XL_REFINER_MARKER, "the SDXL refiner (diffusers type `xl_refiner`)"),
    (
        "model.diffusion_model.input_blocks.10.0.skip_connection.bias",
        "the SD x4 upscaler (diffusers type `upscale`)",
    ),
    ("control_model.time_embed.0.weight", "a ControlNet"),
    ("controlnet_cond_embedding.conv_in.weight", "a ControlNet"),
    ("clip_txt_mapper.weight", "Stable Cascade (stage C)"),
    ("down_blocks.1.0.channelwise.0.weight", "Stable Cascade (stage B)"),
    (
        "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias",
        "Stable Diffusion 3",
    ),
    ("joint_blocks.0.context_block.adaLN_modulation.1.bias", "Stable Diffusion 3"),
    (
        "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale",
        "FLUX.1",
    ),
    ("double_blocks.0.img_attn.norm.key_norm.scale", "FLUX.1"),
    (
        "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe",
        "an AnimateDiff motion module",
    ),
];

/// The Stable Diffusion families diffuse loads from a single file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointKind {
    /// SD 1.x (diffusers type `v1`; its fallback for any LDM UNet it does not otherwise recognise).
    Sd1,
    /// SD 2.x (diffusers type `v2`), which diffusers configures as SD 2.1 768-v (v-prediction).
    Sd2,
    /// SDXL base (diffusers type `xl_base`).
    SdxlBase,
    /// SD 1.x inpainting, 9 input channels (diffusers type `inpainting`).
    Sd1Inpainting,
    /// SD 2.x inpainting, 9 input channels (diffusers type `inpainting_v2`).
    Sd2Inpainting,
    /// SDXL inpainting, 9 input channels (diffusers type `xl_inpaint`).
    SdxlInpainting,
}

impl CheckpointKind {
    /// diffusers' name of the type (`infer_diffusers_model_type`'s result).
    pub fn diffusers_type(self) -> &'static str {
        match self {
            Self::Sd1 => "v1",
            Self::Sd2 => "v2",
            Self::SdxlBase => "xl_base",
            Self::Sd1Inpainting => "inpainting",
            Self::Sd2Inpainting => "inpainting_v2",
            Self::SdxlInpainting => "xl_inpaint",
        }
    }

    /// The Hub repo whose configurations diffusers uses for this type when no `config=` is given.
    pub fn default_config_repo(self) -> &'static str {
        match self {
            Self::Sd1 => "stable-diffusion-v1-5/stable-diffusion-v1-5",
            Self::Sd2 => "stabilityai/stable-diffusion-2-1",
            Self::SdxlBase => "stabilityai/stable-diffusion-xl-base-1.0",
            Self::Sd1Inpainting => "stable-diffusion-v1-5/stable-diffusion-inpainting",
            Self::Sd2Inpainting => "stabilityai/stable-diffusion-2-inpainting",
            Self::SdxlInpainting => "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
        }
    }
}

impl fmt::Display for CheckpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Sd1 => "Stable Diffusion 1.x",
            Self::Sd2 => "Stable Diffusion 2.x",
            Self::SdxlBase => "Stable Diffusion XL base",
            Self::Sd1Inpainting => "Stable Diffusion 1.x inpainting",
            Self::Sd2Inpainting => "Stable Diffusion 2.x inpainting",
            Self::SdxlInpainting => "Stable Diffusion XL inpainting",
        };
        write!(f, "{name} (diffusers type `{}`)", self.diffusers_type())
    }
}

/// The last dimension of `key`'s shape, if the tensor exists.
fn last_dim(header: &Header, key: &str) -> Option<usize> {
    header.get(key).and_then(|shape| shape.last().copied())
}

/// Detects the model in `header`, the tensors of `file`.
pub fn detect(header: &Header, file: &Path) -> Result<CheckpointKind> {
    let has = |key: &str| header.contains_key(key);
    let is_v2 = last_dim(header, V2_MARKER) == Some(1024);
    let in_channels = header.get(UNET_CONV_IN).and_then(|s| s.get(1).copied());
    if in_channels == Some(9) {
        return Ok(if is_v2 {
            CheckpointKind::Sd2Inpainting
        } else if has(XL_BASE_MARKER) {
            CheckpointKind::SdxlInpainting
        } else {
            CheckpointKind::Sd1Inpainting
        });
    }
    if is_v2 {
        return Ok(CheckpointKind::Sd2);
    }
    // Playground v2.5 carries SDXL's markers too, so it is ruled out first, as in diffusers.
    if has(UNSUPPORTED[0].0) {
        return Err(unsupported(file, UNSUPPORTED[0].1));
    }
    if has(XL_BASE_MARKER) {
        return Ok(CheckpointKind::SdxlBase);
    }
    if let Some((_, name)) = UNSUPPORTED.iter().find(|(key, _)| has(key)) {
        return Err(unsupported(file, name));
    }
    match in_channels {
        Some(8) => Err(unsupported(
            file,
            "an InstructPix2Pix UNet (diffusers type `instruct-pix2pix`)",
        )),
        Some(_) => Ok(CheckpointKind::Sd1),
        None => Err(not_ldm(header, file)),
    }
}

fn unsupported(file: &Path, found: &str) -> Error {
    Error::unsupported(
        file.display().to_string(),
        "model type",
        found,
        "diffuse loads SD 1.x, SD 2.x and SDXL base checkpoints and their inpainting variants",
    )
}

/// The error for a file without the LDM UNet: what its tensors look like instead.
fn not_ldm(header: &Header, file: &Path) -> Error {
    let mut prefixes: BTreeMap<&str, usize> = BTreeMap::new();
    for name in header.keys() {
        let first = name.split('.').next().unwrap_or(name);
        *prefixes.entry(first).or_insert(0) += 1;
    }
    let mut by_count: Vec<(&str, usize)> = prefixes.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let shown: Vec<String> = by_count
        .iter()
        .take(6)
        .map(|(prefix, n)| format!("{n} under `{prefix}.`"))
        .collect();
    let diffusers_component =
        if header.contains_key("conv_in.weight") && has_prefix(header, "down_blocks.") {
            Some("a diffusers UNet")
        } else if has_prefix(header, "encoder.down_blocks.") {
            Some("a diffusers VAE")
        } else if has_prefix(header, "text_model.")
            || header.contains_key("embeddings.token_embedding.weight")
        {
            Some("a transformers text encoder")
        } else {
            None
        };
    let found = match (header.is_empty(), diffusers_component) {
        (true, _) => "the file holds no tensors".to_string(),
        (false, Some(component)) => format!(
            "this looks like {component} weights file ({}); open its pipeline folder instead",
            shown.join(", ")
        ),
        (false, None) => format!("found {} tensors: {}", header.len(), shown.join(", ")),
    };
    Error::Weights {
        file: file.display().to_string(),
        tensor: UNET_CONV_IN.into(),
        message: format!(
            "missing: not a Stable Diffusion checkpoint in the CompVis/AUTOMATIC1111 layout; {found}"
        ),
    }
}

fn has_prefix(header: &Header, prefix: &str) -> bool {
    header
        .range(prefix.to_string()..)
        .next()
        .is_some_and(|(name, _)| name.starts_with(prefix))
}
