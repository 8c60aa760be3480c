//! The UNet's key map: LDM `model.diffusion_model.` names (`input_blocks`, `middle_block`, `output_blocks`)
//! to diffusers' `UNet2DConditionModel` names, block for block as diffusers' `convert_ldm_unet_checkpoint`
//! renames them. Only names are compared; no tensor is read.

use std::collections::{BTreeMap, BTreeSet};

use super::detect::Header;
use crate::loaders::weights::{KeyMap, StoredKey};
use crate::models::config_values::PerBlock;
use crate::models::unet::UNet2DConditionConfig;

/// The UNet's prefix in an LDM checkpoint.
pub const UNET_PREFIX: &str = "model.diffusion_model.";

/// Fixed renames, diffusers name ← LDM name, taken when the LDM tensor exists.
const LAYERS: [(&str, &str); 10] = [
    ("time_embedding.linear_1.weight", "time_embed.0.weight"),
    ("time_embedding.linear_1.bias", "time_embed.0.bias"),
    ("time_embedding.linear_2.weight", "time_embed.2.weight"),
    ("time_embedding.linear_2.bias", "time_embed.2.bias"),
    ("conv_in.weight", "input_blocks.0.0.weight"),
    ("conv_in.bias", "input_blocks.0.0.bias"),
    ("conv_norm_out.weight", "out.0.weight"),
    ("conv_norm_out.bias", "out.0.bias"),
    ("conv_out.weight", "out.2.weight"),
    ("conv_out.bias", "out.2.bias"),
];

/// The label embedding: SDXL's `add_embedding` (and class embeddings, with the same LDM names).
const LABEL_EMB: [(&str, &str); 4] = [
    ("linear_1.weight", "label_emb.0.0.weight"),
    ("linear_1.bias", "label_emb.0.0.bias"),
    ("linear_2.weight", "label_emb.0.2.weight"),
    ("linear_2.bias", "label_emb.0.2.bias"),
];

/// Resnet sub-module renames, LDM → diffusers, applied in order to the whole name.
const RESNET: [(&str, &str); 6] = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
];

fn resnet_name(ldm: &str) -> String {
    RESNET
        .iter()
        .fold(ldm.to_string(), |name, (old, new)| name.replace(old, new))
}

/// The number of distinct `<part>.N` prefixes among names containing `part`, as diffusers counts blocks.
fn count_blocks(names: &BTreeSet<String>, part: &str) -> usize {
    names
        .iter()
        .filter(|name| name.contains(part))
        .map(|name| name.split('.').take(2).collect::<Vec<_>>().join("."))
        .collect::<BTreeSet<_>>()
        .len()
}

/// Collects diffusers name → LDM name (without the prefix).
struct Renames<'a> {
    names: &'a BTreeSet<String>,
    map: BTreeMap<String, String>,
}

impl Renames<'_> {
    fn insert(&mut self, diffusers: String, ldm: &str) {
        self.map.insert(diffusers, ldm.to_string());
    }

    fn insert_if_present(&mut self, diffusers: String, ldm: &str) {
        if self.names.contains(ldm) {
            self.insert(diffusers, ldm);
        }
    }

    /// Every name containing `within` and not `except`, renamed `old` → `new` (after the resnet renames
    /// when `resnet`).
    fn block(&mut self, within: &str, except: Option<&str>, old: &str, new: &str, resnet: bool) {
        let names: Vec<&String> = self
            .names
            .iter()
            .filter(|n| n.contains(within) && except.is_none_or(|e| !n.contains(e)))
            .collect();
        for ldm in names {
            let renamed = if resnet {
                resnet_name(ldm)
            } else {
                ldm.clone()
            };
            self.insert(renamed.replace(old, new), ldm);
        }
    }

    /// A sampler convolution (`weight` and `bias`) when its weight exists.
    fn conv(&mut self, diffusers: &str, ldm: &str) {
        if self.names.contains(&format!("{ldm}.weight")) {
            for part in ["weight", "bias"] {
                self.insert(format!("{diffusers}.{part}"), &format!("{ldm}.{part}"));
            }
        }
    }
}

