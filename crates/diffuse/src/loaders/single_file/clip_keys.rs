//! The text encoders' key maps. Which stored encoder feeds a text encoder is decided as diffusers'
//! `create_diffusers_clip_model_from_ldm` decides it: by marker tensors and the encoder's width, not by the
//! component's name. OpenAI CLIP (SD 1.x, SDXL's first encoder) is stored with transformers' names under a
//! prefix; OpenCLIP (SD 2.x, SDXL's second encoder) with its own names, a fused q/k/v projection that is
//! sliced into rows, and a `text_projection` stored transposed.

use super::detect::Header;
use crate::loaders::weights::{KeyMap, StoredKey, Transform};
use crate::models::clip::config::ClipTextConfig;

/// SD 1.x's CLIP marker (diffusers' `clip`).
const CLIP_MARKER: &str =
    "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight";
/// SDXL's first encoder marker (diffusers' `clip_sdxl`), whose width is compared with the encoder's.
const CLIP_SDXL_MARKER: &str =
    "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight";
/// SD 2.x's OpenCLIP marker (diffusers' `open_clip`).
const OPEN_CLIP_MARKER: &str = "cond_stage_model.model.token_embedding.weight";
/// SDXL's second encoder marker (diffusers' `open_clip_sdxl`), whose width is compared with the encoder's.
const OPEN_CLIP_SDXL_MARKER: &str = "conditioner.embedders.1.model.positional_embedding";
/// The SDXL refiner's OpenCLIP marker (diffusers' `open_clip_sdxl_refiner`).
const OPEN_CLIP_REFINER_MARKER: &str = "conditioner.embedders.0.model.text_projection";

/// The prefixes diffusers strips from OpenAI CLIP names, whichever encoder is loaded.
const CLIP_PREFIXES: [&str; 2] = [
    "cond_stage_model.transformer.",
    "conditioner.embedders.0.transformer.",
];

/// OpenCLIP top-level renames: diffusers name ← name under the prefix.
const OPEN_CLIP_LAYERS: [(&str, &str); 5] = [
    (
        "text_model.embeddings.position_embedding.weight",
        "positional_embedding",
    ),
    (
        "text_model.embeddings.token_embedding.weight",
        "token_embedding.weight",
    ),
    ("text_model.final_layer_norm.weight", "ln_final.weight"),
    ("text_model.final_layer_norm.bias", "ln_final.bias"),
    ("text_projection.weight", "text_projection"),
];

/// OpenCLIP transformer renames (new ← old), applied in order to names under `transformer.`.
const OPEN_CLIP_TRANSFORMER: [(&str, &str); 9] = [
    ("text_model.encoder.layers.", "resblocks."),
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    (".fc1.", ".c_fc."),
    (".fc2.", ".c_proj."),
    (".self_attn", ".attn"),
    ("transformer.text_model.final_layer_norm.", "ln_final."),
    (
        "transformer.text_model.embeddings.token_embedding.weight",
        "token_embedding.weight",
    ),
    (
        "transformer.text_model.embeddings.position_embedding.weight",
        "positional_embedding",
    ),
];

/// SD 2.x checkpoints hold 24 OpenCLIP layers and a projection; diffusers' SD 2 text encoder uses 23 layers
/// and no projection, and never loads these.
const SD2_IGNORED_PREFIX: &str = "cond_stage_model.model.";
const SD2_IGNORED: [&str; 13] = [
    "transformer.resblocks.23.attn.in_proj_bias",
    "transformer.resblocks.23.attn.in_proj_weight",
    "transformer.resblocks.23.attn.out_proj.bias",
    "transformer.resblocks.23.attn.out_proj.weight",
    "transformer.resblocks.23.ln_1.bias",
    "transformer.resblocks.23.ln_1.weight",
    "transformer.resblocks.23.ln_2.bias",
    "transformer.resblocks.23.ln_2.weight",
    "transformer.resblocks.23.mlp.c_fc.bias",
    "transformer.resblocks.23.mlp.c_fc.weight",
    "transformer.resblocks.23.mlp.c_proj.bias",
    "transformer.resblocks.23.mlp.c_proj.weight",
    "text_projection",
];

/// Where a text encoder's weights are in the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// OpenAI CLIP under one of [`CLIP_PREFIXES`].
    Clip,
    /// OpenCLIP under this prefix.
    OpenClip(&'static str),
}

fn width(header: &Header, key: &str) -> Option<usize> {
    header.get(key).and_then(|shape| shape.last().copied())
}

