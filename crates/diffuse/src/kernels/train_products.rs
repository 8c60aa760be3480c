//! Mixed precision for training's products (PyTorch's bf16 autocast): the convolutions and linear layers of a
//! forward and backward pass run inside [`with_mixed_precision`] take bf16 operands with f32 accumulation on
//! the AVX512-BF16 kernel ([`super::bf16_gemm`]). Weights, activations and gradients stay f32; operands are
//! rounded to bf16 as they are packed for the kernel.

use std::borrow::Cow;
use std::cell::Cell;

use candle_core::Result;
use half::bf16;
use rayon::prelude::*;

use super::bf16_gemm::{self, pair_of, to_bf16, Bias, PackB, Problem, NR};
use super::gemm::MatRef;

thread_local! {
    static MIXED_PRECISION: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with this thread's training products in bf16 (`bf16` true) or f32, and restores the previous
/// choice afterwards. A forward pass and its backward pass must run inside one call on one thread
/// (`diffuse train --mixed-precision bf16` wraps each data-parallel worker's share).
pub fn with_mixed_precision<R>(bf16: bool, f: impl FnOnce() -> R) -> R {
    /// Puts the previous choice back, also when `f` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            MIXED_PRECISION.with(|m| m.set(self.0));
        }
    }
    let _restore = Restore(MIXED_PRECISION.with(|m| m.replace(bf16)));
    f()
}

/// Whether this thread's training products run in bf16: chosen with [`with_mixed_precision`] and supported
/// by this CPU (without AVX512-BF16 they stay f32).
pub fn mixed_precision() -> bool {
    MIXED_PRECISION.with(Cell::get) && bf16_gemm::available()
}

/// `values` rounded to bf16 (ties to even).
pub(crate) fn round(values: &[f32]) -> Vec<bf16> {
    let mut out = vec![bf16::ZERO; values.len()];
    out.par_chunks_mut(1 << 14)
        .zip(values.par_chunks(1 << 14))
        .for_each(|(dst, src)| {
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = to_bf16(v);
            }
        });
    out
}

/// The view's elements as a row-major matrix: borrowed when they already are, else copied (in cache-sized
/// tiles, for a transposed view).
fn row_major<'a>(v: &MatRef<'a>) -> Cow<'a, [f32]> {
    let (rows, cols) = (v.rows, v.cols);
    if v.cs == 1 && (v.rs == cols || rows <= 1) {
        return Cow::Borrowed(&v.data[..rows * cols]);
    }
    const TILE: usize = 32;
    let mut out = vec![0f32; rows * cols];
    out.par_chunks_mut(TILE * cols)
        .enumerate()
        .for_each(|(t, block)| {
            for j0 in (0..cols).step_by(TILE) {
                for j in j0..(j0 + TILE).min(cols) {
                    for (i, row) in block.chunks_exact_mut(cols).enumerate() {
                        row[j] = v.data[(t * TILE + i) * v.rs + j * v.cs];
                    }
                }
            }
        });
    Cow::Owned(out)
}

/// A view rounded into the kernel's left operand: row-major bf16 rows, the inner dimension padded with a zero
/// to an even length.
fn left_operand(a: &MatRef) -> Vec<bf16> {
    let (m, k) = (a.rows, a.cols);
    let rows = row_major(a);
    let k2 = k.next_multiple_of(2);
    let mut out = vec![bf16::ZERO; m * k2];
    out.par_chunks_mut(k2)
        .zip(rows.par_chunks(k.max(1)))
        .for_each(|(dst, src)| {
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = to_bf16(v);
            }
        });
    out
}

/// The right operand B (`k`×`n`) read from its row-major f32 rows: row pairs (2·kp, 2·kp + 1) interleaved,
/// a zero row past an odd `k`.
struct RowPairs<'a> {
    /// B's values.
    rows: &'a [f32],
    /// Rows of B.
    k: usize,
    /// Columns of B (the length of each row).
    n: usize,
}

impl PackB for RowPairs<'_> {
    fn panel<'a>(&'a self, _b: usize, j0: usize, scratch: &'a mut [u32]) -> &'a [u32] {
        let (k, n) = (self.k, self.n);
        let cols = NR.min(n - j0);
        for (kp, dst) in scratch.chunks_exact_mut(NR).enumerate() {
            let row = |r: usize| &self.rows[r * n + j0..r * n + j0 + cols];
            if 2 * kp + 1 < k {
                for ((d, &l), &h) in dst.iter_mut().zip(row(2 * kp)).zip(row(2 * kp + 1)) {
                    *d = pair_of(l, h);
                }
            } else {
                for (d, &l) in dst.iter_mut().zip(row(2 * kp)) {
                    *d = pair_of(l, 0.0);
                }
            }
            dst[cols..].fill(0);
        }
        scratch
    }
}

/// The right operand B = Mᵀ (`k`×`n`) of a row-major f32 matrix M (`n`×`k`): each of M's rows gives a
/// column of pairs, a zero past an odd `k`.
struct ColumnPairs<'a> {
    /// M's values.
    m: &'a [f32],
    /// Rows of B (M's row length).
    k: usize,
    /// Columns of B (M's rows).
    n: usize,
}

impl PackB for ColumnPairs<'_> {
    fn panel<'a>(&'a self, _b: usize, j0: usize, scratch: &'a mut [u32]) -> &'a [u32] {
        let (k, n) = (self.k, self.n);
        let cols = NR.min(n - j0);
        let pairs = k / 2;
        for c in 0..cols {
            let row = &self.m[(j0 + c) * k..(j0 + c + 1) * k];
            for (kp, two) in row.chunks_exact(2).enumerate() {
                scratch[kp * NR + c] = pair_of(two[0], two[1]);
            }
            if k % 2 == 1 {
                scratch[pairs * NR + c] = pair_of(row[k - 1], 0.0);
            }
        }
        for dst in scratch.chunks_exact_mut(NR) {
            dst[cols..].fill(0);
        }
        scratch
    }
}

/// `a · b` as a fresh row-major matrix: in bf16 operands (f32 accumulation) under [`with_mixed_precision`],
/// else in f32 ([`super::gemm::product`]).
pub(crate) fn product(a: MatRef, b: MatRef) -> Result<Vec<f32>> {
    if mixed_precision() {
        product_bf16(a, b)
    } else {
        super::gemm::product(a, b)
    }
}

/// `a · b` in bf16 operands, for views with any strides.
fn product_bf16(a: MatRef, b: MatRef) -> Result<Vec<f32>> {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if b.rows != k {
        candle_core::bail!("training product: {m}×{k} times {}×{n}", b.rows);
    }
    let mut out = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return Ok(out);
    }
    let a16 = left_operand(&a);
    let problem = Problem {
        m,
        n,
        k: k.next_multiple_of(2),
        batch: 1,
        a: &a16,
        a_batch_stride: 0,
        c_rs: n,
        c_batch_stride: 0,
        bias: Bias::None,
    };
    if b.rs == 1 && b.cs == k && b.data.len() >= n * k {
        // B is the transpose of a row-major n×k matrix.
        bf16_gemm::run(&problem, &ColumnPairs { m: b.data, k, n }, &mut out)?;
    } else {
        let rows = row_major(&b);
        let packer = RowPairs { rows: &rows, k, n };
        bf16_gemm::run(&problem, &packer, &mut out)?;
    }
    Ok(out)
}
