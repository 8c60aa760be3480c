//! `vae/config.json`: diffusers' `AutoencoderKL` config.

use serde::Deserialize;

use crate::models::config_values::PerBlock;

/// The `AutoencoderKL` configuration as diffusers writes it; unknown keys are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct AutoencoderKLConfig {
    /// Image channels in (3).
    #[serde(default = "default_three")]
    pub in_channels: usize,
    /// Image channels out (3).
    #[serde(default = "default_three")]
    pub out_channels: usize,
    /// Encoder block classes (all `DownEncoderBlock2D`).
    #[serde(default = "default_down")]
    pub down_block_types: Vec<String>,
    /// Decoder block classes (all `UpDecoderBlock2D`).
    #[serde(default = "default_up")]
    pub up_block_types: Vec<String>,
    /// Channels of each level; the image is downscaled `2^(levels - 1)` times per side.
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block (decoder blocks have one more).
    #[serde(default = "default_one")]
    pub layers_per_block: usize,
    /// Activation of the resnets.
    #[serde(default = "default_act_fn")]
    pub act_fn: String,
    /// Latent channels (4).
    #[serde(default = "default_latent_channels")]
    pub latent_channels: usize,
    /// GroupNorm groups.
    #[serde(default = "default_norm_num_groups")]
    pub norm_num_groups: usize,
    /// Image size the VAE was trained at: an int or `[height, width]`.
    #[serde(default)]
    pub sample_size: Option<PerBlock<usize>>,
    /// Latents are multiplied by this after encoding and divided by it before decoding.
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
    /// Subtracted before scaling on encode and added back on decode, where present (SD3/Flux-style VAEs).
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Per-channel latent means, where present (e.g. Playground v2.5): latents are normalized with them.
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    /// Per-channel latent standard deviations, used with `latents_mean`.
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
    /// Run the VAE in f32 when the pipeline runs in f16 (fp16 overflows in the decoder).
    #[serde(default = "default_true")]
    pub force_upcast: bool,
    /// Whether `quant_conv` exists.
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    /// Whether `post_quant_conv` exists.
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    /// Whether the mid blocks have self-attention.
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
}

impl AutoencoderKLConfig {
    /// How many image pixels one latent pixel covers per side: `2^(levels - 1)`.
    pub fn scale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }
}

fn default_three() -> usize {
    3
}
fn default_one() -> usize {
    1
}
fn default_true() -> bool {
    true
}
fn default_down() -> Vec<String> {
    vec!["DownEncoderBlock2D".into()]
}
fn default_up() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}
fn default_block_out_channels() -> Vec<usize> {
    vec![64]
}
fn default_act_fn() -> String {
    "silu".into()
}
fn default_latent_channels() -> usize {
    4
}
fn default_norm_num_groups() -> usize {
    32
}
fn default_scaling_factor() -> f64 {
    0.18215
}
