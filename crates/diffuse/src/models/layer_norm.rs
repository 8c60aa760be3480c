//! LayerNorm over the last dimension: candle's fused kernel for inference; when a gradient is being tracked
//! (candle's fused kernel has no backward pass), the training kernel on the CPU and plain differentiable ops
//! elsewhere.

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;

/// A LayerNorm with weight and bias (transformers' and diffusers' `nn.LayerNorm`).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    inner: candle_nn::LayerNorm,
}

/// Reads `weight` and `bias` (`[size]`) under `vb`.
pub fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<LayerNorm> {
    Ok(LayerNorm {
        inner: candle_nn::layer_norm(size, eps, vb)?,
    })
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let weight = self.inner.weight();
        match self.inner.bias() {
            Some(bias) if x.track_op() || weight.track_op() || bias.track_op() => {
                let eps = self.inner.eps() as f32;
                if x.device().is_cpu() && [x, weight, bias].iter().all(|t| t.dtype() == DType::F32)
                {
                    crate::kernels::train_layer_norm::layer_norm_tracked(x, weight, bias, eps)
                } else {
                    candle_nn::ops::layer_norm_slow(x, weight, bias, eps)
                }
            }
            _ => self.inner.forward(x),
        }
    }
}
