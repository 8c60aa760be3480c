//! CLIPTextModel and CLIPTextModelWithProjection, with transformers' weight names.

use crate::kernels::causal_attention::{self, causal_attention};
use crate::kernels::linear::{linear, linear_no_bias, Linear};
use crate::kernels::residual;
use candle_core::{DType, Device, IndexOp, Module, Tensor, D};
use candle_nn::{embedding, Embedding, VarBuilder};

use super::config::ClipTextConfig;
use crate::models::activations::Activation;
use crate::models::attention::{
    causal_mask, merge_heads, scaled_dot_product_attention, split_heads,
};
use crate::models::layer_norm::{layer_norm, LayerNorm};
use crate::{Error, Result};

/// What one forward pass of the text encoder yields.
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// The last layer's output after `final_layer_norm`: `[batch, tokens, hidden]`.
    pub last_hidden_state: Tensor,
    /// The embeddings' output, then each layer's output (before the final norm): `num_hidden_layers + 1` tensors.
    pub hidden_states: Vec<Tensor>,
    /// `last_hidden_state` at each sequence's end-of-text position: `[batch, hidden]`.
    pub pooled: Tensor,
    /// `text_projection(pooled)`, for CLIPTextModelWithProjection: `[batch, projection_dim]`.
    pub text_embeds: Option<Tensor>,
}

struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    scale: f64,
}

impl ClipAttention {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            q_proj: linear(h, h, vb.pp("q_proj"))?,
            k_proj: linear(h, h, vb.pp("k_proj"))?,
            v_proj: linear(h, h, vb.pp("v_proj"))?,
            out_proj: linear(h, h, vb.pp("out_proj"))?,
            heads: cfg.num_attention_heads,
            scale: ((h / cfg.num_attention_heads) as f64).powf(-0.5),
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (q, k, v) = (
            self.q_proj.forward(x)?,
            self.k_proj.forward(x)?,
            self.v_proj.forward(x)?,
        );
        let out = if x.device().is_cpu()
            && causal_attention::suits(q.dim(2)?, self.heads)
            && !crate::kernels::tracked(&[&q, &k, &v])
        {
            // The kernel computes in f32; a prompt's projections are small enough to widen (bf16, f16) and
            // narrow back for it.
            let f32 = |t: &Tensor| t.to_dtype(DType::F32);
            causal_attention(
                &f32(&q)?,
                &f32(&k)?,
                &f32(&v)?,
                self.heads,
                self.scale as f32,
            )?
            .to_dtype(q.dtype())?
        } else {
            let (q, k, v) = (
                split_heads(&q, self.heads)?,
                split_heads(&k, self.heads)?,
                split_heads(&v, self.heads)?,
            );
            merge_heads(&scaled_dot_product_attention(
                &q,
                &k,
                &v,
                self.scale,
                Some(mask),
                false,
            )?)?
        };
        self.out_proj.forward(&out)
    }
}

struct ClipEncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: ClipAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl ClipEncoderLayer {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig, act: Activation) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            layer_norm1: layer_norm(h, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            self_attn: ClipAttention::new(vb.pp("self_attn"), cfg)?,
            layer_norm2: layer_norm(h, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: linear(h, cfg.intermediate_size, vb.pp("mlp").pp("fc1"))?,
            fc2: linear(cfg.intermediate_size, h, vb.pp("mlp").pp("fc2"))?,
            act,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let attention = self
            .self_attn
            .forward(&self.layer_norm1.forward(x)?, mask)?;
        let h = residual::add(x, &attention)?;
        let hidden = self
            .act
            .after_linear(&self.fc1, &self.layer_norm2.forward(&h)?)?;
        let mlp = self.fc2.forward(&hidden)?;
        residual::add(&h, &mlp)
    }
}

/// The CLIP text transformer (optionally with its `text_projection`), as transformers builds it.
pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<ClipEncoderLayer>,
    final_layer_norm: LayerNorm,
    text_projection: Option<Linear>,
    config: ClipTextConfig,
}

