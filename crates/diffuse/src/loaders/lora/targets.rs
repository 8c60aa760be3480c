//! Which layer of a loaded model a LoRA module names: diffusers' module paths, kohya's flattened ones
//! (`_` for `.`), and for the UNet the SGM spelling kohya uses for SDXL (`input_blocks_4_1_…`).

use std::collections::HashMap;

use super::keys::{Component, ModuleName};

/// The layers of one loaded model, by every name a LoRA file may give them.
pub(crate) struct Targets {
    dotted: HashMap<String, String>,
    flat: HashMap<String, String>,
    layers_per_block: Option<usize>,
}

impl Targets {
    /// The layers among `tensor_names` (those with a `.weight`) of `component`. `layers_per_block` (the
    /// UNet's, one number for all blocks) enables SGM names.
    pub(crate) fn new<'a>(
        component: Component,
        tensor_names: impl Iterator<Item = &'a String>,
        layers_per_block: Option<usize>,
    ) -> Self {
        let mut dotted = HashMap::new();
        let mut flat = HashMap::new();
        for name in tensor_names {
            let Some(module) = name.strip_suffix(".weight") else {
                continue;
            };
            // transformers 5 saves CLIP text models without the `text_model.` prefix LoRA files use.
            let canonical = if component != Component::Unet
                && !module.starts_with("text_model.")
                && module != "text_projection"
            {
                format!("text_model.{module}")
            } else {
                module.to_string()
            };
            flat.insert(module.replace('.', "_"), module.to_string());
            flat.insert(canonical.replace('.', "_"), module.to_string());
            dotted.insert(module.to_string(), module.to_string());
            dotted.insert(canonical, module.to_string());
        }
        Self {
            dotted,
            flat,
            layers_per_block,
        }
    }

    /// The model's module path for `name`, if the model has that layer.
    pub(crate) fn resolve(&self, name: &ModuleName) -> Option<&str> {
        match name {
            ModuleName::Dotted(path) => self
                .dotted
                .get(path)
                .or_else(|| self.dotted.get(&format!("text_model.{path}"))),
            ModuleName::Flat(flat) => self.flat.get(flat).or_else(|| {
                let lpb = self.layers_per_block?;
                self.flat.get(&sgm_to_diffusers(flat, lpb)?)
            }),
        }
        .map(String::as_str)
    }
}

/// A flattened SGM UNet module name in diffusers' flattened spelling, for UNets with `layers_per_block`
/// resnets per down block (and one more per up block).
fn sgm_to_diffusers(flat: &str, layers_per_block: usize) -> Option<String> {
    for (sgm, diffusers) in [
        ("time_embed_0", "time_embedding_linear_1"),
        ("time_embed_2", "time_embedding_linear_2"),
        ("label_emb_0_0", "add_embedding_linear_1"),
        ("label_emb_0_2", "add_embedding_linear_2"),
        ("input_blocks_0_0", "conv_in"),
        ("out_0", "conv_norm_out"),
        ("out_2", "conv_out"),
    ] {
        if flat == sgm {
            return Some(diffusers.to_string());
        }
    }
    let numbers = |rest: &str| -> Option<(usize, usize, String)> {
        let mut parts = rest.splitn(3, '_');
        let i = parts.next()?.parse().ok()?;
        let j = parts.next()?.parse().ok()?;
        Some((i, j, parts.next().unwrap_or("").to_string()))
    };
    if let Some(rest) = flat.strip_prefix("input_blocks_") {
        let (i, j, inner) = numbers(rest)?;
        let block = i.checked_sub(1)? / (layers_per_block + 1);
        let layer = (i - 1) % (layers_per_block + 1);
        return Some(if inner == "op" {
            format!("down_blocks_{block}_downsamplers_0_conv")
        } else if j == 0 {
            format!(
                "down_blocks_{block}_resnets_{layer}_{}",
                resnet_part(&inner)?
            )
        } else {
            format!("down_blocks_{block}_attentions_{layer}_{inner}")
        });
    }
    if let Some(rest) = flat.strip_prefix("middle_block_") {
        let (i, inner) = rest.split_once('_')?;
        return Some(match i {
            "0" => format!("mid_block_resnets_0_{}", resnet_part(inner)?),
            "1" => format!("mid_block_attentions_0_{inner}"),
            "2" => format!("mid_block_resnets_1_{}", resnet_part(inner)?),
            _ => return None,
        });
    }
    if let Some(rest) = flat.strip_prefix("output_blocks_") {
        let (i, j, inner) = numbers(rest)?;
        let block = i / (layers_per_block + 1);
        let layer = i % (layers_per_block + 1);
        return Some(if j == 0 {
            format!("up_blocks_{block}_resnets_{layer}_{}", resnet_part(&inner)?)
        } else if inner == "conv" {
            format!("up_blocks_{block}_upsamplers_0_conv")
        } else {
            format!("up_blocks_{block}_attentions_{layer}_{inner}")
        });
    }
    None
}

/// A resnet's layer in diffusers' spelling, from SGM's.
fn resnet_part(sgm: &str) -> Option<&'static str> {
    Some(match sgm {
        "in_layers_0" => "norm1",
        "in_layers_2" => "conv1",
        "emb_layers_1" => "time_emb_proj",
        "out_layers_0" => "norm2",
        "out_layers_3" => "conv2",
        "skip_connection" => "conv_shortcut",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgm_names_map_to_sdxl_modules() {
        for (sgm, diffusers) in [
            (
                "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
            ),
            ("input_blocks_3_0_op", "down_blocks_0_downsamplers_0_conv"),
            (
                "input_blocks_2_0_in_layers_2",
                "down_blocks_0_resnets_1_conv1",
            ),
            ("middle_block_1_proj_out", "mid_block_attentions_0_proj_out"),
            (
                "middle_block_2_skip_connection",
                "mid_block_resnets_1_conv_shortcut",
            ),
            ("output_blocks_5_2_conv", "up_blocks_1_upsamplers_0_conv"),
            ("output_blocks_2_1_conv", "up_blocks_0_upsamplers_0_conv"),
            (
                "output_blocks_4_1_proj_in",
                "up_blocks_1_attentions_1_proj_in",
            ),
            (
                "output_blocks_8_0_emb_layers_1",
                "up_blocks_2_resnets_2_time_emb_proj",
            ),
            ("label_emb_0_2", "add_embedding_linear_2"),
        ] {
            assert_eq!(
                sgm_to_diffusers(sgm, 2).as_deref(),
                Some(diffusers),
                "{sgm}"
            );
        }
        assert_eq!(sgm_to_diffusers("down_blocks_0_resnets_0_conv1", 2), None);
    }

    #[test]
    fn text_names_resolve_with_or_without_the_prefix() {
        let names = [
            "encoder.layers.0.self_attn.q_proj.weight".to_string(),
            "encoder.layers.0.self_attn.q_proj.bias".to_string(),
        ];
        let targets = Targets::new(Component::TextEncoder, names.iter(), None);
        assert_eq!(
            targets.resolve(&ModuleName::Flat(
                "text_model_encoder_layers_0_self_attn_q_proj".into()
            )),
            Some("encoder.layers.0.self_attn.q_proj")
        );
        assert_eq!(
            targets.resolve(&ModuleName::Dotted(
                "text_model.encoder.layers.0.self_attn.q_proj".into()
            )),
            Some("encoder.layers.0.self_attn.q_proj")
        );
        assert_eq!(
            targets.resolve(&ModuleName::Flat(
                "text_model_encoder_layers_1_self_attn_q_proj".into()
            )),
            None
        );
    }
}
