//! `unet/config.json`: the fields of diffusers' `UNet2DConditionModel` config.

use serde::Deserialize;

use crate::models::config_values::PerBlock;

/// The `UNet2DConditionModel` configuration as diffusers writes it; unknown keys are ignored, and values that
/// change the math but are not supported are rejected by [`super::UNet2DConditionModel::new`].
#[derive(Debug, Clone, Deserialize)]
pub struct UNet2DConditionConfig {
    /// Latent height and width the model was trained at: an int, or `[height, width]`.
    #[serde(default)]
    pub sample_size: Option<PerBlock<usize>>,
    /// 4, or 9 for inpainting UNets (latents, mask, masked-image latents).
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    /// Output channels (4).
    #[serde(default = "default_in_channels")]
    pub out_channels: usize,
    /// Map the input from [0, 1] to [-1, 1] first.
    #[serde(default)]
    pub center_input_sample: bool,
    /// cos before sin in the timestep embedding.
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    /// The `downscale_freq_shift` of the timestep embedding.
    #[serde(default)]
    pub freq_shift: f64,
    /// Down block classes, from the highest resolution.
    #[serde(default = "default_down_block_types")]
    pub down_block_types: Vec<String>,
    /// The mid block class, or null for none.
    #[serde(default = "default_mid_block_type")]
    pub mid_block_type: Option<String>,
    /// Up block classes, from the lowest resolution.
    #[serde(default = "default_up_block_types")]
    pub up_block_types: Vec<String>,
    /// Whether each block's first attention attends to the text instead of the image.
    #[serde(default = "default_false_per_block")]
    pub only_cross_attention: PerBlock<bool>,
    /// Channels of each level.
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (up blocks have one more).
    #[serde(default = "default_layers_per_block")]
    pub layers_per_block: PerBlock<usize>,
    /// Padding of the downsampling convolutions.
    #[serde(default = "default_one")]
    pub downsample_padding: usize,
    /// Output scale of the mid block's resnets.
    #[serde(default = "default_one_f64")]
    pub mid_block_scale_factor: f64,
    /// Activation of resnets and the time embedding.
    #[serde(default = "default_act_fn")]
    pub act_fn: String,
    /// GroupNorm groups (null: no output norm, unsupported).
    #[serde(default = "default_norm_num_groups")]
    pub norm_num_groups: Option<usize>,
    /// GroupNorm epsilon.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Width of the text embeddings.
    #[serde(default = "default_cross_attention_dim")]
    pub cross_attention_dim: PerBlock<usize>,
    /// Transformer layers per attention (SDXL: `[1, 2, 10]`).
    #[serde(default = "default_one_per_block")]
    pub transformer_layers_per_block: PerBlock<usize>,
    /// Asymmetric up-path transformer depths (unsupported when set).
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    /// Projection of `encoder_hidden_states` (unsupported when set).
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    /// Despite its name, the number of attention heads of each block (diffusers' naming quirk).
    #[serde(default = "default_attention_head_dim")]
    pub attention_head_dim: PerBlock<usize>,
    /// Rejected by diffusers itself; see `attention_head_dim`.
    #[serde(default)]
    pub num_attention_heads: Option<serde_json::Value>,
    /// Two cross-attentions per block (unsupported when true).
    #[serde(default)]
    pub dual_cross_attention: bool,
    /// Linear projections in and out of the transformers (SD 2.x, SDXL).
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Class conditioning (unsupported when set).
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Extra conditioning: null, or SDXL's `text_time`.
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Width of each of SDXL's `time_ids` embeddings.
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// Class count for class conditioning (unsupported when set).
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    /// Compute attention in f32 (`null`, as SDXL base's config has it, means false, as in diffusers).
    #[serde(default, deserialize_with = "false_if_null")]
    pub upcast_attention: bool,
    /// `default`, the only supported resnet time conditioning.
    #[serde(default = "default_resnet_time_scale_shift")]
    pub resnet_time_scale_shift: String,
    /// Output scale of the down/up resnets.
    #[serde(default = "default_one_f64")]
    pub resnet_out_scale_factor: f64,
    /// `positional`, the only supported timestep embedding.
    #[serde(default = "default_time_embedding_type")]
    pub time_embedding_type: String,
    /// Width of the time embedding (default: 4 × the first block's channels).
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    /// Activation applied once to the summed embedding.
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    /// Activation after the time embedding MLP.
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    /// Width of LCM's guidance-scale embedding (`timestep_cond`).
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    /// Kernel size of `conv_in`.
    #[serde(default = "default_kernel")]
    pub conv_in_kernel: usize,
    /// Kernel size of `conv_out`.
    #[serde(default = "default_kernel")]
    pub conv_out_kernel: usize,
    /// Input width of SDXL's `add_embedding` (pooled text embedding plus time ids).
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// `default`, the only supported attention type (GLIGEN's gated types are not).
    #[serde(default = "default_attention_type")]
    pub attention_type: String,
    /// Concatenate class and time embeddings (unsupported when true).
    #[serde(default)]
    pub class_embeddings_concat: bool,
    /// Normalization of the cross-attention context (unsupported when set).
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
}

impl UNet2DConditionConfig {
    /// The `sample_size` as (height, width) in latent pixels, if the config has one.
    pub fn sample_size_hw(&self) -> Option<(usize, usize)> {
        match &self.sample_size {
            Some(PerBlock::One(s)) => Some((*s, *s)),
            Some(PerBlock::Each(v)) if v.len() == 2 => Some((v[0], v[1])),
            _ => None,
        }
    }
}

fn false_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}
fn default_in_channels() -> usize {
    4
}
fn default_true() -> bool {
    true
}
fn default_one() -> usize {
    1
}
fn default_one_f64() -> f64 {
    1.0
}
fn default_kernel() -> usize {
    3
}
fn default_down_block_types() -> Vec<String> {
    [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn default_mid_block_type() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn default_up_block_types() -> Vec<String> {
    [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn default_false_per_block() -> PerBlock<bool> {
    PerBlock::One(false)
}
fn default_block_out_channels() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn default_layers_per_block() -> PerBlock<usize> {
    PerBlock::One(2)
}
fn default_act_fn() -> String {
    "silu".into()
}
fn default_norm_num_groups() -> Option<usize> {
    Some(32)
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_cross_attention_dim() -> PerBlock<usize> {
    PerBlock::One(1280)
}
fn default_one_per_block() -> PerBlock<usize> {
    PerBlock::One(1)
}
fn default_attention_head_dim() -> PerBlock<usize> {
    PerBlock::One(8)
}
fn default_resnet_time_scale_shift() -> String {
    "default".into()
}
fn default_time_embedding_type() -> String {
    "positional".into()
}
fn default_attention_type() -> String {
    "default".into()
}
