//! Weight-and-activation int8 ("W8A8") linear layers and convolutions on the CPU, for models built with
//! [`Quantization::Int8`]: weights quantized per output channel once (at the first product), activations
//! quantized at every product — per row (token) for linear layers, per image for convolutions — then multiplied
//! on the VNNI kernel ([`super::int8_gemm`]) with f32 results. Small layers (fewer than [`MIN_INNER`] inputs or
//! [`MIN_OUTPUTS`] outputs, e.g. a UNet's first and last convolutions) stay in f32.
//!
//! Which models are quantized is decided where they are built: the layers a constructor makes inside
//! [`building`] take the scope's quantization.

use std::cell::Cell;
use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

use super::int8_gemm::{
    self, max_abs, quantize_into, OutLayout, PackedInt8, RowBase, Rows, ZERO_POINT,
};
use super::storage::{filled, F32Values};
use crate::device::Quantization;

/// Layers with fewer inputs per output than this stay in f32.
pub const MIN_INNER: usize = 64;
/// Layers with fewer outputs than this stay in f32.
pub const MIN_OUTPUTS: usize = 16;

thread_local! {
    static SCOPE: Cell<Option<Quantization>> = const { Cell::new(None) };
}

/// Runs `build` with the layers it constructs (on this thread) quantized as `quantization` says. The scope is the
/// thread's: a rayon job this thread ran meanwhile would see it too, so models are never built inside rayon jobs
/// (they are not: loaders build them on the caller's thread).
pub fn building<T>(quantization: Option<Quantization>, build: impl FnOnce() -> T) -> T {
    /// Puts the outer scope back, also when `build` panics.
    struct Restore(Option<Quantization>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPE.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SCOPE.with(|s| s.replace(quantization)));
    build()
}

/// The quantization of the layers being built now.
pub fn current() -> Option<Quantization> {
    SCOPE.with(Cell::get)
}

/// A layer's int8 weights, packed at its first int8 product and shared by clones of the layer.
#[derive(Debug, Default)]
pub struct Int8Weights(OnceLock<PackedInt8>);

impl Int8Weights {
    /// The state a layer built now takes: `Some` inside an int8 [`building`] scope.
    pub fn for_new_layer() -> Option<Arc<Self>> {
        (current() == Some(Quantization::Int8)).then(Arc::default)
    }
}

/// Whether a product of `inner` inputs and `outputs` outputs on `x` runs in int8.
fn applies(x: &Tensor, weight: &Tensor, inner: usize, outputs: usize) -> bool {
    x.device().is_cpu()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && inner >= MIN_INNER
        && outputs >= MIN_OUTPUTS
        && int8_gemm::available()
        && !super::tracked(&[x, weight])
}

/// `x · Wᵀ + b` with `weight` `[n, k]` in int8, or `None` when the int8 path does not apply to this product.
pub fn linear(
    state: &Int8Weights,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let (n, k) = weight.dims2()?;
    if !applies(x, weight, k, n) || x.dims().last() != Some(&k) {
        return Ok(None);
    }
    let kp = k.next_multiple_of(4);
    let packed = match state.0.get() {
        Some(packed) => packed,
        None => {
            let w = weight.contiguous()?;
            let values = F32Values::of(&w, "int8 linear weight")?;
            let w = values.get();
            let packed = PackedInt8::pack(n, kp, |j, column| {
                column[..k].copy_from_slice(&w[j * k..(j + 1) * k]);
            });
            state.0.get_or_init(|| packed)
        }
    };
    let x = x.contiguous()?;
    let m = x.elem_count() / k;
    let xv = F32Values::of(&x, "int8 linear input")?;
    let mut bytes = filled(m * kp, ZERO_POINT);
    let mut scale = vec![0f32; m];
    bytes
        .par_chunks_mut(kp)
        .zip(scale.par_iter_mut())
        .zip(xv.get().par_chunks(k))
        .for_each(|((dst, s), row)| {
            let max = max_abs(row);
            *s = max / 127.0;
            quantize_into(row, if max > 0.0 { 127.0 / max } else { 0.0 }, dst);
        });
    let bias = bias
        .map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>())
        .transpose()?;
    let mut out = filled(m * n, 0f32);
    let rows = Rows {
        data: &bytes,
        m,
        base: RowBase::Strided(kp),
        segments: &[0],
        segment: kp,
        scale: &scale,
    };
    let layout = OutLayout {
        row_stride: n,
        col_stride: 1,
    };
    int8_gemm::run(&rows, packed, bias.as_deref(), layout, &mut out)?;
    let mut shape = x.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    Tensor::from_vec(out, shape, &Device::Cpu).map(Some)
}

