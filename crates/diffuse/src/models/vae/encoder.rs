//! The VAE encoder: image → the moments (mean, log-variance) of the latent distribution.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::group_norm::{group_norm, GroupNorm};

use super::blocks::{resnet_stack, VaeMidBlock};
use super::config::AutoencoderKLConfig;
use crate::models::activations::Activation;
use crate::models::conv::Conv2d;
use crate::models::resnet::{ResnetBlock2D, ResnetConfig};
use crate::models::sampling::Downsample2D;

struct DownEncoderBlock {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Downsample2D>,
}

/// diffusers' `Encoder` with `double_z=True`.
pub struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock>,
    mid_block: VaeMidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    act: Activation,
}

impl Encoder {
    /// Builds the encoder from weights under `vb` (`encoder.*`).
    pub fn new(
        vb: VarBuilder,
        cfg: &AutoencoderKLConfig,
        act: Activation,
    ) -> candle_core::Result<Self> {
        let channels = &cfg.block_out_channels;
        let template = ResnetConfig {
            in_channels: 0,
            out_channels: 0,
            temb_channels: None,
            groups: cfg.norm_num_groups,
            eps: 1e-6,
            act,
            output_scale_factor: 1.0,
        };
        let mut down_blocks = Vec::with_capacity(channels.len());
        let mut input = channels[0];
        for (i, &out) in channels.iter().enumerate() {
            let vb_block = vb.pp("down_blocks").pp(i);
            let resnets = resnet_stack(&vb_block, template, cfg.layers_per_block, input, out)?;
            let downsampler = (i + 1 < channels.len())
                .then(|| Downsample2D::new(vb_block.pp("downsamplers").pp(0), out, 0))
                .transpose()?;
            down_blocks.push(DownEncoderBlock {
                resnets,
                downsampler,
            });
            input = out;
        }
        let last = channels[channels.len() - 1];
        Ok(Self {
            conv_in: Conv2d::new(vb.pp("conv_in"), cfg.in_channels, channels[0], 3, 1, 1)?,
            down_blocks,
            mid_block: VaeMidBlock::new(
                vb.pp("mid_block"),
                ResnetConfig {
                    in_channels: last,
                    out_channels: last,
                    ..template
                },
                cfg.mid_block_add_attention,
            )?,
            conv_norm_out: group_norm(cfg.norm_num_groups, last, 1e-6, vb.pp("conv_norm_out"))?,
            conv_out: Conv2d::new(vb.pp("conv_out"), last, 2 * cfg.latent_channels, 3, 1, 1)?,
            act,
        })
    }

    /// `image`: `[batch, in_channels, h, w]` in [-1, 1] → `[batch, 2 · latent_channels, h / f, w / f]`.
    pub fn forward(&self, image: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = self.conv_in.forward(image)?;
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(&x, None)?;
            }
            if let Some(down) = &block.downsampler {
                x = down.forward(&x)?;
            }
        }
        let x = self.mid_block.forward(&x)?;
        let x = self.conv_norm_out.forward_act(&x, self.act)?;
        self.conv_out.forward(&x)
    }
}
