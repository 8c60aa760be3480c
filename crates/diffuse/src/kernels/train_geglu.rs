//! GEGLU for training on the CPU: value · gelu(gate) in one pass forward and one backward, with the vectorized
//! erf. candle's composition (a chunk copy, a scalar-erf GELU and a product) makes five passes forward, and its
//! backward makes more: one GELU derivative with scalar erf and exp, two products, and a zero-filled
//! gradient for each half of the input that the chunk's backward writes into.

use std::f32::consts::FRAC_1_SQRT_2;

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::storage::f32_slice;
use super::vmath;

/// 1 / √(2π), the standard normal density at 0.
const INV_SQRT_2PI: f32 = 0.398_942_3;
/// Rows per parallel task, at least; a task covers about this many outputs.
const TASK_VALUES: usize = 1 << 14;

/// value · gelu_erf(gate) where `h` = [value, gate] along the last dimension, for an f32 tensor on the CPU,
/// differentiable (the same values as [`super::geglu::geglu_reference`]).
pub fn geglu_tracked(h: &Tensor) -> Result<Tensor> {
    h.contiguous()?.apply_op1(TrainGeglu)
}

/// The half width `n` of rows of width `2n`, and rows per parallel task.
fn halves(shape: &Shape, op: &str) -> Result<(usize, usize)> {
    let width = shape.dims().last().copied().unwrap_or(0);
    if width == 0 || width % 2 != 0 {
        bail!("{op}: the last dimension must be even and positive, found {width}")
    }
    let n = width / 2;
    Ok((n, (TASK_VALUES / n).max(1)))
}

struct TrainGeglu;

impl CustomOp1 for TrainGeglu {
    fn name(&self) -> &'static str {
        "train-geglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = f32_slice(s, l, "train-geglu")?;
        let (n, per_task) = halves(l.shape(), "train-geglu")?;
        let mut out = vec![0f32; h.len() / 2];
        out.par_chunks_mut(n * per_task)
            .zip(h.par_chunks(2 * n * per_task))
            .for_each(|(out, h)| {
                for (o, h) in out.chunks_exact_mut(n).zip(h.chunks_exact(2 * n)) {
                    let (value, gate) = h.split_at(n);
                    for ((o, &v), &g) in o.iter_mut().zip(value).zip(gate) {
                        *o = v * vmath::gelu_erf(g);
                    }
                }
            });
        let mut dims = l.shape().dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(&self, h: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(h.apply_op2(&grad.contiguous()?, TrainGegluBackward)?))
    }
}

/// d value = dy · gelu(gate); d gate = dy · value · gelu′(gate), with gelu′(g) = Φ(g) + g · φ(g).
struct TrainGegluBackward;

impl CustomOp2 for TrainGegluBackward {
    fn name(&self) -> &'static str {
        "train-geglu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "train-geglu-backward";
        let h = f32_slice(s1, l1, op)?;
        let dy = f32_slice(s2, l2, op)?;
        if h.len() != 2 * dy.len() {
            bail!("{op}: {} inputs for {} output gradients", h.len(), dy.len())
        }
        let (n, per_task) = halves(l1.shape(), op)?;
        let mut dh = vec![0f32; h.len()];
        dh.par_chunks_mut(2 * n * per_task)
            .zip(
                h.par_chunks(2 * n * per_task)
                    .zip(dy.par_chunks(n * per_task)),
            )
            .for_each(|(dh, (h, dy))| {
                for ((dh, h), dy) in dh
                    .chunks_exact_mut(2 * n)
                    .zip(h.chunks_exact(2 * n))
                    .zip(dy.chunks_exact(n))
                {
                    let (d_value, d_gate) = dh.split_at_mut(n);
                    let (value, gate) = h.split_at(n);
                    for i in 0..n {
                        let g = gate[i];
                        let cdf = 0.5 * (1.0 + vmath::erf(g * FRAC_1_SQRT_2));
                        let pdf = INV_SQRT_2PI * vmath::exp(-0.5 * g * g);
                        d_value[i] = dy[i] * g * cdf;
                        d_gate[i] = dy[i] * value[i] * (cdf + g * pdf);
                    }
                }
            });
        Ok((CpuStorage::F32(dh), l1.shape().clone()))
    }
}
