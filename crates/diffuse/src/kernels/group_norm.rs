//! GroupNorm, optionally fused with the SiLU that follows it in every resnet block: one pass for the
//! statistics (f32 sums in blocks, added in f64), one for normalize · scale + shift (+ SiLU), per (batch, group)
//! in parallel.

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp3, Layout, Module, Result, Shape, Tensor,
};
use candle_nn::VarBuilder;
use half::{bf16, f16};
use rayon::prelude::*;

use super::simd::multiversion;
use super::storage::{as_f32, filled, Elem};
use super::vmath::{self, LANES};
use crate::models::activations::Activation;

/// diffusers' `nn.GroupNorm(groups, channels, eps, affine=True)`, with the activation after it fused in.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

/// Reads a GroupNorm's `weight` and `bias` (`[channels]`) under `vb` (the signature of candle-nn's).
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    if groups == 0 || !channels.is_multiple_of(groups) {
        bail!("GroupNorm: {channels} channels cannot be split into {groups} groups");
    }
    Ok(GroupNorm {
        weight: vb.get(channels, "weight")?,
        bias: vb.get(channels, "bias")?,
        groups,
        eps,
    })
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        group_norm_silu(x, &self.weight, &self.bias, self.groups, self.eps, false)
    }
}

impl GroupNorm {
    /// act(GroupNorm(x)), in one pass when `act` is SiLU.
    pub fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        if act == Activation::Silu {
            group_norm_silu(x, &self.weight, &self.bias, self.groups, self.eps, true)
        } else {
            act.forward(&self.forward(x)?)
        }
    }
}

/// GroupNorm of `x` (`[batch, channels, …]`) with per-channel `weight` and `bias`, then SiLU when `silu`.
/// The fused kernel runs on the CPU; other devices compose candle ops.
pub fn group_norm_silu(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let tracked = super::tracked(&[x, weight, bias]);
    if tracked && x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && x.rank() >= 3 {
        let y = super::train_group_norm::group_norm_tracked(x, weight, bias, groups, eps)?;
        return if silu {
            Activation::Silu.forward(&y)
        } else {
            Ok(y)
        };
    }
    if tracked || !x.device().is_cpu() {
        let y = group_norm_reference(x, weight, bias, groups, eps)?;
        return if silu {
            candle_nn::ops::silu(&y)
        } else {
            Ok(y)
        };
    }
    let op = GroupNormOp { groups, eps, silu };
    x.contiguous()?.apply_op3_no_bwd(weight, bias, &op)
}

/// GroupNorm composed from candle ops (candle-nn's), the reference of the kernel.
pub fn group_norm_reference(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
) -> Result<Tensor> {
    let channels = x.dim(1)?;
    let norm = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?;
    candle_core::Module::forward(&norm, x)
}

