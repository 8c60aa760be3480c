//! Linear layers: candle's for inference, and for training on the CPU a version whose backward pass avoids
//! candle's slow reductions over leading dimensions (the bias gradient and the batch-broadcast weight).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Module, Shape, Tensor};
use candle_nn::VarBuilder;

/// `y = x · Wᵀ + b` over the last dimension, with PyTorch's weight layout `[out, in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
}

/// A linear layer with bias, reading `weight` and `bias` under `vb`.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> candle_core::Result<Linear> {
    Ok(Linear {
        inner: candle_nn::linear(in_dim, out_dim, vb)?,
    })
}

/// A linear layer without bias, reading `weight` under `vb`.
pub fn linear_no_bias(
    in_dim: usize,
    out_dim: usize,
    vb: VarBuilder,
) -> candle_core::Result<Linear> {
    Ok(Linear {
        inner: candle_nn::linear_no_bias(in_dim, out_dim, vb)?,
    })
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let weight = self.inner.weight();
        let bias = self.inner.bias();
        let tracked = x.track_op() || weight.track_op() || bias.is_some_and(Tensor::track_op);
        if !(tracked && x.device().is_cpu() && x.dtype() == DType::F32) {
            return self.inner.forward(x);
        }
        let dims = x.dims().to_vec();
        let in_dim = dims.last().copied().unwrap_or(0);
        let rows = x.elem_count() / in_dim.max(1);
        let y = x
            .contiguous()?
            .reshape((rows, in_dim))?
            .matmul(&weight.t()?)?;
        let y = match bias {
            Some(b) => y.apply_op2(b, BiasAdd)?,
            None => y,
        };
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = weight.dim(0)?;
        }
        y.reshape(out_dims)
    }
}

/// `x + b` for `x` `[rows, n]` and `b` `[n]`, with the bias gradient summed row by row.
struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(b)) = (s1, s2) else {
            candle_core::bail!("bias-add: expects f32 tensors")
        };
        let (Some((x0, x1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("bias-add: expects contiguous tensors")
        };
        let (x, b) = (&x[x0..x1], &b[b0..b1]);
        if b.is_empty() || x.len() % b.len() != 0 {
            candle_core::bail!("bias-add: {} values for a bias of {}", x.len(), b.len())
        }
        let mut y = x.to_vec();
        for row in y.chunks_exact_mut(b.len()) {
            for (v, bias) in row.iter_mut().zip(b) {
                *v += bias;
            }
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let n = b.elem_count();
        let g = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let mut sums = vec![0f32; n];
        for row in g.chunks_exact(n) {
            for (s, v) in sums.iter_mut().zip(row) {
                *s += v;
            }
        }
        Ok((
            Some(grad.clone()),
            Some(Tensor::from_vec(sums, n, b.device())?),
        ))
    }
}
