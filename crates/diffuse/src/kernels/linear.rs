//! Linear layers (`y = x · Wᵀ + b`) whose bf16 products run on the AVX512-BF16 kernel when the CPU has it, with
//! the weights packed into the kernel's panels once, at the first such product; f32 products over a few hundred
//! rows (the text encoder's) run on [`super::few_rows_gemm`]; everything else goes through candle's matmul, as
//! candle-nn's `Linear` does, except in a model built for int8 ([`super::int8`]).

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Module, Result,
    Shape, Tensor,
};
use candle_nn::VarBuilder;
use half::bf16;
use rayon::prelude::*;
use std::sync::{Arc, OnceLock};

use super::activation::Pointwise;
use super::bf16_gemm::{self, pair, Bias, PackedPanels, Problem, NR};
use super::few_rows_gemm;
use super::int8::{self, Int8Weights};
use super::storage::{as_f32, filled, F32Values};

/// A linear layer with diffusers' weight names (`weight` `[out, in]`, optional `bias` `[out]`).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    packed: Arc<PackedWeight>,
    int8: Option<Arc<Int8Weights>>,
}

/// Wᵀ in the bf16 kernel's panels (made at the first bf16 product; shared by clones of the layer).
#[derive(Default)]
struct PackedWeight(OnceLock<Vec<u32>>);

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pairs = self.0.get().map_or(0, Vec::len);
        write!(f, "PackedWeight({pairs} pairs)")
    }
}

/// Reads a biased linear layer under `vb` (the signature of candle-nn's `linear`).
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear {
        weight: vb.get((out_dim, in_dim), "weight")?,
        bias: Some(vb.get(out_dim, "bias")?),
        packed: Arc::default(),
        int8: Int8Weights::for_new_layer(),
    })
}

/// Reads a bias-free linear layer under `vb` (the signature of candle-nn's `linear_no_bias`).
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear {
        weight: vb.get((out_dim, in_dim), "weight")?,
        bias: None,
        packed: Arc::default(),
        int8: Int8Weights::for_new_layer(),
    })
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let tracked =
            super::tracked(&[x, &self.weight]) || self.bias.as_ref().is_some_and(Tensor::track_op);
        if tracked && x.device().is_cpu() && x.dtype() == DType::F32 {
            return super::train_linear::linear_tracked(x, &self.weight, self.bias.as_ref());
        }
        if let Some(state) = &self.int8 {
            if let Some(y) = int8::linear(state, x, &self.weight, self.bias.as_ref())? {
                return Ok(y);
            }
        }
        let k = self.weight.dim(1)?;
        // candle's batched matmul mishandles non-contiguous 3-D inputs: always multiply a contiguous copy.
        let x = x.contiguous()?;
        if !tracked
            && x.device().is_cpu()
            && x.dtype() == DType::BF16
            && self.weight.dtype() == DType::BF16
            && bf16_gemm::available()
            && k.is_multiple_of(2)
        {
            let w = self.weight.contiguous()?;
            let op = LinearBf16 {
                packed: &self.packed.0,
            };
            return match &self.bias {
                Some(b) => x.apply_op3_no_bwd(&w, b, &op),
                None => x.apply_op2_no_bwd(&w, &op),
            };
        }
        if !tracked && self.takes_few_rows(&x)? {
            return few_rows(&x, &self.weight, self.bias.as_ref(), None);
        }
        let y = match x.rank() {
            2 => x.matmul(&self.weight.t()?)?,
            _ => x.broadcast_matmul(&self.weight.t()?)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

impl Linear {
    /// `f(x · Wᵀ + b)` with `f` applied as each block of the product is written, where the product runs on
    /// [`few_rows_gemm`] (an untracked f32 CPU input of few rows, a float model); `None` elsewhere, for the
    /// caller to apply `f` after [`Module::forward`].
    pub fn forward_activated(&self, x: &Tensor, f: Pointwise) -> Result<Option<Tensor>> {
        let tracked =
            super::tracked(&[x, &self.weight]) || self.bias.as_ref().is_some_and(Tensor::track_op);
        if tracked || self.int8.is_some() || !self.takes_few_rows(x)? {
            return Ok(None);
        }
        few_rows(&x.contiguous()?, &self.weight, self.bias.as_ref(), Some(f)).map(Some)
    }

    /// Whether an untracked product with `x` runs on [`few_rows_gemm`]: f32 on the CPU over its row range.
    fn takes_few_rows(&self, x: &Tensor) -> Result<bool> {
        let k = self.weight.dim(1)?;
        Ok(x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
            && few_rows_gemm::suits(x.elem_count() / k.max(1)))
    }
}

/// `f(x · Wᵀ + b)` in f32 on [`few_rows_gemm`] (x contiguous, its last dimension W's inputs), `f` the identity
/// when `None`.
fn few_rows(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    activation: Option<Pointwise>,
) -> Result<Tensor> {
    let (n, k) = weight.dims2()?;
    if x.dims().last() != Some(&k) {
        bail!(
            "linear: input {:?} against weight {:?}",
            x.dims(),
            weight.dims()
        );
    }
    let m = x.elem_count() / k.max(1);
    let w = weight.contiguous()?;
    let (xv, wv) = (
        F32Values::of(x, "linear input")?,
        F32Values::of(&w, "linear weight")?,
    );
    let bias = bias
        .map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>())
        .transpose()?;
    let mut y = filled(m * n, 0f32);
    let epilogue = few_rows_gemm::Epilogue {
        bias: bias.as_deref(),
        activation,
    };
    few_rows_gemm::linear(xv.get(), m, wv.get(), n, k, epilogue, &mut y)?;
    let mut shape = x.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    Tensor::from_vec(y, shape, x.device())
}

