//! The configurations of the three trained networks, as the JSON diffusers and transformers write them, and
//! the small "tiny" design trained from scratch (the bundled model's).

use serde_json::{json, Value};

use diffuse::models::clip::config::ClipTextConfig;
use diffuse::models::clip::tokenizer::ClipTokenizer;
use diffuse::models::unet::UNet2DConditionConfig;
use diffuse::models::vae::AutoencoderKLConfig;
use diffuse::{Error, Result};

/// The diffusers version whose file layout the exported folders follow.
pub const DIFFUSERS_VERSION: &str = "0.42.1";
/// The transformers version whose `config.json` layout the exported text encoder follows.
pub const TRANSFORMERS_VERSION: &str = "5.24.0";

/// Latent channels of the tiny design, SD's 4. The design's VAE (`block_out_channels` [32, 64]) downsamples 2×:
/// 32×32 shapes through 16×16×4 latents come back with the right shape in 84 of 100 images (the judge of
/// `crates/diffuse-train/tests/train/bundled.rs`), against 64 through the 8×8×4 latents of the earlier 4× VAE ([32, 64, 64]), which capped
/// any UNet below the 60 %. With that VAE, 8 channels lost the position binding in the one full run
/// (held-out position 9 of 50 against 21).
pub const LATENT_CHANNELS: usize = 4;

/// The configs of a pipeline's UNet, VAE and text encoder, kept as the JSON objects written to the folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Architecture {
    /// `unet/config.json`.
    pub unet: Value,
    /// `vae/config.json`.
    pub vae: Value,
    /// `text_encoder/config.json`.
    pub text_encoder: Value,
}

fn parse<T: serde::de::DeserializeOwned>(value: &Value, file: &str) -> Result<T> {
    serde_json::from_value(value.clone()).map_err(|e| Error::Json {
        path: file.into(),
        message: e.to_string(),
    })
}

