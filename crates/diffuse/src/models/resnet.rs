//! `ResnetBlock2D`: two GroupNorm → activation → 3×3 convolutions with an optional timestep injection.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::activations::Activation;
use super::conv::Conv2d;
use crate::kernels::group_norm::{group_norm, GroupNorm};
use crate::kernels::linear::{linear, Linear};
use crate::kernels::residual;

/// The shape of one residual block.
#[derive(Debug, Clone, Copy)]
pub struct ResnetConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels (a 1×1 shortcut convolution appears when they differ from the input's).
    pub out_channels: usize,
    /// Width of the timestep embedding, when the block takes one (UNet) or `None` (VAE).
    pub temb_channels: Option<usize>,
    /// GroupNorm groups.
    pub groups: usize,
    /// GroupNorm epsilon.
    pub eps: f64,
    /// The activation after each norm (and on the timestep embedding).
    pub act: Activation,
    /// The block's output is divided by this.
    pub output_scale_factor: f64,
}

/// diffusers' `ResnetBlock2D` with `time_embedding_norm="default"`.
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    act: Activation,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    /// Builds the block from weights under `vb`.
    pub fn new(vb: VarBuilder, cfg: ResnetConfig) -> candle_core::Result<Self> {
        let conv_shortcut = if cfg.in_channels != cfg.out_channels {
            Some(Conv2d::new(
                vb.pp("conv_shortcut"),
                cfg.in_channels,
                cfg.out_channels,
                1,
                0,
                1,
            )?)
        } else {
            None
        };
        Ok(Self {
            norm1: group_norm(cfg.groups, cfg.in_channels, cfg.eps, vb.pp("norm1"))?,
            conv1: Conv2d::new(vb.pp("conv1"), cfg.in_channels, cfg.out_channels, 3, 1, 1)?,
            time_emb_proj: cfg
                .temb_channels
                .map(|t| linear(t, cfg.out_channels, vb.pp("time_emb_proj")))
                .transpose()?,
            norm2: group_norm(cfg.groups, cfg.out_channels, cfg.eps, vb.pp("norm2"))?,
            conv2: Conv2d::new(vb.pp("conv2"), cfg.out_channels, cfg.out_channels, 3, 1, 1)?,
            conv_shortcut,
            act: cfg.act,
            output_scale_factor: cfg.output_scale_factor,
        })
    }

    /// `x`: `[batch, in, h, w]`; `temb`: `[batch, temb_channels]` when the block was built with one.
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let h = self.norm1.forward_act(x, self.act)?;
        let mut h = self.conv1.forward(&h)?;
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t = proj
                .forward(&self.act.forward(temb)?)?
                .unsqueeze(2)?
                .unsqueeze(3)?;
            h = h.broadcast_add(&t)?;
        }
        let h = self.norm2.forward_act(&h, self.act)?;
        let h = self.conv2.forward(&h)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        let out = residual::add(&shortcut, &h)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}
