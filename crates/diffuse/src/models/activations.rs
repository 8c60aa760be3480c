//! The activation functions the configs name, parsed once and applied by value.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Shape, Tensor};

use crate::kernels::activation::{self, Pointwise};
use crate::kernels::linear::Linear;
use crate::{Error, Result};

/// An activation function named in a model config (`act_fn`, `hidden_act`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu` / `swish`: x · sigmoid(x).
    Silu,
    /// `gelu`: the exact, erf-based GELU.
    Gelu,
    /// `gelu_pytorch_tanh` / `gelu_new`: the tanh approximation of GELU.
    GeluTanh,
    /// `quick_gelu`: x · sigmoid(1.702 x), as in OpenAI's CLIP.
    QuickGelu,
    /// `mish`: x · tanh(softplus(x)).
    Mish,
    /// `relu`.
    Relu,
}

impl Activation {
    /// The one-pass kernel's form of the activation, where it has one.
    fn kernel(self) -> Option<Pointwise> {
        match self {
            Activation::Silu => Some(Pointwise::Silu),
            Activation::QuickGelu => Some(Pointwise::QuickGelu),
            Activation::Gelu => Some(Pointwise::GeluErf),
            _ => None,
        }
    }

    /// The activation of `linear`'s output, applied as the product is written where the few-row kernel runs
    /// it ([`Linear::forward_activated`]), else after it.
    pub fn after_linear(self, linear: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(f) = self.kernel() {
            if let Some(y) = linear.forward_activated(x, f)? {
                return Ok(y);
            }
        }
        self.forward(&linear.forward(x)?)
    }

    /// Parses a config name; `file` and `key` name the source in errors.
    pub fn parse(name: &str, file: &str, key: &str) -> Result<Self> {
        Ok(match name {
            "silu" | "swish" => Activation::Silu,
            "gelu" => Activation::Gelu,
            "gelu_pytorch_tanh" | "gelu_new" => Activation::GeluTanh,
            "quick_gelu" => Activation::QuickGelu,
            "mish" => Activation::Mish,
            "relu" => Activation::Relu,
            other => {
                return Err(Error::unsupported(
                    file,
                    key,
                    other,
                    "one of silu, swish, gelu, gelu_pytorch_tanh, gelu_new, quick_gelu, mish, relu",
                ))
            }
        })
    }

    /// Applies the activation: on the CPU outside training, SiLU, quick GELU and the exact GELU run as one pass
    /// ([`crate::kernels::activation`]).
    pub fn forward(self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(f) = self.kernel().filter(|_| {
            x.device().is_cpu()
                && !x.track_op()
                && matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16)
        }) {
            return activation::apply(x, f);
        }
        match self {
            Activation::Silu if x.track_op() && x.device().is_cpu() && x.dtype() == DType::F32 => {
                x.contiguous()?.apply_op1(TrainingSilu)
            }
            Activation::Silu => candle_nn::ops::silu(x),
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Activation::Mish => x * x.exp()?.affine(1.0, 1.0)?.log()?.tanh()?,
            Activation::Relu => x.relu(),
        }
    }
}

/// x · sigmoid(x) in one pass forward and one backward (candle's SiLU backward takes six passes), for
/// training on the CPU in f32.
struct TrainingSilu;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + crate::kernels::vmath::exp(-x))
}

impl CustomOp1 for TrainingSilu {
    fn name(&self) -> &'static str {
        "training-silu"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("training-silu: expects a contiguous f32 tensor")
        };
        let out = data[start..end].iter().map(|&v| v * sigmoid(v)).collect();
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let dy = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let dx: Vec<f32> = xs
            .iter()
            .zip(&dy)
            .map(|(&v, &g)| {
                let s = sigmoid(v);
                g * s * (1.0 + v * (1.0 - s))
            })
            .collect();
        Ok(Some(Tensor::from_vec(dx, x.dims(), x.device())?))
    }
}
