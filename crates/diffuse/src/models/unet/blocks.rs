//! The UNet's down, mid and up blocks: resnets, optional spatial transformers, and a resolution change.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::models::resnet::{ResnetBlock2D, ResnetConfig};
use crate::models::sampling::{Downsample2D, Upsample2D};
use crate::models::transformer_2d::{Transformer2DConfig, Transformer2DModel};

/// What a down or up block is made of, resolved from the config for one block.
#[derive(Debug, Clone, Copy)]
pub struct BlockSpec {
    /// Resnets in the block.
    pub layers: usize,
    /// The resnet template (its `in_channels`/`out_channels` are set per layer).
    pub resnet: ResnetConfig,
    /// The transformer template, for cross-attention blocks (`channels` is the block's output channels).
    pub transformer: Option<Transformer2DConfig>,
    /// Whether the block ends in a resolution change.
    pub resample: bool,
}

/// `DownBlock2D` (no transformer) or `CrossAttnDownBlock2D`.
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    /// Builds the block from weights under `vb`.
    pub fn new(
        vb: VarBuilder,
        spec: &BlockSpec,
        in_channels: usize,
        out_channels: usize,
        downsample_padding: usize,
    ) -> candle_core::Result<Self> {
        let mut resnets = Vec::with_capacity(spec.layers);
        let mut attentions = Vec::new();
        for i in 0..spec.layers {
            let cfg = ResnetConfig {
                in_channels: if i == 0 { in_channels } else { out_channels },
                out_channels,
                ..spec.resnet
            };
            resnets.push(ResnetBlock2D::new(vb.pp("resnets").pp(i), cfg)?);
            if let Some(t) = &spec.transformer {
                attentions.push(Transformer2DModel::new(vb.pp("attentions").pp(i), t)?);
            }
        }
        let downsampler = spec
            .resample
            .then(|| {
                Downsample2D::new(
                    vb.pp("downsamplers").pp(0),
                    out_channels,
                    downsample_padding,
                )
            })
            .transpose()?;
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// Runs the block, pushing each intermediate output onto `skips` for the up path.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: Option<&Tensor>,
        skips: &mut Vec<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(&x, Some(temb))?;
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(&x, context)?;
            }
            skips.push(x.clone());
        }
        if let Some(down) = &self.downsampler {
            x = down.forward(&x)?;
            skips.push(x.clone());
        }
        Ok(x)
    }
}

/// `UpBlock2D` (no transformer) or `CrossAttnUpBlock2D`.
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// Builds the block; `skip_channels[i]` is the channel count of the skip its `i`-th resnet concatenates.
    pub fn new(
        vb: VarBuilder,
        spec: &BlockSpec,
        prev_output_channels: usize,
        out_channels: usize,
        skip_channels: &[usize],
    ) -> candle_core::Result<Self> {
        let mut resnets = Vec::with_capacity(spec.layers);
        let mut attentions = Vec::new();
        for (i, skip) in skip_channels.iter().enumerate().take(spec.layers) {
            let input = if i == 0 {
                prev_output_channels
            } else {
                out_channels
            };
            let cfg = ResnetConfig {
                in_channels: input + skip,
                out_channels,
                ..spec.resnet
            };
            resnets.push(ResnetBlock2D::new(vb.pp("resnets").pp(i), cfg)?);
            if let Some(t) = &spec.transformer {
                attentions.push(Transformer2DModel::new(vb.pp("attentions").pp(i), t)?);
            }
        }
        let upsampler = spec
            .resample
            .then(|| Upsample2D::new(vb.pp("upsamplers").pp(0), out_channels))
            .transpose()?;
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// How many skips the block consumes.
    pub fn skip_count(&self) -> usize {
        self.resnets.len()
    }

    /// Runs the block, popping its skips from the end of `skips`; upsamples to `upsample_size` if given.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: Option<&Tensor>,
        skips: &mut Vec<Tensor>,
        upsample_size: Option<(usize, usize)>,
    ) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips
                .pop()
                .ok_or_else(|| candle_core::Error::Msg("UNet skip connections exhausted".into()))?;
            x = Tensor::cat(&[&x, &skip], 1)?;
            x = resnet.forward(&x, Some(temb))?;
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(&x, context)?;
            }
        }
        if let Some(up) = &self.upsampler {
            x = up.forward(&x, upsample_size)?;
        }
        Ok(x)
    }
}

/// `UNetMidBlock2DCrossAttn` (resnet, then transformer + resnet per layer) or `UNetMidBlock2D` without
/// attention (a single resnet).
pub struct MidBlock {
    first: ResnetBlock2D,
    rest: Vec<(Transformer2DModel, ResnetBlock2D)>,
}

impl MidBlock {
    /// Builds the block; `transformer` is `None` for `UNetMidBlock2D`.
    pub fn new(
        vb: VarBuilder,
        resnet: ResnetConfig,
        transformer: Option<&Transformer2DConfig>,
    ) -> candle_core::Result<Self> {
        let first = ResnetBlock2D::new(vb.pp("resnets").pp(0), resnet)?;
        let rest = match transformer {
            Some(t) => vec![(
                Transformer2DModel::new(vb.pp("attentions").pp(0), t)?,
                ResnetBlock2D::new(vb.pp("resnets").pp(1), resnet)?,
            )],
            None => Vec::new(),
        };
        Ok(Self { first, rest })
    }

    /// Runs the block.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let mut x = self.first.forward(x, Some(temb))?;
        for (attn, resnet) in &self.rest {
            x = attn.forward(&x, context)?;
            x = resnet.forward(&x, Some(temb))?;
        }
        Ok(x)
    }
}
