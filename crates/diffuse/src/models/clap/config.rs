//! `text_encoder/config.json` of AudioLDM: transformers' `ClapTextConfig`.

use serde::Deserialize;

/// The fields of a CLAP text encoder's `config.json` that shape the network; unknown keys are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct ClapTextConfig {
    /// Token vocabulary size.
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    /// Width of the residual stream.
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    /// Number of transformer layers.
    #[serde(default = "default_num_hidden_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    #[serde(default = "default_num_attention_heads")]
    pub num_attention_heads: usize,
    /// Width of the MLP.
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    /// The MLP activation (`gelu`: the exact, erf-based GELU).
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Rows of the position embedding (RoBERTa's 514: 512 positions after the padding offset).
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Rows of the token-type embedding (1).
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    /// Epsilon of every layer norm.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Output width of the projection (the embedding AudioLDM's UNet takes as its class label).
    #[serde(default = "default_projection_dim")]
    pub projection_dim: usize,
    /// The activation between the projection's two linear layers.
    #[serde(default = "default_projection_hidden_act")]
    pub projection_hidden_act: String,
    /// The padding id; positions count from `pad_token_id + 1`, as in RoBERTa.
    #[serde(default = "default_pad_token_id")]
    pub pad_token_id: u32,
    /// `absolute`, the only position embedding CLAP's text tower uses.
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
}

fn default_vocab_size() -> usize {
    50265
}
fn default_hidden_size() -> usize {
    768
}
fn default_num_hidden_layers() -> usize {
    12
}
fn default_num_attention_heads() -> usize {
    12
}
fn default_intermediate_size() -> usize {
    3072
}
fn default_hidden_act() -> String {
    "gelu".into()
}
fn default_max_position_embeddings() -> usize {
    514
}
fn default_type_vocab_size() -> usize {
    1
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_projection_dim() -> usize {
    512
}
fn default_projection_hidden_act() -> String {
    "relu".into()
}
fn default_pad_token_id() -> u32 {
    1
}
fn default_position_embedding_type() -> String {
    "absolute".into()
}
