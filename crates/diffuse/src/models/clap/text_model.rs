//! transformers' `ClapTextModelWithProjection`: RoBERTa embeddings, post-norm encoder layers, the BERT pooler
//! (first token, dense, tanh) and CLAP's two-layer projection. Weight names walk the checkpoint's keys.

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{embedding, Embedding, VarBuilder};

use super::config::ClapTextConfig;
use crate::kernels::linear::{linear, Linear};
use crate::kernels::residual;
use crate::models::activations::Activation;
use crate::models::attention::{merge_heads, scaled_dot_product_attention, split_heads};
use crate::models::layer_norm::{layer_norm, LayerNorm};
use crate::{Error, Result};

const FILE: &str = "text_encoder/config.json";

struct ClapTextLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    act: Activation,
    heads: usize,
}

impl ClapTextLayer {
    fn new(vb: VarBuilder, cfg: &ClapTextConfig, act: Activation) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        let attention = vb.pp("attention");
        Ok(Self {
            query: linear(h, h, attention.pp("self").pp("query"))?,
            key: linear(h, h, attention.pp("self").pp("key"))?,
            value: linear(h, h, attention.pp("self").pp("value"))?,
            attention_out: linear(h, h, attention.pp("output").pp("dense"))?,
            attention_norm: layer_norm(
                h,
                cfg.layer_norm_eps,
                attention.pp("output").pp("LayerNorm"),
            )?,
            intermediate: linear(h, cfg.intermediate_size, vb.pp("intermediate").pp("dense"))?,
            output: linear(cfg.intermediate_size, h, vb.pp("output").pp("dense"))?,
            output_norm: layer_norm(h, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            act,
            heads: cfg.num_attention_heads,
        })
    }

    /// Post-norm: `LayerNorm(x + attention(x))`, then `LayerNorm(h + mlp(h))`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let q = split_heads(&self.query.forward(x)?, self.heads)?;
        let k = split_heads(&self.key.forward(x)?, self.heads)?;
        let v = split_heads(&self.value.forward(x)?, self.heads)?;
        let head_dim = q.dim(3)?;
        let attended =
            scaled_dot_product_attention(&q, &k, &v, (head_dim as f64).powf(-0.5), None, false)?;
        let h = self.attention_norm.forward(&residual::add(
            &self.attention_out.forward(&merge_heads(&attended)?)?,
            x,
        )?)?;
        let mlp = self
            .output
            .forward(&self.act.forward(&self.intermediate.forward(&h)?)?)?;
        self.output_norm.forward(&residual::add(&mlp, &h)?)
    }
}

/// The CLAP text tower with its projection, as AudioLDM's `text_encoder` holds it.
pub struct ClapTextModel {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embedding: Tensor,
    embeddings_norm: LayerNorm,
    layers: Vec<ClapTextLayer>,
    pooler: Linear,
    projection_1: Linear,
    projection_act: Activation,
    projection_2: Linear,
    config: ClapTextConfig,
}