impl Architecture {
    /// The tiny text-to-image design for `resolution`×`resolution` images: a VAE that downsamples 2× into
    /// [`LATENT_CHANNELS`] latent channels, a three-level UNet (32, 64 and 128 channels) with cross-attention at
    /// the two lower levels and none at full latent resolution, and a two-layer CLIP text encoder of width 64 over
    /// `tokenizer`'s vocabulary and length.
    pub fn tiny(resolution: usize, tokenizer: &ClipTokenizer) -> Result<Self> {
        if resolution == 0 || !resolution.is_multiple_of(16) {
            return Err(Error::invalid(
                "resolution",
                format!("{resolution}: the tiny design needs a positive multiple of 16"),
            ));
        }
        let text_width = 64;
        let mut unet = json!({
            "_class_name": "UNet2DConditionModel",
            "_diffusers_version": DIFFUSERS_VERSION,
            "act_fn": "silu",
            "addition_embed_type": null,
            "addition_embed_type_num_heads": 64,
            "addition_time_embed_dim": null,
            "attention_head_dim": 4,
            "attention_type": "default",
            "block_out_channels": [32, 64, 128],
            "center_input_sample": false,
            "class_embed_type": null,
            "class_embeddings_concat": false,
            "conv_in_kernel": 3,
            "conv_out_kernel": 3,
            "cross_attention_dim": text_width,
            "cross_attention_norm": null,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "downsample_padding": 1,
            "dropout": 0.0,
            "dual_cross_attention": false,
        });
        let rest = json!({
            "encoder_hid_dim": null,
            "encoder_hid_dim_type": null,
            "flip_sin_to_cos": true,
            "freq_shift": 0,
            "in_channels": LATENT_CHANNELS,
            "layers_per_block": 1,
            "mid_block_only_cross_attention": null,
            "mid_block_scale_factor": 1,
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "norm_eps": 1e-05,
            "norm_num_groups": 16,
            "num_attention_heads": null,
            "num_class_embeds": null,
            "only_cross_attention": false,
            "out_channels": LATENT_CHANNELS,
            "projection_class_embeddings_input_dim": null,
            "resnet_out_scale_factor": 1.0,
            "resnet_skip_time_act": false,
            "resnet_time_scale_shift": "default",
            "reverse_transformer_layers_per_block": null,
            "sample_size": resolution / 2,
            "time_cond_proj_dim": null,
            "time_embedding_act_fn": null,
            "time_embedding_dim": null,
            "time_embedding_type": "positional",
            "timestep_post_act": null,
            "transformer_layers_per_block": 1,
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "upcast_attention": false,
            "use_linear_projection": false
        });
        if let (Some(first), Value::Object(second)) = (unet.as_object_mut(), rest) {
            first.extend(second);
        }
        let vae = json!({
            "_class_name": "AutoencoderKL",
            "_diffusers_version": DIFFUSERS_VERSION,
            "act_fn": "silu",
            "block_out_channels": [32, 64],
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
            "force_upcast": true,
            "in_channels": 3,
            "latent_channels": LATENT_CHANNELS,
            "latents_mean": null,
            "latents_std": null,
            "layers_per_block": 1,
            "mid_block_add_attention": true,
            "norm_num_groups": 8,
            "out_channels": 3,
            "sample_size": resolution,
            "scaling_factor": 1.0,
            "shift_factor": null,
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
            "use_post_quant_conv": true,
            "use_quant_conv": true
        });
        let text_encoder = json!({
            "architectures": ["CLIPTextModel"],
            "attention_dropout": 0.0,
            "bos_token_id": tokenizer.bos_id(),
            "dtype": "float32",
            "eos_token_id": tokenizer.eos_id(),
            "hidden_act": "quick_gelu",
            "hidden_size": text_width,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": 4 * text_width,
            "layer_norm_eps": 1e-05,
            "max_position_embeddings": tokenizer.max_length(),
            "model_type": "clip_text_model",
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "pad_token_id": tokenizer.pad_id(),
            "projection_dim": text_width,
            "transformers_version": TRANSFORMERS_VERSION,
            "vocab_size": tokenizer.vocab_size()
        });
        Ok(Self {
            unet,
            vae,
            text_encoder,
        })
    }

    /// The parsed UNet config.
    pub fn unet_config(&self) -> Result<UNet2DConditionConfig> {
        parse(&self.unet, "unet/config.json")
    }

    /// The parsed VAE config.
    pub fn vae_config(&self) -> Result<AutoencoderKLConfig> {
        parse(&self.vae, "vae/config.json")
    }

    /// The parsed text encoder config.
    pub fn text_encoder_config(&self) -> Result<ClipTextConfig> {
        parse(&self.text_encoder, "text_encoder/config.json")
    }

    /// The first difference between `self` and `other`, as "component: key: this vs other", ignoring the VAE's
    /// `scaling_factor` (a training result, not a shape) and version stamps.
    pub fn difference(&self, other: &Architecture) -> Option<String> {
        let pairs = [
            ("unet", &self.unet, &other.unet),
            ("vae", &self.vae, &other.vae),
            ("text_encoder", &self.text_encoder, &other.text_encoder),
        ];
        let ignored = [
            "scaling_factor",
            "_diffusers_version",
            "transformers_version",
            "dtype",
        ];
        for (name, a, b) in pairs {
            let keys = |v: &Value| -> Vec<String> {
                v.as_object()
                    .map(|o| o.keys().cloned().collect())
                    .unwrap_or_default()
            };
            let mut all = keys(a);
            all.extend(keys(b));
            all.sort();
            all.dedup();
            for key in all.iter().filter(|k| !ignored.contains(&k.as_str())) {
                let (x, y) = (a.get(key), b.get(key));
                if x != y {
                    let show =
                        |v: Option<&Value>| v.map_or("(absent)".to_string(), Value::to_string);
                    return Some(format!("{name}: `{key}` is {} vs {}", show(x), show(y)));
                }
            }
        }
        None
    }
}
