//! LayerNorm over the last dimension for training on the CPU, with a hand-written backward pass: one parallel
//! pass per row each way, where the composed LayerNorm makes about ten passes forward and twenty backward,
//! its reductions on one thread.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::storage::f32_slice;

/// Values per parallel task, about.
const TASK_VALUES: usize = 1 << 14;

/// `(x − mean) / √(var + eps) · weight + bias` over the last dimension of f32 CPU tensors, differentiable in
/// all three.
pub fn layer_norm_tracked(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNorm { eps },
    )
}

struct LayerNorm {
    eps: f32,
}

/// The mean and 1/√(var + eps) of one row (the biased variance, as `nn.LayerNorm`).
fn statistics(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "train-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "train-layer-norm input")?;
        let w = f32_slice(s2, l2, "train-layer-norm weight")?;
        let b = f32_slice(s3, l3, "train-layer-norm bias")?;
        let n = l1.shape().dims().last().copied().unwrap_or(0);
        if n == 0 || w.len() != n || b.len() != n {
            candle_core::bail!(
                "train-layer-norm: rows of {n}, weight of {}, bias of {}",
                w.len(),
                b.len()
            )
        }
        let chunk = n * (TASK_VALUES / n).max(1);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(y, x)| {
                for (y, x) in y.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
                    let (mean, rstd) = statistics(x, self.eps);
                    for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
                        *y = (x - mean) * rstd * w + b;
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let w = weight.to_vec1::<f32>()?;
        let dy = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let n = w.len();
        let chunk = n * (TASK_VALUES / n).max(1);
        let mut dx = vec![0f32; xs.len()];
        // Each task sums its rows' weight and bias gradients; the tasks' sums are added at the end.
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(chunk)
            .zip(xs.par_chunks(chunk).zip(dy.par_chunks(chunk)))
            .map(|(dx, (x, dy))| {
                let (mut dw, mut db) = (vec![0f32; n], vec![0f32; n]);
                let mut xhat = vec![0f32; n];
                for ((dx, x), dy) in dx
                    .chunks_exact_mut(n)
                    .zip(x.chunks_exact(n))
                    .zip(dy.chunks_exact(n))
                {
                    let (mean, rstd) = statistics(x, self.eps);
                    // With g = dy·w: dx = rstd · (g − mean(g) − x̂ · mean(g · x̂)).
                    let (mut sum_g, mut sum_g_xhat) = (0f32, 0f32);
                    for i in 0..n {
                        xhat[i] = (x[i] - mean) * rstd;
                        let g = dy[i] * w[i];
                        sum_g += g;
                        sum_g_xhat += g * xhat[i];
                        dw[i] += dy[i] * xhat[i];
                        db[i] += dy[i];
                    }
                    let (mean_g, mean_g_xhat) = (sum_g / n as f32, sum_g_xhat / n as f32);
                    for i in 0..n {
                        dx[i] = rstd * (dy[i] * w[i] - mean_g - xhat[i] * mean_g_xhat);
                    }
                }
                (dw, db)
            })
            .collect();
        let (mut dw, mut db) = (vec![0f32; n], vec![0f32; n]);
        for (pw, pb) in &partials {
            dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), device)?),
            Some(Tensor::from_vec(dw, weight.shape(), device)?),
            Some(Tensor::from_vec(db, weight.shape(), device)?),
        ))
    }
}
