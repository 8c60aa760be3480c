//! The VAE decoder: latents → image in [-1, 1].

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::group_norm::{group_norm, GroupNorm};

use super::blocks::{resnet_stack, VaeMidBlock};
use super::config::AutoencoderKLConfig;
use crate::models::activations::Activation;
use crate::models::conv::Conv2d;
use crate::models::resnet::{ResnetBlock2D, ResnetConfig};
use crate::models::sampling::Upsample2D;

struct UpDecoderBlock {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

/// diffusers' `Decoder` (group-norm variant).
pub struct Decoder {
    conv_in: Conv2d,
    mid_block: VaeMidBlock,
    up_blocks: Vec<UpDecoderBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    act: Activation,
}

impl Decoder {
    /// Builds the decoder from weights under `vb` (`decoder.*`).
    pub fn new(
        vb: VarBuilder,
        cfg: &AutoencoderKLConfig,
        act: Activation,
    ) -> candle_core::Result<Self> {
        let channels = &cfg.block_out_channels;
        let levels = channels.len();
        let template = ResnetConfig {
            in_channels: 0,
            out_channels: 0,
            temb_channels: None,
            groups: cfg.norm_num_groups,
            eps: 1e-6,
            act,
            output_scale_factor: 1.0,
        };
        let top = channels[levels - 1];
        let mut up_blocks = Vec::with_capacity(levels);
        let mut prev = top;
        for i in 0..levels {
            let out = channels[levels - 1 - i];
            let vb_block = vb.pp("up_blocks").pp(i);
            let resnets = resnet_stack(&vb_block, template, cfg.layers_per_block + 1, prev, out)?;
            let upsampler = (i + 1 < levels)
                .then(|| Upsample2D::new(vb_block.pp("upsamplers").pp(0), out))
                .transpose()?;
            up_blocks.push(UpDecoderBlock { resnets, upsampler });
            prev = out;
        }
        Ok(Self {
            conv_in: Conv2d::new(vb.pp("conv_in"), cfg.latent_channels, top, 3, 1, 1)?,
            mid_block: VaeMidBlock::new(
                vb.pp("mid_block"),
                ResnetConfig {
                    in_channels: top,
                    out_channels: top,
                    ..template
                },
                cfg.mid_block_add_attention,
            )?,
            up_blocks,
            conv_norm_out: group_norm(
                cfg.norm_num_groups,
                channels[0],
                1e-6,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: Conv2d::new(vb.pp("conv_out"), channels[0], cfg.out_channels, 3, 1, 1)?,
            act,
        })
    }

    /// `z`: `[batch, latent_channels, h, w]` (after `post_quant_conv`) → `[batch, out_channels, h · f, w · f]`.
    pub fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.conv_in.forward(z)?;
        let mut x = self.mid_block.forward(&x)?;
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(&x, None)?;
            }
            if let Some(up) = &block.upsampler {
                x = up.forward(&x, None)?;
            }
        }
        let x = self.conv_norm_out.forward_act(&x, self.act)?;
        self.conv_out.forward(&x)
    }
}
