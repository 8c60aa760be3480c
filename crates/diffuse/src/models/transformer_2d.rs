//! `Transformer2DModel`: the spatial transformer that injects the text into the UNet by cross-attention.

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;

use super::attention::multi_head_attention;
use super::conv::Conv2d;
use super::layer_norm::{layer_norm, LayerNorm};
use crate::device::Quantization;
use crate::kernels::group_norm::{group_norm, GroupNorm};
use crate::kernels::linear::{linear, linear_no_bias, Linear};
use crate::kernels::residual;

/// The shape of one spatial transformer.
#[derive(Debug, Clone, Copy)]
pub struct Transformer2DConfig {
    /// Channels of the feature map (and of the transformer's residual stream).
    pub channels: usize,
    /// Attention heads; the head width is `channels / heads`.
    pub heads: usize,
    /// Stacked `BasicTransformerBlock`s.
    pub layers: usize,
    /// Width of the text embeddings attended to.
    pub cross_attention_dim: usize,
    /// GroupNorm groups of the input norm.
    pub norm_groups: usize,
    /// Linear instead of 1×1 convolution projections (SD 2.x, SDXL).
    pub use_linear_projection: bool,
    /// The first attention also attends to the text instead of to the image.
    pub only_cross_attention: bool,
    /// Compute attention scores in f32 whatever the weights' dtype.
    pub upcast_attention: bool,
}

/// diffusers' `Attention` as the UNet's transformers use it: bias-free q/k/v, biased output projection.
pub struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
    upcast: bool,
    /// Built for int8 ([`crate::kernels::int8::building`]): the scores run in int8 on the CPU.
    int8: bool,
}

impl CrossAttention {
    /// Builds the attention from weights under `vb`; `context_dim` is the width of the keys' source.
    pub fn new(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
        upcast: bool,
    ) -> candle_core::Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: linear(inner, query_dim, vb.pp("to_out").pp(0))?,
            heads,
            scale: (head_dim as f64).powf(-0.5),
            upcast,
            int8: crate::kernels::int8::current() == Some(Quantization::Int8),
        })
    }

    /// Attends from `x` (`[batch, tokens, query_dim]`) to `context` (or to `x` itself when `None`).
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let context = context.unwrap_or(x);
        let q = self.to_q.forward(x)?;
        let k = self.to_k.forward(context)?;
        let v = self.to_v.forward(context)?;
        let out = if self.int8 && q.device().is_cpu() && !crate::kernels::tracked(&[&q, &k, &v]) {
            crate::kernels::attention::attention_int8(&q, &k, &v, self.heads, self.scale)?
        } else {
            multi_head_attention(&q, &k, &v, self.heads, self.scale, self.upcast)?
        };
        self.to_out.forward(&out)
    }
}

/// `FeedForward` with GEGLU: `proj` to twice the inner width, value · gelu(gate), then back.
struct GegluFeedForward {
    proj: Linear,
    out: Linear,
}

impl GegluFeedForward {
    fn new(vb: VarBuilder, dim: usize) -> candle_core::Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            proj: linear(dim, 2 * inner, vb.pp("net").pp(0).pp("proj"))?,
            out: linear(inner, dim, vb.pp("net").pp(2))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.proj.forward(x)?;
        let gated = match (h.device().is_cpu(), h.track_op()) {
            (true, false) => crate::kernels::geglu::geglu(&h)?,
            (true, true) if h.dtype() == DType::F32 => {
                crate::kernels::train_geglu::geglu_tracked(&h)?
            }
            _ => crate::kernels::geglu::geglu_reference(&h)?,
        };
        self.out.forward(&gated)
    }
}

struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: CrossAttention,
    norm2: LayerNorm,
    attn2: CrossAttention,
    norm3: LayerNorm,
    ff: GegluFeedForward,
    only_cross_attention: bool,
}

impl BasicTransformerBlock {
    fn new(vb: VarBuilder, cfg: &Transformer2DConfig) -> candle_core::Result<Self> {
        let dim = cfg.channels;
        let head_dim = dim / cfg.heads;
        let attn1_context = if cfg.only_cross_attention {
            cfg.cross_attention_dim
        } else {
            dim
        };
        Ok(Self {
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: CrossAttention::new(
                vb.pp("attn1"),
                dim,
                attn1_context,
                cfg.heads,
                head_dim,
                cfg.upcast_attention,
            )?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: CrossAttention::new(
                vb.pp("attn2"),
                dim,
                cfg.cross_attention_dim,
                cfg.heads,
                head_dim,
                cfg.upcast_attention,
            )?,
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff: GegluFeedForward::new(vb.pp("ff"), dim)?,
            only_cross_attention: cfg.only_cross_attention,
        })
    }

    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let first_context = if self.only_cross_attention {
            context
        } else {
            None
        };
        let x = residual::add(
            &self.attn1.forward(&self.norm1.forward(x)?, first_context)?,
            x,
        )?;
        // Without a context (AudioLDM), the second attention attends to the block's own tokens, as diffusers'
        // attention processors do when `encoder_hidden_states` is None.
        let x = residual::add(&self.attn2.forward(&self.norm2.forward(&x)?, context)?, &x)?;
        residual::add(&self.ff.forward(&self.norm3.forward(&x)?)?, &x)
    }
}

enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// diffusers' `Transformer2DModel` for continuous (latent feature map) input.
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2DModel {
    /// Builds the transformer from weights under `vb`.
    pub fn new(vb: VarBuilder, cfg: &Transformer2DConfig) -> candle_core::Result<Self> {
        let c = cfg.channels;
        let projection = |name: &str| -> candle_core::Result<Projection> {
            Ok(if cfg.use_linear_projection {
                Projection::Linear(linear(c, c, vb.pp(name))?)
            } else {
                Projection::Conv(Conv2d::new(vb.pp(name), c, c, 1, 0, 1)?)
            })
        };
        Ok(Self {
            norm: group_norm(cfg.norm_groups, c, 1e-6, vb.pp("norm"))?,
            proj_in: projection("proj_in")?,
            blocks: (0..cfg.layers)
                .map(|i| BasicTransformerBlock::new(vb.pp("transformer_blocks").pp(i), cfg))
                .collect::<candle_core::Result<Vec<_>>>()?,
            proj_out: projection("proj_out")?,
        })
    }

    /// `x`: `[batch, channels, h, w]`; `context`: the text embeddings `[batch, tokens, cross_attention_dim]`, or
    /// none (every attention then attends to the feature map's own tokens).
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let normed = self.norm.forward(x)?;
        let to_tokens = |t: Tensor| t.permute((0, 2, 3, 1))?.reshape((b, h * w, c));
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(&normed)?)?,
            Projection::Linear(lin) => lin.forward(&to_tokens(normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let to_map = |t: Tensor| t.reshape((b, h, w, c))?.permute((0, 3, 1, 2));
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_map(tokens)?.contiguous()?)?,
            Projection::Linear(lin) => to_map(lin.forward(&tokens)?)?,
        };
        residual::add(&out, x)
    }
}
