//! transformers' `SpeechT5HifiGan`: a 7-tap input convolution, then per upsampling a leaky ReLU, a transposed
//! convolution and the mean of the multi-receptive-field residual blocks, then a leaky ReLU, a 7-tap output
//! convolution and tanh. Weights stored with weight normalisation (`weight_g`/`weight_v`, or torch's
//! `parametrizations.weight.original0/1`) are folded into plain weights when loading.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

use super::config::HifiGanConfig;
use crate::kernels::conv1d::{conv1d, conv_transpose1d, Conv1dParams};
use crate::kernels::residual;
use crate::{Error, Result};

const FILE: &str = "vocoder/config.json";

/// A 1-D convolution (or transposed convolution) with its bias.
struct Conv1d {
    weight: Tensor,
    bias: Tensor,
    padding: usize,
    dilation: usize,
    /// The stride of a transposed convolution; `None` for an ordinary one (stride 1).
    transposed_stride: Option<usize>,
}

impl Conv1d {
    fn new(
        vb: VarBuilder,
        shape: (usize, usize, usize),
        padding: usize,
        dilation: usize,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            weight: conv_weight(&vb, shape)?,
            bias: vb.get(shape.0, "bias")?,
            padding,
            dilation,
            transposed_stride: None,
        })
    }

    fn transposed(
        vb: VarBuilder,
        in_c: usize,
        out_c: usize,
        kernel: usize,
        stride: usize,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            weight: conv_weight(&vb, (in_c, out_c, kernel))?,
            bias: vb.get(out_c, "bias")?,
            padding: (kernel - stride) / 2,
            dilation: 1,
            transposed_stride: Some(stride),
        })
    }
}

impl Conv1d {
    /// The convolution of `leaky_relu(x, slope)` (of `x` itself without a slope): on the CPU one kernel does
    /// both, elsewhere candle's ops.
    fn forward(&self, x: &Tensor, slope: Option<f64>) -> candle_core::Result<Tensor> {
        let (padding, step) = (
            self.padding,
            self.transposed_stride.unwrap_or(self.dilation),
        );
        if x.device().is_cpu() {
            let params = Conv1dParams {
                padding,
                step,
                leaky_slope: slope.map(|s| s as f32),
            };
            return match self.transposed_stride {
                None => conv1d(x, &self.weight, &self.bias, params),
                Some(_) => conv_transpose1d(x, &self.weight, &self.bias, params),
            };
        }
        let x = match slope {
            Some(slope) => leaky_relu(x, slope)?,
            None => x.clone(),
        };
        let y = match self.transposed_stride {
            None => x.conv1d(&self.weight, padding, 1, step, 1)?,
            Some(stride) => x.conv_transpose1d(&self.weight, padding, 0, stride, 1, 1)?,
        };
        y.broadcast_add(&self.bias.reshape((1, (), 1))?)
    }
}

/// A convolution's `weight` of `shape`, or the weight its weight normalisation stands for: `g · v / ‖v‖`, the
/// norm taken per slice of the first dimension.
fn conv_weight(vb: &VarBuilder, shape: (usize, usize, usize)) -> candle_core::Result<Tensor> {
    if vb.contains_tensor("weight") {
        return vb.get(shape, "weight");
    }
    let (g, v) = if vb.contains_tensor("weight_g") {
        (
            vb.get((shape.0, 1, 1), "weight_g")?,
            vb.get(shape, "weight_v")?,
        )
    } else {
        let p = vb.pp("parametrizations").pp("weight");
        (
            p.get((shape.0, 1, 1), "original0")?,
            p.get(shape, "original1")?,
        )
    };
    let v32 = v.to_dtype(DType::F32)?;
    let norm = v32.sqr()?.sum_keepdim((1, 2))?.sqrt()?;
    v32.broadcast_mul(&g.to_dtype(DType::F32)?.broadcast_div(&norm)?)?
        .to_dtype(v.dtype())
}

fn leaky_relu(x: &Tensor, slope: f64) -> candle_core::Result<Tensor> {
    let zeros = x.zeros_like()?;
    x.maximum(&zeros)? + (x.minimum(&zeros)? * slope)?
}

/// HiFi-GAN's residual block: per dilation, `x + conv2(lrelu(conv1(lrelu(x))))`.
struct ResidualBlock {
    convs: Vec<(Conv1d, Conv1d)>,
    slope: f64,
}

impl ResidualBlock {
    fn new(
        vb: VarBuilder,
        channels: usize,
        kernel: usize,
        dilations: &[usize],
        slope: f64,
    ) -> candle_core::Result<Self> {
        let shape = (channels, channels, kernel);
        let convs = dilations
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                Ok((
                    Conv1d::new(vb.pp("convs1").pp(i), shape, (kernel * d - d) / 2, d)?,
                    Conv1d::new(vb.pp("convs2").pp(i), shape, (kernel - 1) / 2, 1)?,
                ))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { convs, slope })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for (conv1, conv2) in &self.convs {
            let h = conv1.forward(&x, Some(self.slope))?;
            let h = conv2.forward(&h, Some(self.slope))?;
            x = residual::add(&h, &x)?;
        }
        Ok(x)
    }
}

/// The vocoder, built from its config and weights.
pub struct HifiGan {
    conv_pre: Conv1d,
    upsamplers: Vec<Conv1d>,
    /// `resblock_kernel_sizes.len()` blocks per upsampling.
    resblocks: Vec<Vec<ResidualBlock>>,
    conv_post: Conv1d,
    normalize: Option<(Tensor, Tensor)>,
    config: HifiGanConfig,
}

fn reject(key: &str, value: impl std::fmt::Display, expected: &str) -> Error {
    Error::unsupported(FILE, key, value, expected)
}

