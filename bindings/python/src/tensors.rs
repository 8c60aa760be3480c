//! Tensors and images across the boundary: little-endian f32 bytes with a shape, and 8-bit RGB bytes, which
//! the Python side wraps with numpy (and torch, when installed) without a copy.

use candle_core::{DType, Device, Tensor};
use diffuse::pipelines::RgbImage;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors;

/// A tensor as `(f32 bytes, shape)`.
pub(crate) fn to_python<'py>(
    py: Python<'py>,
    tensor: &Tensor,
) -> PyResult<(Bound<'py, PyBytes>, Vec<usize>)> {
    let values = host_f32(tensor)?;
    Ok((
        PyBytes::new(py, &f32_bytes(&values)),
        tensor.dims().to_vec(),
    ))
}

/// A tensor's values as f32 on the host.
pub(crate) fn host_f32(tensor: &Tensor) -> PyResult<Vec<f32>> {
    tensor
        .to_dtype(DType::F32)
        .and_then(|t| t.to_device(&Device::Cpu))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| errors::to_py(e.into()))
}

/// Little-endian bytes of `values`.
pub(crate) fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// `(f32 bytes, shape)` from Python as a tensor on `device`; `what` names it in errors.
pub(crate) fn from_python(
    bytes: &[u8],
    shape: &[usize],
    device: &Device,
    what: &str,
) -> PyResult<Tensor> {
    let count: usize = shape.iter().product();
    if bytes.len() != count * 4 {
        return Err(PyValueError::new_err(format!(
            "{what}: {} bytes for shape {shape:?}, expected {} (float32)",
            bytes.len(),
            count * 4
        )));
    }
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
        .and_then(|t| t.to_device(device))
        .map_err(|e| errors::to_py(e.into()))
}

/// An RGB image from `(width, height, bytes)`; `what` names it in errors.
pub(crate) fn image(
    width: usize,
    height: usize,
    pixels: Vec<u8>,
    what: &str,
) -> PyResult<RgbImage> {
    if width == 0 || height == 0 || pixels.len() != width * height * 3 {
        return Err(PyValueError::new_err(format!(
            "{what}: {} bytes for a {width}×{height} RGB image, expected {}",
            pixels.len(),
            width * height * 3
        )));
    }
    Ok(RgbImage {
        width,
        height,
        pixels,
    })
}
