//! A bounds-checked front to the `gemm` crate for f32 matrices given as slices with row and column strides.

use candle_core::{bail, Result};

/// A read-only `rows`×`cols` matrix: element (i, j) is `data[i · rs + j · cs]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    /// The elements (the view may use only part of them).
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Distance between rows.
    pub rs: usize,
    /// Distance between columns.
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows`×`cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose (`cols`×`rows`) of a row-major `rows`×`cols` matrix.
    pub fn transpose_of(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows: cols,
            cols: rows,
            rs: 1,
            cs: cols,
        }
    }
}

/// A writable matrix laid out as [`MatRef`] describes.
pub struct MatMut<'a> {
    /// The elements.
    pub data: &'a mut [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Distance between rows.
    pub rs: usize,
    /// Distance between columns.
    pub cs: usize,
}

fn fits(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < len
}

/// Checks that `lhs` (m×k) times `rhs` (k×n) fits an m×n destination laid out with `rs`, `cs` in `len` elements.
fn check(
    len: usize,
    m: usize,
    n: usize,
    rs: usize,
    cs: usize,
    lhs: &MatRef,
    rhs: &MatRef,
) -> Result<()> {
    let k = lhs.cols;
    if lhs.rows != m || rhs.rows != k || rhs.cols != n {
        bail!(
            "matmul shapes: dst {m}×{n}, lhs {}×{}, rhs {}×{}",
            lhs.rows,
            lhs.cols,
            rhs.rows,
            rhs.cols
        );
    }
    if !fits(len, m, n, rs, cs)
        || !fits(lhs.data.len(), m, k, lhs.rs, lhs.cs)
        || !fits(rhs.data.len(), k, n, rhs.rs, rhs.cs)
    {
        bail!("matmul view outside its buffer");
    }
    Ok(())
}

/// Runs gemm into the m×n matrix at `dst` (strides `rs`, `cs`), reading it first with `accumulate`.
///
/// # Safety
/// [`check`] passed for the destination's length, `dst` points at that many writable f32 (initialized when
/// `accumulate`), nothing else accesses them during the call, and m, n and k are positive.
unsafe fn run(
    dst: *mut f32,
    (m, n, rs, cs): (usize, usize, usize, usize),
    lhs: &MatRef,
    rhs: &MatRef,
    accumulate: bool,
    threads: usize,
) {
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    gemm::gemm(
        m,
        n,
        lhs.cols,
        dst,
        cs as isize,
        rs as isize,
        accumulate,
        lhs.data.as_ptr(),
        lhs.cs as isize,
        lhs.rs as isize,
        rhs.data.as_ptr(),
        rhs.cs as isize,
        rhs.rs as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    );
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` with `accumulate`; `threads > 1` lets gemm split the work.
pub fn matmul(
    dst: MatMut,
    lhs: MatRef,
    rhs: MatRef,
    accumulate: bool,
    threads: usize,
) -> Result<()> {
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    check(dst.data.len(), m, n, dst.rs, dst.cs, &lhs, &rhs)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst.data[i * dst.rs + j * dst.cs] = 0.0;
                }
            }
        }
        return Ok(());
    }
    // SAFETY: `check` passed, `dst` is borrowed mutably so nothing else reads or writes it, and its elements
    // are initialized.
    unsafe {
        run(
            dst.data.as_mut_ptr(),
            (m, n, dst.rs, dst.cs),
            &lhs,
            &rhs,
            accumulate,
            threads,
        )
    };
    Ok(())
}

/// `lhs · rhs` as a fresh row-major matrix, the work split over candle's thread count (1 in each worker of
/// data-parallel training). gemm writes every element, so the buffer is never zero-filled first.
pub fn product(lhs: MatRef, rhs: MatRef) -> Result<Vec<f32>> {
    let (m, n) = (lhs.rows, rhs.cols);
    if m == 0 || n == 0 || lhs.cols == 0 {
        check(m * n, m, n, n, 1, &lhs, &rhs)?;
        return Ok(vec![0f32; m * n]);
    }
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    check(m * n, m, n, n, 1, &lhs, &rhs)?;
    // SAFETY: `check` passed for the m·n elements of `out`'s capacity, which only this call can reach, and m,
    // n and k are positive. gemm without `accumulate` writes every element of the row-major destination and
    // reads none, so all m·n are initialized when `set_len` makes them visible.
    unsafe {
        run(
            out.as_mut_ptr(),
            (m, n, n, 1),
            &lhs,
            &rhs,
            false,
            candle_core::utils::get_num_threads(),
        );
        out.set_len(m * n);
    }
    Ok(out)
}
