//! 1-D convolutions on the CPU, for the vocoder: a dilated convolution as im2col tiles times the weight matrix
//! (the tiles in parallel, each unfolded and multiplied by one thread), and a transposed convolution as one
//! product (every input position times every kernel tap) scattered into the output (col2im). Both take the leaky
//! ReLU that precedes every convolution of HiFi-GAN as they read their input, and use the `gemm` crate's kernels
//! through [`super::gemm::matmul`]; f32 arithmetic.

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor,
};

use rayon::prelude::*;

use super::gemm::{matmul, MatMut, MatRef};
use super::storage::{as_f32, from_f32};

/// The unfolded tile holds at most about this many f32 values (16 MiB).
const TILE_VALUES: usize = 1 << 22;

thread_local! {
    /// Each thread's unfolding buffer, kept between calls: a fresh one per tile would be paged in (and zeroed by
    /// the kernel) every time.
    static COLUMNS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The geometry and input activation of a 1-D convolution.
#[derive(Debug, Clone, Copy)]
pub struct Conv1dParams {
    /// Zeros added on both sides (the output's margin for a transposed convolution).
    pub padding: usize,
    /// Distance between taps (ordinary convolution: its dilation) or between the output positions of consecutive
    /// inputs (transposed convolution: its stride).
    pub step: usize,
    /// The negative slope of a leaky ReLU applied to the input first, if any.
    pub leaky_slope: Option<f32>,
}

/// `x` (`[batch, in, len]`) convolved with `weight` (`[out, in, k]`) plus `bias` (`[out]`): stride 1, taps
/// `p.step` apart, zero padding `p.padding` on both sides, as torch's `Conv1d` (on `leaky_relu(x)` when
/// `p.leaky_slope` is given).
pub fn conv1d(x: &Tensor, weight: &Tensor, bias: &Tensor, p: Conv1dParams) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &Conv1dOp(p))
}

/// `x` (`[batch, in, len]`) through the transposed convolution `weight` (`[in, out, k]`) plus `bias`, stride
/// `p.step`, as torch's `ConvTranspose1d` without output padding or dilation (on `leaky_relu(x)` when
/// `p.leaky_slope` is given).
pub fn conv_transpose1d(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    p: Conv1dParams,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3_no_bwd(
        &weight.contiguous()?,
        &bias.contiguous()?,
        &ConvTranspose1dOp(p),
    )
}

fn leaky_reference(x: &Tensor, slope: Option<f32>) -> Result<Tensor> {
    let x = x.to_dtype(candle_core::DType::F32)?;
    match slope {
        Some(slope) => {
            let zeros = x.zeros_like()?;
            x.maximum(&zeros)? + (x.minimum(&zeros)? * f64::from(slope))?
        }
        None => Ok(x),
    }
}

/// [`conv1d`] with candle's own ops (in f32): the kernel's reference.
pub fn conv1d_reference(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    p: Conv1dParams,
) -> Result<Tensor> {
    let f32 = candle_core::DType::F32;
    let y = leaky_reference(x, p.leaky_slope)?.conv1d(
        &weight.to_dtype(f32)?,
        p.padding,
        1,
        p.step,
        1,
    )?;
    y.broadcast_add(&bias.to_dtype(f32)?.reshape((1, (), 1))?)?
        .to_dtype(x.dtype())
}

/// [`conv_transpose1d`] with candle's own ops (in f32): the kernel's reference.
pub fn conv_transpose1d_reference(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    p: Conv1dParams,
) -> Result<Tensor> {
    let f32 = candle_core::DType::F32;
    let y = leaky_reference(x, p.leaky_slope)?.conv_transpose1d(
        &weight.to_dtype(f32)?,
        p.padding,
        0,
        p.step,
        1,
        1,
    )?;
    y.broadcast_add(&bias.to_dtype(f32)?.reshape((1, (), 1))?)?
        .to_dtype(x.dtype())
}

/// `v` through the leaky ReLU of negative slope `slope`.
fn leaky(v: f32, slope: f32) -> f32 {
    if v < 0.0 {
        v * slope
    } else {
        v
    }
}

fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

struct Conv1dOp(Conv1dParams);

