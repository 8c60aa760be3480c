//! Random number generators that reproduce PyTorch's streams, so that a seed gives diffusers' image.
//!
//! - [`TorchCpuRng`]: `torch.Generator("cpu")`, what diffusers draws with when given a CPU generator
//!   (A1111 calls this RNG source "CPU").
//! - [`PhiloxRng`]: A1111's CPU port of torch's CUDA generator (A1111's RNG source "NV").

mod avx_mathfun;
mod mt19937;
mod philox;
mod torch_cpu;

pub use philox::PhiloxRng;
pub use torch_cpu::{BoxMullerKernel, TorchCpuRng};

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// A source of standard-normal noise, drawn as a torch generator draws it.
///
/// Every draw continues the same stream: the order of calls matters exactly as it does in diffusers.
pub trait NoiseSource: Send {
    /// Draws `shape.iter().product()` independent N(0, 1) samples in row-major order.
    fn randn(&mut self, shape: &[usize]) -> Vec<f32>;

    /// Draws a CPU tensor of `shape` as `torch.randn(shape, generator=g, dtype=dtype)` would.
    ///
    /// diffusers draws noise in the latents' dtype, and some generators (torch's CPU one) draw float16 and
    /// bfloat16 differently from float32. The default draws float32 and rounds to `dtype`.
    fn randn_dtype(&mut self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        if !matches!(dtype, DType::F16 | DType::BF16 | DType::F32 | DType::F64) {
            return Err(Error::invalid(
                "noise dtype",
                format!("normal noise is drawn in F16, BF16, F32 or F64, not {dtype:?}"),
            ));
        }
        let values = self.randn(shape);
        Ok(Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(dtype)?)
    }
}

/// Draws a tensor of standard-normal noise of `shape` in `dtype` from `source` (as torch draws in that dtype),
/// then moves it to `device`.
pub fn randn_tensor(
    source: &mut dyn NoiseSource,
    shape: &[usize],
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    Ok(source.randn_dtype(shape, dtype)?.to_device(device)?)
}
