//! GEGLU, the transformer feed-forward's gate: `[…, 2n]` → value · gelu(gate) `[…, n]` in one pass (candle
//! needs a chunk copy, a scalar-erf GELU and a product, each a full pass over memory).

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D,
};
use half::{bf16, f16};
use rayon::prelude::*;

use super::simd::multiversion;
use super::storage::{filled, Elem};
use super::vmath;

/// value · gelu_erf(gate) where `h` = [value, gate] along the last dimension. CPU tensors only.
pub fn geglu(h: &Tensor) -> Result<Tensor> {
    h.contiguous()?.apply_op1_no_bwd(&Geglu)
}

/// The same composed from candle ops, the reference of the kernel.
pub fn geglu_reference(h: &Tensor) -> Result<Tensor> {
    let chunks = h.chunk(2, D::Minus1)?;
    &chunks[0] * chunks[1].gelu_erf()?
}

struct Geglu;

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "geglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims();
        let Some(&last) = dims.last() else {
            bail!("geglu: a scalar has no gate");
        };
        if last % 2 != 0 {
            bail!("geglu: odd last dimension {last}");
        }
        let Some((start, end)) = l.contiguous_offsets() else {
            bail!("geglu: the kernel needs a contiguous input");
        };
        let mut shape = dims.to_vec();
        shape[dims.len() - 1] = last / 2;
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(run(&v[start..end], last)),
            CpuStorage::BF16(v) => CpuStorage::BF16(run::<bf16>(&v[start..end], last)),
            CpuStorage::F16(v) => CpuStorage::F16(run::<f16>(&v[start..end], last)),
            other => bail!("geglu: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, Shape::from(shape)))
    }
}

fn run<T: Elem>(h: &[T], width: usize) -> Vec<T> {
    let n = width / 2;
    let mut out = filled(h.len() / 2, T::default());
    if n == 0 {
        return out;
    }
    let rows_per_task = (1 << 14) / n + 1;
    out.par_chunks_mut(rows_per_task * n)
        .zip(h.par_chunks(rows_per_task * width))
        .for_each(|(o, h)| {
            for (o, h) in o.chunks_exact_mut(n).zip(h.chunks_exact(width)) {
                let (value, gate) = h.split_at(n);
                row(value, gate, o);
            }
        });
    out
}

multiversion! {
    fn row<T: Elem>(value: &[T], gate: &[T], out: &mut [T]) {
        for ((o, v), g) in out.iter_mut().zip(value).zip(gate) {
            *o = T::from_f32(v.to_f32() * vmath::gelu_erf(g.to_f32()));
        }
    }
}