impl CustomOp3 for Conv1dOp {
    fn name(&self) -> &'static str {
        "conv1d"
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
        let (batch, cin, len) = lx.shape().dims3()?;
        let (cout, win, k) = lw.shape().dims3()?;
        let (pad, dil) = (self.0.padding, self.0.step);
        let span = dil * (k.max(1) - 1) + 1;
        if win != cin
            || lb.shape().elem_count() != cout
            || k == 0
            || dil == 0
            || len + 2 * pad < span
        {
            bail!(
                "conv1d: input {:?}, weight {:?}, bias {:?}, padding {pad}, dilation {dil}",
                lx.shape(),
                lw.shape(),
                lb.shape()
            );
        }
        let out_len = len + 2 * pad - span + 1;
        let (x, w, bias) = (
            as_f32(sx, lx, "conv1d input")?,
            as_f32(sw, lw, "conv1d weight")?,
            as_f32(sb, lb, "conv1d bias")?,
        );
        let rows = cin * k;
        // At least one tile per thread, each small enough to stay in a few MiB.
        let tile = (TILE_VALUES / rows)
            .min(out_len.div_ceil(threads()))
            .clamp(1, out_len);
        let tiles: Vec<(usize, usize)> = (0..batch)
            .flat_map(|b| (0..out_len).step_by(tile).map(move |t0| (b, t0)))
            .collect();
        let slope = self.0.leaky_slope;
        let results = tiles
            .par_iter()
            .map(|&(b, t0)| -> Result<Vec<f32>> {
                let n = tile.min(out_len - t0);
                let xb = &x[b * cin * len..(b + 1) * cin * len];
                COLUMNS.with_borrow_mut(|buffer| -> Result<Vec<f32>> {
                    if buffer.len() < rows * n {
                        buffer.resize(rows * n, 0.0);
                    }
                    let cols = &mut buffer[..rows * n];
                    // cols[(c, tap), j] = act(x[c, t0 + j + tap·dil − pad]), zero outside the input.
                    for c in 0..cin {
                        let xc = &xb[c * len..(c + 1) * len];
                        for tap in 0..k {
                            let dst = &mut cols[(c * k + tap) * n..(c * k + tap + 1) * n];
                            let start = (t0 + tap * dil) as isize - pad as isize;
                            // The columns whose input position lies inside the input: [lo, hi); the rest are 0.
                            let lo = (-start).clamp(0, n as isize) as usize;
                            let hi = (len as isize - start).clamp(lo as isize, n as isize) as usize;
                            dst[..lo].fill(0.0);
                            dst[hi..].fill(0.0);
                            if hi > lo {
                                let from = (start + lo as isize) as usize;
                                let src = &xc[from..from + hi - lo];
                                match slope {
                                    Some(slope) => {
                                        for (d, &v) in dst[lo..hi].iter_mut().zip(src) {
                                            *d = leaky(v, slope);
                                        }
                                    }
                                    None => dst[lo..hi].copy_from_slice(src),
                                }
                            }
                        }
                    }
                    let mut out = vec![0f32; cout * n];
                    matmul(
                        MatMut {
                            data: &mut out,
                            rows: cout,
                            cols: n,
                            rs: n,
                            cs: 1,
                        },
                        MatRef::row_major(&w, cout, rows),
                        MatRef::row_major(cols, rows, n),
                        false,
                        1,
                    )?;
                    Ok(out)
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut out = vec![0f32; batch * cout * out_len];
        for (&(b, t0), part) in tiles.iter().zip(&results) {
            let n = tile.min(out_len - t0);
            for o in 0..cout {
                let dst = &mut out[(b * cout + o) * out_len + t0..][..n];
                for (d, &v) in dst.iter_mut().zip(&part[o * n..(o + 1) * n]) {
                    *d = v + bias[o];
                }
            }
        }
        Ok((
            from_f32(out, sx.dtype())?,
            Shape::from((batch, cout, out_len)),
        ))
    }
}

struct ConvTranspose1dOp(Conv1dParams);

impl CustomOp3 for ConvTranspose1dOp {
    fn name(&self) -> &'static str {
        "conv_transpose1d"
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
        let (batch, cin, len) = lx.shape().dims3()?;
        let (win, cout, k) = lw.shape().dims3()?;
        let (pad, stride) = (self.0.padding, self.0.step);
        let full = (len.max(1) - 1) * stride + k;
        if win != cin
            || lb.shape().elem_count() != cout
            || stride == 0
            || len == 0
            || full <= 2 * pad
        {
            bail!(
                "conv_transpose1d: input {:?}, weight {:?}, bias {:?}, padding {pad}, stride {stride}",
                lx.shape(),
                lw.shape(),
                lb.shape()
            );
        }
        let out_len = full - 2 * pad;
        let (x, w, bias) = (
            as_f32(sx, lx, "conv_transpose1d input")?,
            as_f32(sw, lw, "conv_transpose1d weight")?,
            as_f32(sb, lb, "conv_transpose1d bias")?,
        );
        let rows = cout * k;
        let mut cols = vec![0f32; rows * len];
        let mut out = vec![0f32; batch * cout * out_len];
        for b in 0..batch {
            let xb = &x[b * cin * len..(b + 1) * cin * len];
            let activated: Vec<f32>;
            let xb = match self.0.leaky_slope {
                Some(slope) => {
                    activated = xb.par_iter().map(|&v| leaky(v, slope)).collect();
                    &activated[..]
                }
                None => xb,
            };
            // cols[(o, tap), i] = Σ_c weight[c, o, tap] · x[c, i]
            matmul(
                MatMut {
                    data: &mut cols,
                    rows,
                    cols: len,
                    rs: len,
                    cs: 1,
                },
                MatRef::transpose_of(&w, cin, rows),
                MatRef::row_major(xb, cin, len),
                false,
                threads(),
            )?;
            // out[o, i·stride + tap − pad] += cols[(o, tap), i]
            let ob = &mut out[b * cout * out_len..(b + 1) * cout * out_len];
            ob.par_chunks_exact_mut(out_len)
                .enumerate()
                .for_each(|(o, row)| {
                    row.fill(bias[o]);
                    for tap in 0..k {
                        let src = &cols[(o * k + tap) * len..(o * k + tap + 1) * len];
                        for (i, &v) in src.iter().enumerate() {
                            let t = (i * stride + tap) as isize - pad as isize;
                            if t >= 0 && (t as usize) < out_len {
                                row[t as usize] += v;
                            }
                        }
                    }
                });
        }
        Ok((
            from_f32(out, sx.dtype())?,
            Shape::from((batch, cout, out_len)),
        ))
    }
}
