//! `text_encoder/config.json`: transformers' `CLIPTextConfig`.

use serde::Deserialize;

/// The fields of a CLIP text encoder's `config.json` that shape the network; unknown keys are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    /// Token vocabulary size.
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    /// Width of the residual stream.
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    /// Width of the MLP.
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    /// Output width of `text_projection` (CLIPTextModelWithProjection).
    #[serde(default)]
    pub projection_dim: Option<usize>,
    /// Number of transformer layers.
    #[serde(default = "default_num_hidden_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    #[serde(default = "default_num_attention_heads")]
    pub num_attention_heads: usize,
    /// Length of the position embedding (the token limit, 77).
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// The MLP activation: `quick_gelu` (OpenAI CLIP, SD 1.x) or `gelu` (OpenCLIP, SD 2.x / SDXL).
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Epsilon of every layer norm.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// The end-of-text id; the legacy value 2 makes the pooled output pick the position of the largest id.
    #[serde(default = "default_eos_token_id")]
    pub eos_token_id: i64,
    /// The model classes this checkpoint was saved as (`CLIPTextModel`, `CLIPTextModelWithProjection`).
    #[serde(default)]
    pub architectures: Vec<String>,
}

fn default_vocab_size() -> usize {
    49408
}
fn default_hidden_size() -> usize {
    512
}
fn default_intermediate_size() -> usize {
    2048
}
fn default_num_hidden_layers() -> usize {
    12
}
fn default_num_attention_heads() -> usize {
    8
}
fn default_max_position_embeddings() -> usize {
    77
}
fn default_hidden_act() -> String {
    "quick_gelu".into()
}
fn default_layer_norm_eps() -> f64 {
    1e-5
}
fn default_eos_token_id() -> i64 {
    49407
}