/// The bf16 product, with the layer's packed weights (packed here on first use).
struct LinearBf16<'a> {
    packed: &'a OnceLock<Vec<u32>>,
}

fn forward_bf16(
    packed: &OnceLock<Vec<u32>>,
    sx: &CpuStorage,
    lx: &Layout,
    sw: &CpuStorage,
    lw: &Layout,
    bias: Option<(&CpuStorage, &Layout)>,
) -> Result<(CpuStorage, Shape)> {
    let (CpuStorage::BF16(xs), CpuStorage::BF16(ws)) = (sx, sw) else {
        bail!("bf16 linear: expected bf16 input and weight");
    };
    let (Some((x0, x1)), Some((w0, w1))) = (lx.contiguous_offsets(), lw.contiguous_offsets())
    else {
        bail!("bf16 linear: the kernel needs contiguous tensors");
    };
    let (n, k) = lw.shape().dims2()?;
    let dims = lx.shape().dims();
    if dims.last() != Some(&k) {
        bail!(
            "bf16 linear: input {:?} against weight {:?}",
            dims,
            lw.shape()
        );
    }
    let m = lx.shape().elem_count() / k.max(1);
    let bias = bias.map(|(s, l)| as_f32(s, l, "linear bias")).transpose()?;
    let mut out = filled(m * n, bf16::ZERO);
    let problem = Problem {
        m,
        n,
        k,
        batch: 1,
        a: &xs[x0..x1],
        a_batch_stride: 0,
        c_rs: n,
        c_batch_stride: 0,
        bias: bias.as_deref().map_or(Bias::None, Bias::Cols),
    };
    let panels = packed.get_or_init(|| pack_weight(&ws[w0..w1], n, k));
    if panels.len() != n.div_ceil(NR) * k / 2 * NR {
        bail!("bf16 linear: packed weights of another shape than {n}×{k}");
    }
    bf16_gemm::run(&problem, &PackedPanels { panels, k }, &mut out)?;
    let mut shape = dims.to_vec();
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    Ok((CpuStorage::BF16(out), Shape::from(shape)))
}

impl CustomOp2 for LinearBf16<'_> {
    fn name(&self) -> &'static str {
        "linear-bf16"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        forward_bf16(self.packed, sx, lx, sw, lw, None)
    }
}

impl CustomOp3 for LinearBf16<'_> {
    fn name(&self) -> &'static str {
        "linear-bf16"
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
        if sb.dtype() != DType::BF16 && sb.dtype() != DType::F32 {
            bail!("bf16 linear: bias of dtype {:?}", sb.dtype());
        }
        forward_bf16(self.packed, sx, lx, sw, lw, Some((sb, lb)))
    }
}

/// Wᵀ (`[k, n]`, read from W `[n, k]`) as the kernel's panels, all of them: weight rows give the pairs directly.
fn pack_weight(w: &[bf16], n: usize, k: usize) -> Vec<u32> {
    let size = k / 2 * NR;
    let mut panels = filled(n.div_ceil(NR) * size, 0u32);
    panels
        .par_chunks_mut(size)
        .enumerate()
        .for_each(|(p, panel)| {
            for (c, row) in w[p * NR * k..].chunks(k).take(NR).enumerate() {
                for (kp, two) in row.chunks_exact(2).enumerate() {
                    panel[kp * NR + c] = pair(two[0], two[1]);
                }
            }
        });
    panels
}
