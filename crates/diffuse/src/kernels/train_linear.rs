//! Linear layers for training on the CPU: `y = x · Wᵀ + b` as one candle op whose backward pass computes the
//! input, weight and bias gradients directly (candle's composition reduces over leading dimensions slowly and
//! leaves the transposed weight and the broadcast bias to its gradient store). Under
//! [`super::train_products::with_mixed_precision`] the products take bf16 operands.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use super::gemm::MatRef;
use super::storage::{f32_slice, F32Values};
use super::train_products::product;

/// `y = x · Wᵀ + b` over the last dimension (f32 on the CPU), differentiable in all three, for training.
pub fn linear_tracked(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let in_dim = dims.last().copied().unwrap_or(0);
    let (out_dim, weight_in) = weight.dims2()?;
    if weight_in != in_dim {
        candle_core::bail!(
            "train-linear: input {:?} against weight {:?}",
            x.shape(),
            weight.shape()
        );
    }
    let rows = x.elem_count() / in_dim.max(1);
    let x2 = x.contiguous()?.reshape((rows, in_dim))?;
    let weight = weight.contiguous()?;
    let y = match bias {
        Some(b) => x2.apply_op3(&weight, &b.contiguous()?, TrainLinear)?,
        None => x2.apply_op2(&weight, TrainLinear)?,
    };
    let mut out_dims = dims;
    if let Some(last) = out_dims.last_mut() {
        *last = out_dim;
    }
    y.reshape(out_dims)
}

/// `x · Wᵀ (+ b)` for `x` `[rows, in]`, `W` `[out, in]`, `b` `[out]`.
struct TrainLinear;

impl TrainLinear {
    fn forward(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        bias: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = "train-linear";
        let x = f32_slice(sx, lx, name)?;
        let w = f32_slice(sw, lw, name)?;
        let (rows, in_dim) = lx.shape().dims2()?;
        let (out_dim, _) = lw.shape().dims2()?;
        let mut y = product(
            MatRef::row_major(x, rows, in_dim),
            MatRef::transpose_of(w, out_dim, in_dim),
        )?;
        if let Some(b) = bias {
            if b.len() != out_dim {
                candle_core::bail!("{name}: a bias of {} for {out_dim} outputs", b.len());
            }
            for row in y.chunks_exact_mut(out_dim) {
                for (v, bias) in row.iter_mut().zip(b) {
                    *v += bias;
                }
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((rows, out_dim))))
    }

    /// The gradients of the input and the weight (each only when tracked), and the output gradient's column
    /// sums (the bias gradient).
    fn backward(
        &self,
        x: &Tensor,
        weight: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Vec<f32>)> {
        let (rows, in_dim) = x.dims2()?;
        let (out_dim, _) = weight.dims2()?;
        let grad = grad.contiguous()?;
        let dy = F32Values::of(&grad, "train-linear")?;
        let dy = dy.get();
        let d_x = if x.track_op() {
            let w = F32Values::of(weight, "train-linear")?;
            let dx = product(
                MatRef::row_major(dy, rows, out_dim),
                MatRef::row_major(w.get(), out_dim, in_dim),
            )?;
            Some(Tensor::from_vec(dx, (rows, in_dim), x.device())?)
        } else {
            None
        };
        let d_weight = if weight.track_op() {
            let xs = F32Values::of(x, "train-linear")?;
            let dw = product(
                MatRef::transpose_of(dy, rows, out_dim),
                MatRef::row_major(xs.get(), rows, in_dim),
            )?;
            Some(Tensor::from_vec(dw, (out_dim, in_dim), weight.device())?)
        } else {
            None
        };
        let mut sums = vec![0f32; out_dim];
        for row in dy.chunks_exact(out_dim) {
            for (s, v) in sums.iter_mut().zip(row) {
                *s += v;
            }
        }
        Ok((d_x, d_weight, sums))
    }
}

impl CustomOp2 for TrainLinear {
    fn name(&self) -> &'static str {
        "train-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward(sx, lx, sw, lw, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (d_x, d_weight, _) = self.backward(x, weight, grad)?;
        Ok((d_x, d_weight))
    }
}

impl CustomOp3 for TrainLinear {
    fn name(&self) -> &'static str {
        "train-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let bias = f32_slice(sb, lb, "train-linear")?;
        self.forward(sx, lx, sw, lw, Some(bias))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (d_x, d_weight, sums) = self.backward(x, weight, grad)?;
        let d_bias = if bias.track_op() {
            Some(Tensor::from_vec(sums, bias.shape(), bias.device())?)
        } else {
            None
        };
        Ok((d_x, d_weight, d_bias))
    }
}
