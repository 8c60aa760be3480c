//! `Downsample2D` and `Upsample2D`: the resolution changes between UNet and VAE levels.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::conv::Conv2d;

/// A stride-2 3×3 convolution; with `padding == 0` the input is first padded by one on the right and bottom,
/// as diffusers does for the VAE encoder.
pub struct Downsample2D {
    conv: Conv2d,
    pad_right_bottom: bool,
}

impl Downsample2D {
    /// Builds `conv` from weights under `vb`.
    pub fn new(vb: VarBuilder, channels: usize, padding: usize) -> candle_core::Result<Self> {
        Ok(Self {
            conv: Conv2d::new(vb.pp("conv"), channels, channels, 3, padding, 2)?,
            pad_right_bottom: padding == 0,
        })
    }

    /// Halves the height and width of `x`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.pad_right_bottom {
            let x = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
            self.conv.forward(&x)
        } else {
            self.conv.forward(x)
        }
    }
}

/// Nearest-neighbour upsampling (×2, or to a given size) followed by a 3×3 convolution.
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    /// Builds `conv` from weights under `vb`.
    pub fn new(vb: VarBuilder, channels: usize) -> candle_core::Result<Self> {
        Ok(Self {
            conv: Conv2d::new(vb.pp("conv"), channels, channels, 3, 1, 1)?,
        })
    }

    /// Upsamples `x` to `size` (height, width), or doubles it when `None`.
    pub fn forward(&self, x: &Tensor, size: Option<(usize, usize)>) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (th, tw) = size.unwrap_or((2 * h, 2 * w));
        self.conv.forward(&x.upsample_nearest2d(th, tw)?)
    }
}
