//! Residual additions (`a + b`, one shape) of bf16 tensors in one vectorized pass: candle adds bf16 values one at a
//! time through f32, with a conversion call per element, on its own thread pool. The sums are rounded to nearest
//! (ties to even), as candle rounds them, so the values are the same.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

use super::bf16_gemm::to_bf16;
use super::simd::multiversion;
use super::storage::{filled, Elem};

/// Elements per parallel task.
const TASK: usize = 1 << 15;

/// `a + b`: on the kernel for contiguous bf16 CPU tensors of one shape with no gradient tracked, candle's addition
/// otherwise (other dtypes, broadcasting, strided views, other devices).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let suits = |t: &Tensor| t.dtype() == DType::BF16 && t.device().is_cpu() && t.is_contiguous();
    if suits(a) && suits(b) && a.shape() == b.shape() && !super::tracked(&[a, b]) {
        return a.apply_op2_no_bwd(b, &AddBf16);
    }
    a + b
}

struct AddBf16;

impl CustomOp2 for AddBf16 {
    fn name(&self) -> &'static str {
        "residual-add-bf16"
    }

    fn cpu_fwd(
        &self,
        sa: &CpuStorage,
        la: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::BF16(a), CpuStorage::BF16(b)) = (sa, sb) else {
            candle_core::bail!("residual-add-bf16: both tensors must be bf16");
        };
        let (Some((a0, a1)), Some((b0, b1))) = (la.contiguous_offsets(), lb.contiguous_offsets())
        else {
            candle_core::bail!("residual-add-bf16: the kernel needs contiguous tensors");
        };
        if la.shape() != lb.shape() {
            candle_core::bail!(
                "residual-add-bf16: shapes {:?} and {:?} differ",
                la.shape(),
                lb.shape()
            );
        }
        let (a, b) = (&a[a0..a1], &b[b0..b1]);
        let mut out = filled(a.len(), bf16::ZERO);
        out.par_chunks_mut(TASK)
            .zip(a.par_chunks(TASK).zip(b.par_chunks(TASK)))
            .for_each(|(o, (a, b))| sum(a, b, o));
        Ok((CpuStorage::BF16(out), la.shape().clone()))
    }
}

multiversion! {
    fn sum(a: &[bf16], b: &[bf16], out: &mut [bf16]) {
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = to_bf16(Elem::to_f32(x) + Elem::to_f32(y));
        }
    }
}
