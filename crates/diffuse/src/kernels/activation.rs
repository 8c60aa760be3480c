//! Element-wise activations (SiLU, quick GELU, exact GELU) in one vectorized pass over contiguous f32, bf16 or
//! f16 data. candle composes quick GELU from four passes and computes `sigmoid` and `erf` with scalar libm
//! calls, which made them the text encoder's largest cost after its products.

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor,
};
use half::{bf16, f16};
use rayon::prelude::*;

use super::simd::multiversion;
use super::storage::{filled, Elem};
use super::vmath;

/// An activation the kernel computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pointwise {
    /// x · sigmoid(x).
    Silu,
    /// x · sigmoid(1.702 x), OpenAI CLIP's `quick_gelu`.
    QuickGelu,
    /// The exact GELU, x · (1 + erf(x / √2)) / 2.
    GeluErf,
}

/// `f` applied to every element of `x` (a CPU tensor; made contiguous first). No backward pass.
pub fn apply(x: &Tensor, f: Pointwise) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&Op(f))
}

/// The same composed from candle ops, the reference of the kernel.
pub fn reference(x: &Tensor, f: Pointwise) -> Result<Tensor> {
    match f {
        Pointwise::Silu => candle_nn::ops::silu(x),
        Pointwise::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
        Pointwise::GeluErf => x.gelu_erf(),
    }
}

/// Elements per parallel task.
const TASK: usize = 1 << 14;

struct Op(Pointwise);

impl CustomOp1 for Op {
    fn name(&self) -> &'static str {
        "pointwise-activation"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            bail!("pointwise-activation: the kernel needs a contiguous input");
        };
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(run(&v[start..end], self.0)),
            CpuStorage::BF16(v) => CpuStorage::BF16(run::<bf16>(&v[start..end], self.0)),
            CpuStorage::F16(v) => CpuStorage::F16(run::<f16>(&v[start..end], self.0)),
            other => bail!(
                "pointwise-activation: unsupported dtype {:?}",
                other.dtype()
            ),
        };
        Ok((out, l.shape().clone()))
    }
}

fn run<T: Elem>(x: &[T], f: Pointwise) -> Vec<T> {
    let mut out = filled(x.len(), T::default());
    out.par_chunks_mut(TASK)
        .zip(x.par_chunks(TASK))
        .for_each(|(o, x)| match f {
            Pointwise::Silu => silu(x, o),
            Pointwise::QuickGelu => quick_gelu(x, o),
            Pointwise::GeluErf => gelu_erf(x, o),
        });
    out
}

multiversion! {
    fn silu<T: Elem>(x: &[T], out: &mut [T]) {
        for (o, v) in out.iter_mut().zip(x) {
            *o = T::from_f32(vmath::silu(v.to_f32()));
        }
    }
}

multiversion! {
    fn quick_gelu<T: Elem>(x: &[T], out: &mut [T]) {
        for (o, v) in out.iter_mut().zip(x) {
            *o = T::from_f32(vmath::quick_gelu(v.to_f32()));
        }
    }
}

multiversion! {
    fn gelu_erf<T: Elem>(x: &[T], out: &mut [T]) {
        for (o, v) in out.iter_mut().zip(x) {
            *o = T::from_f32(vmath::gelu_erf(v.to_f32()));
        }
    }
}

/// `f` applied to every value of `values` in place, on the calling thread (a product's epilogue).
pub(crate) fn apply_in_place(values: &mut [f32], f: Pointwise) {
    match f {
        Pointwise::Silu => silu_in_place(values),
        Pointwise::QuickGelu => quick_gelu_in_place(values),
        Pointwise::GeluErf => gelu_erf_in_place(values),
    }
}

multiversion! {
    fn silu_in_place(values: &mut [f32]) {
        values.iter_mut().for_each(|v| *v = vmath::silu(*v));
    }
}

multiversion! {
    fn quick_gelu_in_place(values: &mut [f32]) {
        values.iter_mut().for_each(|v| *v = vmath::quick_gelu(*v));
    }
}

multiversion! {
    fn gelu_erf_in_place(values: &mut [f32]) {
        values.iter_mut().for_each(|v| *v = vmath::gelu_erf(*v));
    }
}
