//! `AutoencoderTiny`'s decoder (TAESD): a few plain 3×3 convolutions per level instead of the KL VAE's resnets,
//! decoding a Stable Diffusion latent to an image in a fraction of the time, as diffusers' `DecoderTiny` does.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::kernels::residual;
use crate::models::activations::Activation;
use crate::models::conv::Conv2d;
use crate::{Error, Result};

/// The `AutoencoderTiny` configuration (`config.json` of e.g. madebyollin/taesd); unknown keys are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct AutoencoderTinyConfig {
    /// Image channels out (3).
    #[serde(default = "three")]
    pub out_channels: usize,
    /// Channels of each decoder level.
    #[serde(default = "sixty_fours")]
    pub decoder_block_out_channels: Vec<usize>,
    /// Blocks per decoder level.
    #[serde(default = "decoder_blocks")]
    pub num_decoder_blocks: Vec<usize>,
    /// The activation between convolutions (`relu`).
    #[serde(default = "relu")]
    pub act_fn: String,
    /// `nearest` (the only mode TAESD uses).
    #[serde(default = "nearest")]
    pub upsample_fn: String,
    /// Upsampling factor between levels.
    #[serde(default = "two")]
    pub upsampling_scaling_factor: usize,
    /// Latent channels (4).
    #[serde(default = "four")]
    pub latent_channels: usize,
    /// Pipelines divide latents by this before decoding (1.0 for TAESD, which decodes scaled latents as they are).
    #[serde(default = "one")]
    pub scaling_factor: f64,
}

fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn two() -> usize {
    2
}
fn one() -> f64 {
    1.0
}
fn sixty_fours() -> Vec<usize> {
    vec![64; 4]
}
fn decoder_blocks() -> Vec<usize> {
    vec![3, 3, 3, 1]
}
fn relu() -> String {
    "relu".into()
}
fn nearest() -> String {
    "nearest".into()
}

impl AutoencoderTinyConfig {
    /// Image pixels per latent pixel, per side.
    pub fn scale_factor(&self) -> usize {
        self.upsampling_scaling_factor
            .pow(self.decoder_block_out_channels.len().saturating_sub(1) as u32)
    }
}

/// `AutoencoderTinyBlock` as the decoder uses it (same channels in and out, so the skip is the identity): three
/// 3×3 convolutions with the activation between them, and a ReLU on the sum with the input.
#[derive(Debug, Clone)]
struct TinyBlock {
    convs: [Conv2d; 3],
    act: Activation,
}

impl TinyBlock {
    fn new(vb: VarBuilder, channels: usize, act: Activation) -> Result<Self> {
        let conv = vb.pp("conv");
        Ok(Self {
            convs: [
                Conv2d::new(conv.pp("0"), channels, channels, 3, 1, 1)?,
                Conv2d::new(conv.pp("2"), channels, channels, 3, 1, 1)?,
                Conv2d::new(conv.pp("4"), channels, channels, 3, 1, 1)?,
            ],
            act,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.act.forward(&self.convs[0].forward(x)?)?;
        let h = self.act.forward(&self.convs[1].forward(&h)?)?;
        let h = self.convs[2].forward(&h)?;
        residual::add(&h, x)?.relu()
    }
}

/// One entry of diffusers' `DecoderTiny.layers` (an `nn.Sequential`, so weights are named by position).
#[derive(Debug, Clone)]
enum Layer {
    Conv(Conv2d),
    Act(Activation),
    Block(Box<TinyBlock>),
    Upsample(usize),
}

/// The TAESD decoder: latents `[n, 4, h, w]` → images `[n, 3, h·f, w·f]` in [-1, 1] (before clamping).
#[derive(Debug, Clone)]
pub struct TinyDecoder {
    layers: Vec<Layer>,
    config: AutoencoderTinyConfig,
}

impl TinyDecoder {
    /// Reads `decoder.layers.*` under `vb`; `file` names the config in errors.
    pub fn new(vb: VarBuilder, cfg: &AutoencoderTinyConfig, file: &str) -> Result<Self> {
        let channels = &cfg.decoder_block_out_channels;
        if channels.is_empty() || channels.len() != cfg.num_decoder_blocks.len() {
            return Err(Error::unsupported(
                file,
                "num_decoder_blocks",
                format!("{:?}", cfg.num_decoder_blocks),
                format!(
                    "one count per decoder level ({} levels in decoder_block_out_channels)",
                    channels.len()
                ),
            ));
        }
        if cfg.upsample_fn != "nearest" {
            return Err(Error::unsupported(
                file,
                "upsample_fn",
                &cfg.upsample_fn,
                "nearest",
            ));
        }
        let act = Activation::parse(&cfg.act_fn, file, "act_fn")?;
        let vb = vb.pp("decoder").pp("layers");
        let mut layers = vec![
            Layer::Conv(Conv2d::new(
                vb.pp("0"),
                cfg.latent_channels,
                channels[0],
                3,
                1,
                1,
            )?),
            Layer::Act(act),
        ];
        // diffusers builds every level's blocks and convolution at that level's width, so the levels' widths
        // must agree with the previous level's output (TAESD's are all 64).
        if let Some(pair) = channels.windows(2).find(|w| w[0] != w[1]) {
            return Err(Error::unsupported(
                file,
                "decoder_block_out_channels",
                format!("{channels:?}"),
                format!(
                    "equal widths, as diffusers' DecoderTiny needs ({} then {})",
                    pair[0], pair[1]
                ),
            ));
        }
        for (level, (&width, &blocks)) in channels.iter().zip(&cfg.num_decoder_blocks).enumerate() {
            let last = level + 1 == channels.len();
            for _ in 0..blocks {
                let block = TinyBlock::new(vb.pp(layers.len().to_string()), width, act)?;
                layers.push(Layer::Block(Box::new(block)));
            }
            if !last {
                layers.push(Layer::Upsample(cfg.upsampling_scaling_factor));
            }
            let out = if last { cfg.out_channels } else { width };
            let at = vb.pp(layers.len().to_string());
            layers.push(Layer::Conv(if last {
                Conv2d::new(at, width, out, 3, 1, 1)?
            } else {
                Conv2d::without_bias(at, width, out, 3, 1, 1)?
            }));
        }
        Ok(Self {
            layers,
            config: cfg.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AutoencoderTinyConfig {
        &self.config
    }

    /// Decodes latents as a pipeline hands them over (already divided by `scaling_factor`): clamps them softly
    /// to ±3 (`tanh(x / 3) · 3`), runs the layers, and maps the [0, 1] output to [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = ((latents / 3.0)?.tanh()? * 3.0)?;
        for layer in &self.layers {
            x = match layer {
                Layer::Conv(conv) => conv.forward(&x)?,
                Layer::Act(act) => act.forward(&x)?,
                Layer::Block(block) => block.forward(&x)?,
                Layer::Upsample(factor) => {
                    let (_, _, h, w) = x.dims4()?;
                    x.upsample_nearest2d(h * factor, w * factor)?
                }
            };
        }
        (x * 2.0)? - 1.0
    }
}
