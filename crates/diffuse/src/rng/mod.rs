//! Random number generators that reproduce PyTorch's streams, so that a seed gives diffusers' image.

use candle_core::{DType, Device, Tensor};

use crate::Result;

/// A source of standard-normal noise, drawn as a torch generator draws it.
///
/// Every draw continues the same stream: the order of calls matters exactly as it does in diffusers.
pub trait NoiseSource: Send {
    /// Draws `shape.iter().product()` independent N(0, 1) samples in row-major order.
    fn randn(&mut self, shape: &[usize]) -> Vec<f32>;
}

/// Draws a tensor of standard-normal noise of `shape` from `source`, then moves it to `device` and `dtype`.
pub fn randn_tensor(
    source: &mut dyn NoiseSource,
    shape: &[usize],
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let values = source.randn(shape);
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)?)
}
