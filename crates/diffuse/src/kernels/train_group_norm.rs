//! GroupNorm for training on the CPU: a fused kernel with a hand-written backward pass (candle's composed
//! version spends most of its backward pass summing weight and bias gradients over non-trailing dimensions,
//! its slowest reduction).

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::storage::f32_slice;

/// GroupNorm of `x` (`[batch, channels, …]`, f32 on the CPU) with a backward pass, for training.
pub fn group_norm_tracked(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op3(weight, bias, FusedGroupNorm { groups, eps })
}

/// `(x − mean) / √(var + eps) · weight + bias` over groups of channels, on contiguous f32 CPU tensors.
struct FusedGroupNorm {
    groups: usize,
    eps: f64,
}

/// Per (batch item, group): the mean and 1/σ of `x` (`[batch, channels, spatial]` flattened).
fn statistics(
    x: &[f32],
    batch: usize,
    groups: usize,
    group_len: usize,
    eps: f64,
) -> Vec<(f32, f32)> {
    (0..batch * groups)
        .map(|bg| {
            let values = &x[bg * group_len..(bg + 1) * group_len];
            let mean = values.iter().map(|&v| v as f64).sum::<f64>() / group_len as f64;
            let var = values
                .iter()
                .map(|&v| (v as f64 - mean).powi(2))
                .sum::<f64>()
                / group_len as f64;
            (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
        })
        .collect()
}

impl FusedGroupNorm {
    /// (batch, channels, spatial size) of `dims`.
    fn split(dims: &[usize]) -> (usize, usize, usize) {
        (dims[0], dims[1], dims[2..].iter().product())
    }
}

impl CustomOp3 for FusedGroupNorm {
    fn name(&self) -> &'static str {
        "fused-group-norm"
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
        let x = f32_slice(s1, l1, "fused group-norm")?;
        let weight = f32_slice(s2, l2, "fused group-norm")?;
        let bias = f32_slice(s3, l3, "fused group-norm")?;
        let (batch, channels, spatial) = Self::split(l1.dims());
        if channels % self.groups != 0 || weight.len() != channels || bias.len() != channels {
            candle_core::bail!(
                "fused group-norm: {channels} channels, {} groups",
                self.groups
            )
        }
        let per_group = channels / self.groups;
        let stats = statistics(x, batch, self.groups, per_group * spatial, self.eps);
        let mut y = vec![0f32; x.len()];
        for b in 0..batch {
            for c in 0..channels {
                let (mean, rstd) = stats[b * self.groups + c / per_group];
                let (scale, shift) = (weight[c] * rstd, bias[c] - mean * rstd * weight[c]);
                let offset = (b * channels + c) * spatial;
                for (out, &v) in y[offset..offset + spatial]
                    .iter_mut()
                    .zip(&x[offset..offset + spatial])
                {
                    *out = v * scale + shift;
                }
            }
        }
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
        let dims = x.dims().to_vec();
        let (batch, channels, spatial) = Self::split(&dims);
        let per_group = channels / self.groups;
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let w = weight.to_vec1::<f32>()?;
        let dy = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let stats = statistics(&xs, batch, self.groups, per_group * spatial, self.eps);
        let mut dx = vec![0f32; xs.len()];
        let mut dw = vec![0f64; channels];
        let mut db = vec![0f64; channels];
        let n = (per_group * spatial) as f64;
        for b in 0..batch {
            for g in 0..self.groups {
                let (mean, rstd) = stats[b * self.groups + g];
                // Σ dxhat and Σ dxhat·xhat over the group, with dxhat = dy · weight.
                let (mut sum_d, mut sum_dx) = (0f64, 0f64);
                for c in g * per_group..(g + 1) * per_group {
                    let offset = (b * channels + c) * spatial;
                    let (mut s_dy, mut s_dy_xhat) = (0f64, 0f64);
                    for i in offset..offset + spatial {
                        let xhat = ((xs[i] - mean) * rstd) as f64;
                        s_dy += dy[i] as f64;
                        s_dy_xhat += dy[i] as f64 * xhat;
                    }
                    db[c] += s_dy;
                    dw[c] += s_dy_xhat;
                    sum_d += s_dy * w[c] as f64;
                    sum_dx += s_dy_xhat * w[c] as f64;
                }
                let (mean_d, mean_dx) = ((sum_d / n) as f32, (sum_dx / n) as f32);
                for (c, &wc) in w.iter().enumerate().skip(g * per_group).take(per_group) {
                    let offset = (b * channels + c) * spatial;
                    for i in offset..offset + spatial {
                        let xhat = (xs[i] - mean) * rstd;
                        dx[i] = rstd * (dy[i] * wc - mean_d - xhat * mean_dx);
                    }
                }
            }
        }
        let device = x.device();
        let to_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        Ok((
            Some(Tensor::from_vec(dx, dims.as_slice(), device)?),
            Some(Tensor::from_vec(to_f32(dw), channels, device)?),
            Some(Tensor::from_vec(to_f32(db), channels, device)?),
        ))
    }
}
