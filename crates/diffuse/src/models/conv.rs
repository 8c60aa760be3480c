//! 2-D convolution layers with diffusers' weight names (`weight` `[out, in, k, k]`, `bias` `[out]`).

use std::sync::Arc;

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::int8::{self, Int8Weights};
use crate::kernels::winograd_bf16::TransformedKernel;

use crate::kernels::train_conv::conv2d_tracked;

/// A square-kernel 2-D convolution with zero padding.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    padding: usize,
    stride: usize,
    int8: Option<Arc<Int8Weights>>,
    winograd: Arc<TransformedKernel>,
}

impl Conv2d {
    /// Reads `weight` (and `bias`) under `vb` for a `kernel`×`kernel` convolution.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        padding: usize,
        stride: usize,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get((out_channels, in_channels, kernel, kernel), "weight")?,
            bias: vb.get(out_channels, "bias")?,
            padding,
            stride,
            int8: Int8Weights::for_new_layer(),
            winograd: Arc::default(),
        })
    }

    /// A convolution stored without a bias (`bias=False`): reads `weight` only; the bias is zero.
    pub fn without_bias(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        padding: usize,
        stride: usize,
    ) -> candle_core::Result<Self> {
        let weight = vb.get((out_channels, in_channels, kernel, kernel), "weight")?;
        Ok(Self {
            bias: Tensor::zeros(out_channels, weight.dtype(), weight.device())?,
            weight,
            padding,
            stride,
            int8: Int8Weights::for_new_layer(),
            winograd: Arc::default(),
        })
    }

    /// The kernel `[out, in, k, k]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let tracked = crate::kernels::tracked(&[x, &self.weight, &self.bias]);
        if tracked && x.device().is_cpu() && x.dtype() == DType::F32 {
            // candle's CPU convolution has a slow backward pass; unfold and multiply instead.
            return conv2d_tracked(x, &self.weight, &self.bias, self.padding, self.stride);
        }
        if let Some(state) = &self.int8 {
            if let Some(y) = int8::conv2d(
                state,
                x,
                &self.weight,
                &self.bias,
                self.padding,
                self.stride,
            )? {
                return Ok(y);
            }
        }
        if x.device().is_cpu() && !tracked {
            return crate::kernels::conv2d_keeping(
                x,
                &self.weight,
                &self.bias,
                self.padding,
                self.stride,
                Some(self.winograd.clone()),
            );
        }
        // candle has no bf16 convolution on the CPU: compute in f32 there and round back.
        let widen = x.dtype() == DType::BF16 && x.device().is_cpu();
        let (input, weight) = if widen {
            (x.to_dtype(DType::F32)?, self.weight.to_dtype(DType::F32)?)
        } else {
            (x.clone(), self.weight.clone())
        };
        let y = input.conv2d(&weight, self.padding, self.stride, 1, 1)?;
        let bias = self.bias.to_dtype(y.dtype())?.reshape((1, (), 1, 1))?;
        let y = y.broadcast_add(&bias)?;
        if widen {
            y.to_dtype(DType::BF16)
        } else {
            Ok(y)
        }
    }
}
