//! Linear layers for training on the CPU: a backward pass that avoids candle's slow reductions over leading
//! dimensions (the bias gradient and the batch-broadcast weight).

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use super::storage::f32_slice;

/// `y = x · Wᵀ + b` over the last dimension (f32 on the CPU) with a backward pass that avoids candle's slow
/// reductions over leading dimensions, for training.
pub fn linear_tracked(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
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
        let x = f32_slice(s1, l1, "bias-add")?;
        let b = f32_slice(s2, l2, "bias-add")?;
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
