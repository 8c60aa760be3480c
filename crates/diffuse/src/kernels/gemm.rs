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

/// `dst = lhs · rhs`, or `dst += lhs · rhs` with `accumulate`; `threads > 1` lets gemm split the work.
pub fn matmul(
    dst: MatMut,
    lhs: MatRef,
    rhs: MatRef,
    accumulate: bool,
    threads: usize,
) -> Result<()> {
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    if lhs.rows != m || rhs.rows != k || rhs.cols != n {
        bail!(
            "matmul shapes: dst {m}×{n}, lhs {}×{}, rhs {}×{}",
            lhs.rows,
            lhs.cols,
            rhs.rows,
            rhs.cols
        );
    }
    if !fits(dst.data.len(), m, n, dst.rs, dst.cs)
        || !fits(lhs.data.len(), m, k, lhs.rs, lhs.cs)
        || !fits(rhs.data.len(), k, n, rhs.rs, rhs.cs)
    {
        bail!("matmul view outside its buffer");
    }
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
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every element the views address lies inside its slice (checked above), `dst` is borrowed
    // mutably so nothing else reads or writes it, and the strides are non-negative.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            dst.cs as isize,
            dst.rs as isize,
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
    Ok(())
}

/// `lhs · rhs` as a fresh row-major matrix, the work split over candle's thread count (1 in each worker of
/// data-parallel training).
pub fn product(lhs: MatRef, rhs: MatRef) -> Result<Vec<f32>> {
    let (m, n) = (lhs.rows, rhs.cols);
    let mut out = vec![0f32; m * n];
    let dst = MatMut {
        data: &mut out,
        rows: m,
        cols: n,
        rs: n,
        cs: 1,
    };
    matmul(dst, lhs, rhs, false, candle_core::utils::get_num_threads())?;
    Ok(out)
}
