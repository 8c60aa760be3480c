//! The VAE's key map: LDM `first_stage_model.` (or `vae.`) names to diffusers' `AutoencoderKL` names, as
//! diffusers' `convert_ldm_vae_checkpoint` renames them; the mid-block attention's 1×1 convolution kernels are
//! reshaped to the linear weights diffusers uses.

use std::collections::{BTreeMap, BTreeSet};

use super::detect::Header;
use crate::loaders::weights::{KeyMap, StoredKey, Transform};
use crate::models::vae::AutoencoderKLConfig;

/// The VAE prefixes diffusers looks for; the last one present wins.
const VAE_PREFIXES: [&str; 2] = ["first_stage_model.", "vae."];

/// Fixed renames, diffusers name ← LDM name, taken when the LDM tensor exists.
const LAYERS: [(&str, &str); 16] = [
    ("encoder.conv_in.weight", "encoder.conv_in.weight"),
    ("encoder.conv_in.bias", "encoder.conv_in.bias"),
    ("encoder.conv_out.weight", "encoder.conv_out.weight"),
    ("encoder.conv_out.bias", "encoder.conv_out.bias"),
    ("encoder.conv_norm_out.weight", "encoder.norm_out.weight"),
    ("encoder.conv_norm_out.bias", "encoder.norm_out.bias"),
    ("decoder.conv_in.weight", "decoder.conv_in.weight"),
    ("decoder.conv_in.bias", "decoder.conv_in.bias"),
    ("decoder.conv_out.weight", "decoder.conv_out.weight"),
    ("decoder.conv_out.bias", "decoder.conv_out.bias"),
    ("decoder.conv_norm_out.weight", "decoder.norm_out.weight"),
    ("decoder.conv_norm_out.bias", "decoder.norm_out.bias"),
    ("quant_conv.weight", "quant_conv.weight"),
    ("quant_conv.bias", "quant_conv.bias"),
    ("post_quant_conv.weight", "post_quant_conv.weight"),
    ("post_quant_conv.bias", "post_quant_conv.bias"),
];

/// The mid-block attention's renames, LDM → diffusers, applied in order to the whole name.
const ATTENTION: [(&str, &str); 10] = [
    ("norm.weight", "group_norm.weight"),
    ("norm.bias", "group_norm.bias"),
    ("q.weight", "to_q.weight"),
    ("q.bias", "to_q.bias"),
    ("k.weight", "to_k.weight"),
    ("k.bias", "to_k.bias"),
    ("v.weight", "to_v.weight"),
    ("v.bias", "to_v.bias"),
    ("proj_out.weight", "to_out.0.weight"),
    ("proj_out.bias", "to_out.0.bias"),
];

/// Collects diffusers name → (LDM name without the prefix, transform).
struct Renames<'a> {
    names: &'a BTreeSet<String>,
    map: BTreeMap<String, (String, Transform)>,
}

impl Renames<'_> {
    fn insert(&mut self, diffusers: String, ldm: &str, transform: Transform) {
        self.map.insert(diffusers, (ldm.to_string(), transform));
    }

    /// Resnets: every name containing `within` and not `except`, renamed `old` → `new` and
    /// `nin_shortcut` → `conv_shortcut`.
    fn resnets(&mut self, within: &str, except: Option<&str>, old: &str, new: &str) {
        let names: Vec<&String> = self
            .names
            .iter()
            .filter(|n| n.contains(within) && except.is_none_or(|e| !n.contains(e)))
            .collect();
        for ldm in names {
            let renamed = ldm
                .replace(old, new)
                .replace("nin_shortcut", "conv_shortcut");
            self.insert(renamed, ldm, Transform::None);
        }
    }

    /// The mid-block attention of `part` (`encoder` or `decoder`).
    fn attention(&mut self, part: &str) {
        let within = format!("{part}.mid.attn");
        let names: Vec<&String> = self.names.iter().filter(|n| n.contains(&within)).collect();
        for ldm in names {
            let renamed = ATTENTION.iter().fold(
                ldm.replace("mid.attn_1", "mid_block.attentions.0"),
                |name, (old, new)| name.replace(old, new),
            );
            // diffusers drops the trailing 1×1 dimensions of every 3-D or 4-D tensor here.
            self.insert(renamed, ldm, Transform::Reshape);
        }
    }

    /// A sampler convolution (`weight` and `bias`) when its weight exists.
    fn conv(&mut self, diffusers: &str, ldm: &str) {
        if self.names.contains(&format!("{ldm}.weight")) {
            for part in ["weight", "bias"] {
                let ldm = format!("{ldm}.{part}");
                self.insert(format!("{diffusers}.{part}"), &ldm, Transform::None);
            }
        }
    }

    fn mid_resnets(&mut self, part: &str) {
        for i in 1..=2 {
            self.resnets(
                &format!("{part}.mid.block_{i}"),
                None,
                &format!("mid.block_{i}"),
                &format!("mid_block.resnets.{}", i - 1),
            );
        }
    }
}

/// The key map of the VAE in `header` for `config`. Errors are messages for the caller to attribute.
pub fn vae_keys(
    header: &Header,
    config: &AutoencoderKLConfig,
) -> std::result::Result<KeyMap, String> {
    let prefix = VAE_PREFIXES
        .iter()
        .rev()
        .find(|p| header.keys().any(|k| k.starts_with(*p)))
        .ok_or_else(|| {
            format!(
                "the checkpoint has no VAE (no tensor under `{}`)",
                VAE_PREFIXES.join("` or `")
            )
        })?;
    let names: BTreeSet<String> = header
        .keys()
        .filter_map(|k| k.strip_prefix(prefix))
        .map(String::from)
        .collect();
    let mut r = Renames {
        names: &names,
        map: BTreeMap::new(),
    };
    for (diffusers, ldm) in LAYERS {
        if names.contains(ldm) {
            r.insert(diffusers.into(), ldm, Transform::None);
        }
    }

    for i in 0..config.down_block_types.len() {
        r.resnets(
            &format!("down.{i}"),
            Some(&format!("down.{i}.downsample")),
            &format!("down.{i}.block"),
            &format!("down_blocks.{i}.resnets"),
        );
        r.conv(
            &format!("encoder.down_blocks.{i}.downsamplers.0.conv"),
            &format!("encoder.down.{i}.downsample.conv"),
        );
    }
    r.mid_resnets("encoder");
    r.attention("encoder");

    let blocks = config.up_block_types.len();
    for i in 0..blocks {
        let ldm = blocks - 1 - i;
        r.resnets(
            &format!("up.{ldm}"),
            Some(&format!("up.{ldm}.upsample")),
            &format!("up.{ldm}.block"),
            &format!("up_blocks.{i}.resnets"),
        );
        r.conv(
            &format!("decoder.up_blocks.{i}.upsamplers.0.conv"),
            &format!("decoder.up.{ldm}.upsample.conv"),
        );
    }
    r.mid_resnets("decoder");
    r.attention("decoder");

    Ok(r.map
        .into_iter()
        .map(|(diffusers, (ldm, transform))| {
            (
                diffusers,
                StoredKey::with(format!("{prefix}{ldm}"), transform),
            )
        })
        .collect())
}