impl ClapTextModel {
    /// Builds the model from `vb` rooted at the checkpoint's top level (`text_model.*`, `text_projection.*`).
    pub fn new(vb: VarBuilder, cfg: &ClapTextConfig) -> Result<Self> {
        let act = Activation::parse(&cfg.hidden_act, FILE, "hidden_act")?;
        let projection_act =
            Activation::parse(&cfg.projection_hidden_act, FILE, "projection_hidden_act")?;
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(Error::unsupported(
                FILE,
                "num_attention_heads",
                cfg.num_attention_heads,
                format!("a divisor of hidden_size {}", cfg.hidden_size),
            ));
        }
        if cfg.position_embedding_type != "absolute" {
            return Err(Error::unsupported(
                FILE,
                "position_embedding_type",
                &cfg.position_embedding_type,
                "\"absolute\"",
            ));
        }
        if cfg.max_position_embeddings <= cfg.pad_token_id as usize + 1 || cfg.type_vocab_size == 0
        {
            return Err(Error::unsupported(
                FILE,
                "max_position_embeddings/type_vocab_size",
                format!("{}/{}", cfg.max_position_embeddings, cfg.type_vocab_size),
                format!(
                    "more than pad_token_id + 1 = {} positions, and a token type",
                    cfg.pad_token_id + 1
                ),
            ));
        }
        let h = cfg.hidden_size;
        let tm = vb.pp("text_model");
        let emb = tm.pp("embeddings");
        let token_types = embedding(cfg.type_vocab_size, h, emb.pp("token_type_embeddings"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| ClapTextLayer::new(tm.pp("encoder").pp("layer").pp(i), cfg, act))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let projection = vb.pp("text_projection");
        Ok(Self {
            word_embeddings: embedding(cfg.vocab_size, h, emb.pp("word_embeddings"))?,
            position_embeddings: embedding(
                cfg.max_position_embeddings,
                h,
                emb.pp("position_embeddings"),
            )?,
            // transformers' token types are all zero when not given, as the pipeline leaves them.
            token_type_embedding: token_types.embeddings().i(0)?,
            embeddings_norm: layer_norm(h, cfg.layer_norm_eps, emb.pp("LayerNorm"))?,
            layers,
            pooler: linear(h, h, tm.pp("pooler").pp("dense"))?,
            projection_1: linear(h, cfg.projection_dim, projection.pp("linear1"))?,
            projection_act,
            projection_2: linear(
                cfg.projection_dim,
                cfg.projection_dim,
                projection.pp("linear2"),
            )?,
            config: cfg.clone(),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &ClapTextConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.word_embeddings.embeddings().device()
    }

    /// The dtype the weights are held in.
    pub fn dtype(&self) -> DType {
        self.word_embeddings.embeddings().dtype()
    }

    /// The longest sequence the position embedding covers.
    pub fn max_tokens(&self) -> usize {
        self.config.max_position_embeddings - self.config.pad_token_id as usize - 1
    }

    /// `text_embeds` of one unpadded token sequence (`[tokens]` ids with `<s>` and `</s>`): `[1, projection_dim]`.
    /// Padding to the tokenizer's length with an attention mask, as the pipeline does, gives the same result:
    /// masked positions take no part in the attention of the others, and only the first token is pooled.
    pub fn text_embeds(&self, ids: &[u32]) -> Result<Tensor> {
        if ids.is_empty() || ids.len() > self.max_tokens() {
            return Err(Error::invalid(
                "input_ids",
                format!(
                    "{} tokens; the CLAP text encoder takes 1 to {}",
                    ids.len(),
                    self.max_tokens()
                ),
            ));
        }
        if let Some(&bad) = ids
            .iter()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            return Err(Error::invalid(
                "input_ids",
                format!(
                    "id {bad} is beyond the text encoder's {} tokens",
                    self.config.vocab_size
                ),
            ));
        }
        let device = self.device();
        let pad = self.config.pad_token_id;
        // RoBERTa's positions: non-padding tokens count from pad + 1; a padding id keeps position `pad`.
        let mut count = 0u32;
        let positions: Vec<u32> = ids
            .iter()
            .map(|&id| {
                if id == pad {
                    pad
                } else {
                    count += 1;
                    pad + count
                }
            })
            .collect();
        let n = ids.len();
        let words =
            self.word_embeddings
                .forward(&Tensor::from_vec(ids.to_vec(), (1, n), device)?)?;
        let positions =
            self.position_embeddings
                .forward(&Tensor::from_vec(positions, (1, n), device)?)?;
        let x = (words.broadcast_add(&self.token_type_embedding)? + positions)?;
        let mut x = self.embeddings_norm.forward(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        let pooled = self.pooler.forward(&x.i((.., 0))?)?.tanh()?;
        let projected = self
            .projection_act
            .forward(&self.projection_1.forward(&pooled)?)?;
        Ok(self.projection_2.forward(&projected)?)
    }
}