fn check(cfg: &HifiGanConfig) -> Result<()> {
    let ups = cfg.upsample_rates.len();
    if ups == 0 || cfg.upsample_kernel_sizes.len() != ups {
        return Err(reject(
            "upsample_rates/upsample_kernel_sizes",
            format!("{}/{} entries", ups, cfg.upsample_kernel_sizes.len()),
            "the same non-zero number of entries",
        ));
    }
    for (&rate, &kernel) in cfg.upsample_rates.iter().zip(&cfg.upsample_kernel_sizes) {
        if rate == 0 || kernel < rate {
            return Err(reject(
                "upsample_kernel_sizes",
                format!("kernel {kernel} for stride {rate}"),
                "a kernel at least as long as its stride",
            ));
        }
    }
    let blocks = cfg.resblock_kernel_sizes.len();
    if blocks == 0 || cfg.resblock_dilation_sizes.len() != blocks {
        return Err(reject(
            "resblock_kernel_sizes/resblock_dilation_sizes",
            format!("{}/{} entries", blocks, cfg.resblock_dilation_sizes.len()),
            "the same non-zero number of entries",
        ));
    }
    if cfg
        .resblock_dilation_sizes
        .iter()
        .any(|d| d.is_empty() || d.contains(&0))
    {
        return Err(reject(
            "resblock_dilation_sizes",
            format!("{:?}", cfg.resblock_dilation_sizes),
            "non-empty lists of positive dilations",
        ));
    }
    if cfg
        .resblock_kernel_sizes
        .iter()
        .any(|k| k.is_multiple_of(2))
    {
        return Err(reject(
            "resblock_kernel_sizes",
            format!("{:?}", cfg.resblock_kernel_sizes),
            "odd kernel sizes",
        ));
    }
    if cfg.upsample_initial_channel >> ups == 0 || cfg.model_in_dim == 0 {
        return Err(reject(
            "upsample_initial_channel",
            cfg.upsample_initial_channel,
            &format!("at least 2^{ups} channels (one halving per upsampling) and model_in_dim > 0"),
        ));
    }
    Ok(())
}

impl HifiGan {
    /// Builds the vocoder from weights under `vb` (the root of `vocoder/model.safetensors`).
    pub fn new(vb: VarBuilder, cfg: &HifiGanConfig) -> Result<Self> {
        check(cfg)?;
        let c0 = cfg.upsample_initial_channel;
        let slope = cfg.leaky_relu_slope;
        let conv_pre = Conv1d::new(vb.pp("conv_pre"), (c0, cfg.model_in_dim, 7), 3, 1)?;
        let mut upsamplers = Vec::new();
        let mut resblocks = Vec::new();
        for (i, (&rate, &kernel)) in cfg
            .upsample_rates
            .iter()
            .zip(&cfg.upsample_kernel_sizes)
            .enumerate()
        {
            let (cin, cout) = (c0 >> i, c0 >> (i + 1));
            upsamplers.push(Conv1d::transposed(
                vb.pp("upsampler").pp(i),
                cin,
                cout,
                kernel,
                rate,
            )?);
            let n = cfg.resblock_kernel_sizes.len();
            let level = cfg
                .resblock_kernel_sizes
                .iter()
                .zip(&cfg.resblock_dilation_sizes)
                .enumerate()
                .map(|(j, (&k, dilations))| {
                    ResidualBlock::new(vb.pp("resblocks").pp(i * n + j), cout, k, dilations, slope)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            resblocks.push(level);
        }
        let last = c0 >> cfg.upsample_rates.len();
        let conv_post = Conv1d::new(vb.pp("conv_post"), (1, last, 7), 3, 1)?;
        let normalize = if cfg.normalize_before {
            Some((
                vb.get(cfg.model_in_dim, "mean")?,
                vb.get(cfg.model_in_dim, "scale")?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv_pre,
            upsamplers,
            resblocks,
            conv_post,
            normalize,
            config: cfg.clone(),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &HifiGanConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.conv_pre.weight.device()
    }

    /// The dtype the weights are held in.
    pub fn dtype(&self) -> DType {
        self.conv_pre.weight.dtype()
    }

    /// The waveforms `[batch, frames · hop_length]` of `spectrogram` (`[batch, frames, model_in_dim]`).
    pub fn forward(&self, spectrogram: &Tensor) -> Result<Tensor> {
        let (_, _, bins) = spectrogram.dims3()?;
        if bins != self.config.model_in_dim {
            return Err(Error::invalid(
                "spectrogram",
                format!(
                    "{bins} mel bins; the vocoder takes {} (vocoder/config.json model_in_dim)",
                    self.config.model_in_dim
                ),
            ));
        }
        let mut x = spectrogram.to_dtype(self.dtype())?;
        if let Some((mean, scale)) = &self.normalize {
            x = x.broadcast_sub(mean)?.broadcast_div(scale)?;
        }
        let mut x = self
            .conv_pre
            .forward(&x.transpose(1, 2)?.contiguous()?, None)?;
        let slope = self.config.leaky_relu_slope;
        for (upsampler, blocks) in self.upsamplers.iter().zip(&self.resblocks) {
            x = upsampler.forward(&x, Some(slope))?;
            let mut sum = blocks[0].forward(&x)?;
            for block in &blocks[1..] {
                sum = (sum + block.forward(&x)?)?;
            }
            x = (sum / blocks.len() as f64)?;
        }
        // transformers calls torch's leaky_relu with its default slope here.
        let x = self.conv_post.forward(&x, Some(0.01))?.tanh()?;
        Ok(x.squeeze(D::Minus2)?)
    }
}
