//! The VAE's building blocks: resnet stacks with a resolution change, and the self-attention mid block.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::group_norm::{group_norm, GroupNorm};
use crate::kernels::linear::{linear, Linear};
use crate::models::attention::multi_head_attention;
use crate::models::resnet::{ResnetBlock2D, ResnetConfig};

/// Single-head self-attention over all pixels, with a GroupNorm in front and a residual connection
/// (diffusers' `Attention` with `residual_connection=True`, as the VAE mid block builds it).
struct SpatialSelfAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    scale: f64,
}

impl SpatialSelfAttention {
    fn new(vb: VarBuilder, channels: usize, groups: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(Self {
            group_norm: group_norm(groups, channels, eps, vb.pp("group_norm"))?,
            to_q: linear(channels, channels, vb.pp("to_q"))?,
            to_k: linear(channels, channels, vb.pp("to_k"))?,
            to_v: linear(channels, channels, vb.pp("to_v"))?,
            to_out: linear(channels, channels, vb.pp("to_out").pp(0))?,
            scale: (channels as f64).powf(-0.5),
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let tokens = self
            .group_norm
            .forward(x)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = self.to_q.forward(&tokens)?;
        let k = self.to_k.forward(&tokens)?;
        let v = self.to_v.forward(&tokens)?;
        let out = multi_head_attention(&q, &k, &v, 1, self.scale, true)?;
        let out = self
            .to_out
            .forward(&out)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        out + x
    }
}

/// `UNetMidBlock2D` without a timestep: resnet, then (attention, resnet).
pub struct VaeMidBlock {
    first: ResnetBlock2D,
    attention: Option<SpatialSelfAttention>,
    second: ResnetBlock2D,
}

impl VaeMidBlock {
    /// Builds the block from weights under `vb`.
    pub fn new(
        vb: VarBuilder,
        resnet: ResnetConfig,
        add_attention: bool,
    ) -> candle_core::Result<Self> {
        let attention = add_attention
            .then(|| {
                SpatialSelfAttention::new(
                    vb.pp("attentions").pp(0),
                    resnet.out_channels,
                    resnet.groups,
                    resnet.eps,
                )
            })
            .transpose()?;
        Ok(Self {
            first: ResnetBlock2D::new(vb.pp("resnets").pp(0), resnet)?,
            attention,
            second: ResnetBlock2D::new(vb.pp("resnets").pp(1), resnet)?,
        })
    }

    /// Runs the block.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = self.first.forward(x, None)?;
        if let Some(attn) = &self.attention {
            x = attn.forward(&x)?;
        }
        self.second.forward(&x, None)
    }
}

/// Builds `layers` resnets under `vb.resnets`, the first taking `in_channels`.
pub fn resnet_stack(
    vb: &VarBuilder,
    template: ResnetConfig,
    layers: usize,
    in_channels: usize,
    out_channels: usize,
) -> candle_core::Result<Vec<ResnetBlock2D>> {
    (0..layers)
        .map(|i| {
            let cfg = ResnetConfig {
                in_channels: if i == 0 { in_channels } else { out_channels },
                out_channels,
                ..template
            };
            ResnetBlock2D::new(vb.pp("resnets").pp(i), cfg)
        })
        .collect()
}
