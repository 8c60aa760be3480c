//! The activation functions the configs name, parsed once and applied by value.

use candle_core::Tensor;

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

    /// Applies the activation.
    pub fn forward(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Silu => candle_nn::ops::silu(x),
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Activation::Mish => x * x.exp()?.affine(1.0, 1.0)?.log()?.tanh()?,
            Activation::Relu => x.relu(),
        }
    }
}