/// The key map of the UNet stored under `model.diffusion_model.` in `header`, for `config` (diffusers'
/// conversion needs one `layers_per_block` for every block). Errors are messages for the caller to attribute.
pub fn unet_keys(
    header: &Header,
    config: &UNet2DConditionConfig,
) -> std::result::Result<KeyMap, String> {
    let per_block = match &config.layers_per_block {
        PerBlock::One(n) => n + 1,
        PerBlock::Each(list) => {
            return Err(format!(
                "`layers_per_block` is {list:?}; converting a single-file UNet needs one number"
            ))
        }
    };
    let names: BTreeSet<String> = header
        .keys()
        .filter_map(|k| k.strip_prefix(UNET_PREFIX))
        .map(String::from)
        .collect();
    if names.is_empty() {
        return Err(format!(
            "the checkpoint has no UNet (no tensor under `{UNET_PREFIX}`)"
        ));
    }
    let mut r = Renames {
        names: &names,
        map: BTreeMap::new(),
    };
    for (diffusers, ldm) in LAYERS {
        r.insert_if_present(diffusers.into(), ldm);
    }
    let class_embedding = config
        .class_embed_type
        .as_deref()
        .is_some_and(|t| t == "timestep" || t == "projection");
    let add_embedding = config.addition_embed_type.as_deref() == Some("text_time");
    for (module, wanted) in [
        ("class_embedding", class_embedding),
        ("add_embedding", add_embedding),
    ] {
        if wanted {
            for (diffusers, ldm) in LABEL_EMB {
                r.insert(format!("{module}.{diffusers}"), ldm);
            }
        }
    }
    if config.num_class_embeds.is_some() {
        r.insert_if_present("class_embedding.weight".into(), "label_emb.weight");
    }

    for i in 1..count_blocks(&names, "input_blocks") {
        let (block, layer) = ((i - 1) / per_block, (i - 1) % per_block);
        let at = format!("input_blocks.{i}");
        r.block(
            &format!("{at}.0"),
            Some(&format!("{at}.0.op")),
            &format!("{at}.0"),
            &format!("down_blocks.{block}.resnets.{layer}"),
            true,
        );
        r.conv(
            &format!("down_blocks.{block}.downsamplers.0.conv"),
            &format!("{at}.0.op"),
        );
        r.block(
            &format!("{at}.1"),
            None,
            &format!("{at}.1"),
            &format!("down_blocks.{block}.attentions.{layer}"),
            false,
        );
    }

    for i in 0..count_blocks(&names, "middle_block") {
        let at = format!("middle_block.{i}");
        let index = i.saturating_sub(1);
        if i % 2 == 0 {
            r.block(&at, None, &at, &format!("mid_block.resnets.{index}"), true);
        } else {
            r.block(
                &at,
                None,
                &at,
                &format!("mid_block.attentions.{index}"),
                false,
            );
        }
    }

    for i in 0..count_blocks(&names, "output_blocks") {
        let (block, layer) = (i / per_block, i % per_block);
        let at = format!("output_blocks.{i}");
        r.block(
            &format!("{at}.0"),
            Some(&format!("{at}.0.op")),
            &format!("{at}.0"),
            &format!("up_blocks.{block}.resnets.{layer}"),
            true,
        );
        r.block(
            &format!("{at}.1"),
            Some(&format!("{at}.1.conv")),
            &format!("{at}.1"),
            &format!("up_blocks.{block}.attentions.{layer}"),
            false,
        );
        let upsampler = format!("up_blocks.{block}.upsamplers.0.conv");
        r.conv(&upsampler, &format!("{at}.1.conv"));
        r.conv(&upsampler, &format!("{at}.2.conv"));
    }

    Ok(r.map
        .into_iter()
        .map(|(diffusers, ldm)| (diffusers, StoredKey::renamed(format!("{UNET_PREFIX}{ldm}"))))
        .collect())
}