impl ClipTextModel {
    /// Builds the model from `vb` rooted at the checkpoint's top level (holding `text_model.*` and, with
    /// `with_projection`, `text_projection.weight`).
    pub fn new(vb: VarBuilder, cfg: &ClipTextConfig, with_projection: bool) -> Result<Self> {
        let act = Activation::parse(&cfg.hidden_act, "text_encoder/config.json", "hidden_act")?;
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(Error::unsupported(
                "text_encoder/config.json",
                "num_attention_heads",
                cfg.num_attention_heads,
                format!("a divisor of hidden_size {}", cfg.hidden_size),
            ));
        }
        // transformers 5 saves CLIPTextModel without the `text_model.` prefix; the Hub's checkpoints have it.
        let tm = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb.clone()
        };
        let emb = tm.pp("embeddings");
        let token_embedding =
            embedding(cfg.vocab_size, cfg.hidden_size, emb.pp("token_embedding"))?;
        let position_embedding = embedding(
            cfg.max_position_embeddings,
            cfg.hidden_size,
            emb.pp("position_embedding"),
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| ClipEncoderLayer::new(tm.pp("encoder").pp("layers").pp(i), cfg, act))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let final_layer_norm = layer_norm(
            cfg.hidden_size,
            cfg.layer_norm_eps,
            tm.pp("final_layer_norm"),
        )?;
        let text_projection = if with_projection {
            let dim = cfg.projection_dim.ok_or_else(|| {
                Error::unsupported(
                    "text_encoder/config.json",
                    "projection_dim",
                    "null",
                    "the projection width, required by CLIPTextModelWithProjection",
                )
            })?;
            Some(linear_no_bias(
                cfg.hidden_size,
                dim,
                vb.pp("text_projection"),
            )?)
        } else {
            None
        };
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            text_projection,
            config: cfg.clone(),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Whether the model has its `text_projection` (CLIPTextModelWithProjection).
    pub(crate) fn has_projection(&self) -> bool {
        self.text_projection.is_some()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.token_embedding.embeddings().device()
    }

    /// The dtype the weights are held in.
    pub fn dtype(&self) -> DType {
        self.token_embedding.embeddings().dtype()
    }

    /// Runs the encoder over `input_ids` (`[batch, tokens]`, u32) with a causal mask.
    pub fn forward(&self, input_ids: &Tensor) -> Result<ClipTextOutput> {
        self.forward_with_extra(input_ids, None)
    }

    /// [`ClipTextModel::forward`] where ids from `vocab_size` on stand for the rows of `extra`
    /// (`[rows, hidden_size]`): textual-inversion vectors, as diffusers' added tokens are.
    pub fn forward_with_extra(
        &self,
        input_ids: &Tensor,
        extra: Option<&Tensor>,
    ) -> Result<ClipTextOutput> {
        let (batch, tokens) = input_ids.dims2()?;
        if tokens > self.config.max_position_embeddings {
            return Err(Error::invalid(
                "input_ids",
                format!(
                    "{tokens} tokens, more than the {} positions of the text encoder",
                    self.config.max_position_embeddings
                ),
            ));
        }
        let device = self.device();
        let positions = Tensor::arange(0u32, tokens as u32, device)?;
        let x = self
            .embed_tokens(input_ids, extra)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = causal_mask(tokens, device)?.to_dtype(self.dtype())?;
        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        let mut x = x;
        for layer in &self.layers {
            let next = layer.forward(&x, &mask)?;
            hidden_states.push(x);
            x = next;
        }
        hidden_states.push(x.clone());
        let last_hidden_state = self.final_layer_norm.forward(&x)?;
        let pooled = self.pool(&last_hidden_state, input_ids, batch)?;
        let text_embeds = match &self.text_projection {
            Some(proj) => Some(proj.forward(&pooled)?),
            None => None,
        };
        Ok(ClipTextOutput {
            last_hidden_state,
            hidden_states,
            pooled,
            text_embeds,
        })
    }

    /// The token embeddings of `input_ids`, ids beyond the vocabulary taken from `extra`.
    fn embed_tokens(&self, input_ids: &Tensor, extra: Option<&Tensor>) -> Result<Tensor> {
        let vocab = self.config.vocab_size as u32;
        let Some(extra) = extra else {
            return Ok(self.token_embedding.forward(input_ids)?);
        };
        let (rows, width) = extra.dims2()?;
        if width != self.config.hidden_size {
            return Err(Error::invalid(
                "embedding",
                format!(
                    "vectors of width {width}, but this text encoder's tokens have width {}",
                    self.config.hidden_size
                ),
            ));
        }
        let shape = input_ids.dims().to_vec();
        let ids = input_ids.flatten_all()?.to_vec1::<u32>()?;
        if let Some(&bad) = ids.iter().find(|&&id| id >= vocab + rows as u32) {
            return Err(Error::invalid(
                "input_ids",
                format!("id {bad} is beyond the vocabulary and the {rows} added vectors"),
            ));
        }
        let device = self.device();
        let base_ids: Vec<u32> = ids
            .iter()
            .map(|&id| if id < vocab { id } else { 0 })
            .collect();
        let extra_ids: Vec<u32> = ids.iter().map(|&id| id.saturating_sub(vocab)).collect();
        let is_extra: Vec<u8> = ids.iter().map(|&id| u8::from(id >= vocab)).collect();
        let n = ids.len();
        let base = self
            .token_embedding
            .forward(&Tensor::from_vec(base_ids, n, device)?)?;
        let added = extra
            .to_dtype(base.dtype())?
            .to_device(device)?
            .index_select(&Tensor::from_vec(extra_ids, n, device)?, 0)?;
        let mask = Tensor::from_vec(is_extra, (n, 1), device)?.broadcast_as(base.shape())?;
        let mut out_shape = shape;
        out_shape.push(self.config.hidden_size);
        Ok(mask.where_cond(&added, &base)?.reshape(out_shape)?)
    }

    /// Applies `final_layer_norm` (diffusers applies it to the hidden state picked by `clip_skip`).
    pub fn final_layer_norm(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.final_layer_norm.forward(x)?)
    }

    /// The end-of-text position of each sequence, as transformers picks it: the largest id for the legacy
    /// `eos_token_id == 2`, else the first occurrence of `eos_token_id`.
    fn pool(&self, last: &Tensor, input_ids: &Tensor, batch: usize) -> Result<Tensor> {
        let ids = input_ids.to_dtype(DType::I64)?;
        let positions = if self.config.eos_token_id == 2 {
            ids.argmax_keepdim(D::Minus1)?
        } else {
            ids.eq(self.config.eos_token_id)?
                .to_dtype(DType::U32)?
                .argmax_keepdim(D::Minus1)?
        };
        let positions = positions.flatten_all()?.to_vec1::<u32>()?;
        let rows = (0..batch)
            .map(|b| last.i((b, positions[b] as usize)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&rows, 0)?)
    }
}
