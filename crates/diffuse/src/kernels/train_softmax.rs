//! Softmax over the last dimension for training on the CPU: one parallel pass per row forward and backward.
//! candle's fused softmax has no backward pass, and its composed one (max, subtract, exp, sum, divide) makes
//! a dozen passes over the attention scores with the gradient, its reductions on one thread.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::storage::f32_slice;
use super::vmath;

/// Rows per parallel task, at least; a task covers about this many values.
const TASK_VALUES: usize = 1 << 14;

/// `softmax(x)` over the last dimension of an f32 tensor on the CPU, differentiable.
pub fn softmax_last_dim_tracked(x: &Tensor) -> candle_core::Result<Tensor> {
    x.apply_op1(Softmax)
}

/// The row length (last dimension) of `shape`, and rows per parallel task.
fn rows(shape: &Shape) -> (usize, usize) {
    let n = shape.dims().last().copied().unwrap_or(1).max(1);
    (n, (TASK_VALUES / n).max(1))
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "train-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "train-softmax")?;
        let (n, per_task) = rows(l.shape());
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(n * per_task)
            .zip(x.par_chunks(n * per_task))
            .for_each(|(y, x)| {
                for (y, x) in y.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
                    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for (y, &x) in y.iter_mut().zip(x) {
                        *y = vmath::exp(x - max);
                        sum += *y;
                    }
                    let inv = 1.0 / sum;
                    y.iter_mut().for_each(|y| *y *= inv);
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(y.apply_op2(&grad.contiguous()?, SoftmaxBackward)?))
    }
}

/// `dx = y ⊙ (dy − Σ dy ⊙ y)` row by row, from the softmax output `y` and the output gradient `dy`.
struct SoftmaxBackward;

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "train-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = f32_slice(s1, l1, "train-softmax-backward")?;
        let dy = f32_slice(s2, l2, "train-softmax-backward")?;
        if y.len() != dy.len() {
            candle_core::bail!(
                "train-softmax-backward: {} outputs, {} gradients",
                y.len(),
                dy.len()
            )
        }
        let (n, per_task) = rows(l1.shape());
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(n * per_task)
            .zip(y.par_chunks(n * per_task).zip(dy.par_chunks(n * per_task)))
            .for_each(|(dx, (y, dy))| {
                for ((dx, y), dy) in dx
                    .chunks_exact_mut(n)
                    .zip(y.chunks_exact(n))
                    .zip(dy.chunks_exact(n))
                {
                    let dot: f32 = y.iter().zip(dy).map(|(y, dy)| y * dy).sum();
                    for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
                        *dx = y * (dy - dot);
                    }
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}