/// `x` (`[batch, cin, h, w]`) convolved with `weight` (`[cout, cin, k, k]`) plus `bias`, zero padding `padding`,
/// step `stride`, in int8; `None` when the int8 path does not apply to this convolution.
pub fn conv2d(
    state: &Int8Weights,
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    padding: usize,
    stride: usize,
) -> Result<Option<Tensor>> {
    let (cout, cin, kh, kw) = weight.dims4()?;
    let (batch, xc, h, w) = x.dims4()?;
    if !applies(x, weight, cin * kh * kw, cout) || xc != cin || stride == 0 {
        return Ok(None);
    }
    let (hp, wp) = (h + 2 * padding, w + 2 * padding);
    if hp < kh || wp < kw {
        candle_core::bail!("conv2d: input {h}×{w} smaller than the kernel {kh}×{kw}");
    }
    let (ho, wo) = ((hp - kh) / stride + 1, (wp - kw) / stride + 1);
    let cp = cin.next_multiple_of(4);
    let packed = match state.0.get() {
        Some(packed) => packed,
        None => {
            let wt = weight.contiguous()?;
            let values = F32Values::of(&wt, "int8 conv2d weight")?;
            let wv = values.get();
            // Inner index kk = tap · cp + channel, taps in (ky, kx) order: the order of an output pixel's
            // segments in the channels-last input.
            let taps = kh * kw;
            let packed = PackedInt8::pack(cout, taps * cp, |j, column| {
                let kernel = &wv[j * cin * taps..(j + 1) * cin * taps];
                for (c, per_tap) in kernel.chunks_exact(taps).enumerate() {
                    for (tap, &v) in per_tap.iter().enumerate() {
                        column[tap * cp + c] = v;
                    }
                }
            });
            state.0.get_or_init(|| packed)
        }
    };
    let segments: Vec<usize> = (0..kh)
        .flat_map(|ky| (0..kw).map(move |kx| (ky * wp + kx) * cp))
        .collect();
    let bias = bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let x = x.contiguous()?;
    let xv = F32Values::of(&x, "int8 conv2d input")?;
    let plane = ho * wo;
    let mut out = filled(batch * cout * plane, 0f32);
    let mut bytes = filled(hp * wp * cp, ZERO_POINT);
    for (image, dst) in xv
        .get()
        .chunks(cin * h * w)
        .zip(out.chunks_mut(cout * plane))
    {
        let max = max_abs(image);
        let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
        // Channels last, quantized, inside a border of zeros (bytes of 128), one padded row per task.
        bytes[padding * wp * cp..(padding + h) * wp * cp]
            .par_chunks_mut(wp * cp)
            .enumerate()
            .for_each(|(y, row)| {
                let mut q = vec![0u8; w];
                for c in 0..cin {
                    quantize_into(&image[(c * h + y) * w..(c * h + y + 1) * w], inv, &mut q);
                    for (x, &v) in q.iter().enumerate() {
                        row[(padding + x) * cp + c] = v;
                    }
                }
            });
        let scale = vec![max / 127.0; plane];
        let rows = Rows {
            data: &bytes,
            m: plane,
            base: RowBase::Pixels {
                wo,
                wp,
                channels: cp,
                step: stride,
            },
            segments: &segments,
            segment: cp,
            scale: &scale,
        };
        let layout = OutLayout {
            row_stride: 1,
            col_stride: plane,
        };
        int8_gemm::run(&rows, packed, Some(&bias), layout, dst)?;
    }
    Tensor::from_vec(out, (batch, cout, ho, wo), &Device::Cpu).map(Some)
}