/// diffusers' choice of stored encoder for a text encoder `hidden` wide.
fn source(header: &Header, hidden: usize) -> std::result::Result<Source, String> {
    let has = |key: &str| header.contains_key(key);
    if ![
        CLIP_MARKER,
        OPEN_CLIP_MARKER,
        OPEN_CLIP_SDXL_MARKER,
        OPEN_CLIP_REFINER_MARKER,
    ]
    .iter()
    .any(|k| has(k))
    {
        return Err(format!(
            "the checkpoint has no text encoder (none of `{CLIP_MARKER}`, `{OPEN_CLIP_MARKER}`, \
             `{OPEN_CLIP_SDXL_MARKER}`)"
        ));
    }
    if has(CLIP_MARKER) || width(header, CLIP_SDXL_MARKER) == Some(hidden) {
        Ok(Source::Clip)
    } else if has(OPEN_CLIP_MARKER) {
        Ok(Source::OpenClip("cond_stage_model.model."))
    } else if width(header, OPEN_CLIP_SDXL_MARKER) == Some(hidden) {
        Ok(Source::OpenClip("conditioner.embedders.1.model."))
    } else if has(OPEN_CLIP_REFINER_MARKER) {
        Ok(Source::OpenClip("conditioner.embedders.0.model."))
    } else {
        let found: Vec<String> = [CLIP_SDXL_MARKER, OPEN_CLIP_SDXL_MARKER]
            .iter()
            .filter_map(|k| width(header, k).map(|w| format!("`{k}` is {w} wide")))
            .collect();
        Err(format!(
            "no stored text encoder is {hidden} wide, the width its config asks for ({})",
            found.join(", ")
        ))
    }
}

/// The key map of the text encoder `hidden` wide (its config's `hidden_size`) in `header`. Errors are
/// messages for the caller to attribute.
pub fn text_encoder_keys(
    header: &Header,
    config: &ClipTextConfig,
) -> std::result::Result<KeyMap, String> {
    Ok(match source(header, config.hidden_size)? {
        Source::Clip => clip_keys(header),
        Source::OpenClip(prefix) => open_clip_keys(header, prefix, config.hidden_size),
    })
}

/// OpenAI CLIP: the stored names less the prefix (transformers' own names).
fn clip_keys(header: &Header) -> KeyMap {
    let mut map = KeyMap::new();
    for key in header.keys() {
        for prefix in CLIP_PREFIXES {
            if key.starts_with(prefix) {
                map.insert(key.replace(prefix, ""), StoredKey::renamed(key.clone()));
            }
        }
    }
    map
}

fn ignored(key: &str) -> bool {
    key.strip_prefix(SD2_IGNORED_PREFIX)
        .is_some_and(|rest| SD2_IGNORED.contains(&rest))
}

/// OpenCLIP under `prefix`. The fused projection is split at the width of the stored `text_projection`'s
/// rows when there is one, else at the encoder's width, as diffusers splits it.
fn open_clip_keys(header: &Header, prefix: &str, hidden: usize) -> KeyMap {
    let mut map = KeyMap::new();
    for (diffusers, ldm) in OPEN_CLIP_LAYERS {
        let stored = format!("{prefix}{ldm}");
        if !header.contains_key(&stored) || ignored(&stored) {
            continue;
        }
        let transform = if ldm == "text_projection" {
            Transform::Transpose
        } else {
            Transform::None
        };
        map.insert(diffusers.to_string(), StoredKey::with(stored, transform));
    }
    let split = header
        .get(&format!("{prefix}text_projection"))
        .and_then(|shape| shape.first().copied())
        .unwrap_or(hidden);
    let transformer = format!("{prefix}transformer.");
    for (key, shape) in header {
        let Some(rest) = key.strip_prefix(&transformer) else {
            continue;
        };
        if ignored(key) {
            continue;
        }
        let name = OPEN_CLIP_TRANSFORMER
            .iter()
            .fold(rest.to_string(), |n, (new, old)| {
                n.replace(old, new)
                    .replace(".in_proj_weight", "")
                    .replace(".in_proj_bias", "")
            });
        let fused = if key.ends_with(".in_proj_weight") {
            Some("weight")
        } else if key.ends_with(".in_proj_bias") {
            Some("bias")
        } else {
            None
        };
        match fused {
            Some(part) => {
                let rows = shape.first().copied().unwrap_or(0);
                let parts = [
                    ("q_proj", 0, split),
                    ("k_proj", split, split),
                    ("v_proj", 2 * split, rows.saturating_sub(2 * split)),
                ];
                for (projection, start, len) in parts {
                    map.insert(
                        format!("{name}.{projection}.{part}"),
                        StoredKey::with(key.clone(), Transform::Rows { start, len }),
                    );
                }
            }
            None => {
                map.insert(name, StoredKey::renamed(key.clone()));
            }
        }
    }
    map
}