struct GroupNormOp {
    groups: usize,
    eps: f64,
    silu: bool,
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "group-norm"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = lx.shape().dims();
        if dims.len() < 2 {
            bail!(
                "GroupNorm: input of shape {:?} has no channel dimension",
                dims
            );
        }
        let channels = dims[1];
        if self.groups == 0 || !channels.is_multiple_of(self.groups) {
            bail!("GroupNorm: {channels} channels, {} groups", self.groups);
        }
        let weight = as_f32(sw, lw, "GroupNorm weight")?;
        let bias = as_f32(sb, lb, "GroupNorm bias")?;
        if weight.len() != channels || bias.len() != channels {
            bail!(
                "GroupNorm: {channels} channels but {} weights",
                weight.len()
            );
        }
        let Some((start, end)) = lx.contiguous_offsets() else {
            bail!("GroupNorm: the kernel needs a contiguous input");
        };
        let spatial: usize = dims[2..].iter().product();
        let params = Params {
            cpg: channels / self.groups,
            spatial,
            groups: self.groups,
            eps: self.eps,
            silu: self.silu,
        };
        let out = match sx {
            CpuStorage::F32(v) => CpuStorage::F32(run(&v[start..end], &weight, &bias, &params)),
            CpuStorage::BF16(v) => {
                CpuStorage::BF16(run::<bf16>(&v[start..end], &weight, &bias, &params))
            }
            CpuStorage::F16(v) => {
                CpuStorage::F16(run::<f16>(&v[start..end], &weight, &bias, &params))
            }
            other => bail!("GroupNorm: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, lx.shape().clone()))
    }
}

struct Params {
    cpg: usize,
    spatial: usize,
    groups: usize,
    eps: f64,
    silu: bool,
}

fn run<T: Elem>(x: &[T], weight: &[f32], bias: &[f32], p: &Params) -> Vec<T> {
    let chunk = p.cpg * p.spatial;
    let mut out = filled(x.len(), T::default());
    if chunk == 0 {
        return out;
    }
    out.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .enumerate()
        .for_each(|(i, (out, x))| {
            let g = i % p.groups;
            // One pass over values shifted by the mean of an evenly spaced sample (within a small fraction of
            // a standard deviation of the mean, so the shifted sums do not cancel): mean = shift + Σd/n,
            // variance = Σd²/n − (Σd/n)².
            let step = x.len().div_ceil(SHIFT_SAMPLES);
            let sample = x.iter().step_by(step);
            let shift = (sample.clone().map(|v| f64::from(v.to_f32())).sum::<f64>()
                / sample.count() as f64) as f32;
            let (sum, sq) = sums(x, shift);
            let n = x.len() as f64;
            let shifted_mean = sum / n;
            let mean = f64::from(shift) + shifted_mean;
            let variance = (sq / n - shifted_mean * shifted_mean).max(0.0);
            let rstd = 1.0 / (variance + p.eps).sqrt();
            for c in 0..p.cpg {
                let ch = g * p.cpg + c;
                let scale = (weight[ch] as f64 * rstd) as f32;
                let shift = (bias[ch] as f64 - mean * weight[ch] as f64 * rstd) as f32;
                let range = c * p.spatial..(c + 1) * p.spatial;
                affine(&x[range.clone()], &mut out[range], scale, shift, p.silu);
            }
        });
    out
}

/// Values of a group whose mean shifts the group's sums.
const SHIFT_SAMPLES: usize = 256;

/// Values per block whose sums [`sums`] accumulates in f32 before adding them into its f64 totals.
const SUM_BLOCK: usize = 64 * LANES;

multiversion! {
    /// (Σ (x − shift), Σ (x − shift)²) in one pass: f32 lanes within blocks of [`SUM_BLOCK`] values, f64
    /// across blocks.
    fn sums<T: Elem>(x: &[T], shift: f32) -> (f64, f64) {
        let (mut s1, mut q1) = (0f64, 0f64);
        for block in x.chunks(SUM_BLOCK) {
            let mut s = [0f32; LANES];
            let mut q = [0f32; LANES];
            let mut chunks = block.chunks_exact(LANES);
            for chunk in &mut chunks {
                for i in 0..LANES {
                    let d = chunk[i].to_f32() - shift;
                    s[i] += d;
                    q[i] = d.mul_add(d, q[i]);
                }
            }
            for v in chunks.remainder() {
                let d = v.to_f32() - shift;
                s[0] += d;
                q[0] = d.mul_add(d, q[0]);
            }
            s1 += s.iter().map(|&v| f64::from(v)).sum::<f64>();
            q1 += q.iter().map(|&v| f64::from(v)).sum::<f64>();
        }
        (s1, q1)
    }
}

multiversion! {
    /// out = x · scale + shift, then SiLU when `silu`.
    fn affine<T: Elem>(x: &[T], out: &mut [T], scale: f32, shift: f32, silu: bool) {
        if silu {
            for (o, v) in out.iter_mut().zip(x) {
                *o = T::from_f32(vmath::silu(v.to_f32() * scale + shift));
            }
        } else {
            for (o, v) in out.iter_mut().zip(x) {
                *o = T::from_f32(v.to_f32() * scale + shift);
            }
        }
    }
}
