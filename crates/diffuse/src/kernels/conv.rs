//! 2-D convolution on the CPU as im2col tiles times the weight matrix (the `gemm` crate's AVX-512/AVX2
//! kernels, chosen at run time): the input is unfolded a few output rows at a time, so the unfolded tile stays
//! a few MiB whatever the image size, and 1×1 convolutions multiply the input in place. Computes in f32.

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

use super::bf16_gemm::{self, pair, Bias, PackB, Problem, NR};
use super::gemm::{matmul, MatMut, MatRef};
use super::storage::{as_f32, filled, from_f32, Elem};
use super::winograd;
use super::winograd_bf16::{self, TransformedKernel};
use half::bf16;
use std::borrow::Cow;
use std::sync::Arc;

/// The unfolded tile holds at most about this many f32 values (8 MiB).
const TILE_VALUES: usize = 1 << 21;
/// The smallest plane (pixels) an f32 3×3 convolution takes Winograd's algorithm on.
pub const WINOGRAD_MIN_PIXELS: usize = 256;
/// The fewest input channels an f32 3×3 convolution takes Winograd's algorithm with.
pub const WINOGRAD_MIN_CHANNELS: usize = 16;
/// The most channel pairs (in × out) an f32 3×3 convolution takes Winograd's algorithm with: the transformed
/// kernel, made per call, then holds at most 256 MiB (SD 1.5's largest, 2560 → 1280 at 16×16 with F(2×2), takes
/// 210 MiB).
const WINOGRAD_MAX_CHANNEL_PAIRS: usize = 1 << 22;

/// `x` (`[batch, in, h, w]`) convolved with `weight` (`[out, in, kh, kw]`) plus `bias` (`[out]`), zero padding
/// `padding` on every side, step `stride`. CPU tensors of one dtype; f32 arithmetic, or bf16 products with f32
/// sums for bf16 tensors on AVX512-BF16.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    padding: usize,
    stride: usize,
) -> Result<Tensor> {
    conv2d_keeping(x, weight, bias, padding, stride, None)
}

/// [`conv2d`] for a layer that keeps what it can of its weight's preparation in `kept` (which must belong to
/// this `weight`): the Winograd-transformed kernel of a bf16 3×3 convolution.
pub fn conv2d_keeping(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    padding: usize,
    stride: usize,
    kept: Option<Arc<TransformedKernel>>,
) -> Result<Tensor> {
    let op = Conv2dOp {
        padding,
        stride,
        kept,
    };
    x.contiguous()?
        .apply_op3_no_bwd(&weight.contiguous()?, bias, &op)
}

/// The same convolution with candle's own `conv2d` (in f32), the reference of the kernel.
pub fn conv2d_reference(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    padding: usize,
    stride: usize,
) -> Result<Tensor> {
    let f32 = candle_core::DType::F32;
    let y = x
        .to_dtype(f32)?
        .conv2d(&weight.to_dtype(f32)?, padding, stride, 1, 1)?;
    y.broadcast_add(&bias.to_dtype(f32)?.reshape((1, (), 1, 1))?)?
        .to_dtype(x.dtype())
}

struct Conv2dOp {
    padding: usize,
    stride: usize,
    kept: Option<Arc<TransformedKernel>>,
}

/// The geometry of one convolution.
struct Geometry {
    batch: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
    pad: usize,
    stride: usize,
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "conv2d"
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
        let (batch, cin, h, w) = lx.shape().dims4()?;
        let (cout, win, kh, kw) = lw.shape().dims4()?;
        if win != cin || lb.shape().elem_count() != cout || self.stride == 0 {
            bail!(
                "conv2d: input {:?}, weight {:?}, bias {:?}, stride {}",
                lx.shape(),
                lw.shape(),
                lb.shape(),
                self.stride
            );
        }
        if h + 2 * self.padding < kh || w + 2 * self.padding < kw {
            bail!("conv2d: input {h}×{w} smaller than the kernel {kh}×{kw}");
        }
        let g = Geometry {
            batch,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            ho: (h + 2 * self.padding - kh) / self.stride + 1,
            wo: (w + 2 * self.padding - kw) / self.stride + 1,
            pad: self.padding,
            stride: self.stride,
        };
        let bias = as_f32(sb, lb, "conv2d bias")?;
        if let (CpuStorage::BF16(xs), CpuStorage::BF16(ws)) = (sx, sw) {
            let k = cin * kh * kw;
            if bf16_gemm::available() && k.is_multiple_of(2) {
                let (Some((x0, x1)), Some((w0, w1))) =
                    (lx.contiguous_offsets(), lw.contiguous_offsets())
                else {
                    bail!("conv2d: the kernel needs contiguous tensors");
                };
                let (x, w) = (&xs[x0..x1], &ws[w0..w1]);
                let shape = winograd::Shape {
                    batch,
                    cin,
                    cout,
                    h,
                    w: g.w,
                };
                let out = if uses_winograd_bf16(&g, &shape) {
                    let mut out = filled(batch * cout * h * g.w, bf16::ZERO);
                    winograd_bf16::conv3x3(&shape, x, w, self.kept.as_deref(), &bias, &mut out)?;
                    out
                } else {
                    forward_bf16(&g, x, w, &bias)?
                };
                return Ok((
                    CpuStorage::BF16(out),
                    Shape::from((batch, cout, g.ho, g.wo)),
                ));
            }
        }
        let x = as_f32(sx, lx, "conv2d input")?;
        let weight = as_f32(sw, lw, "conv2d weight")?;
        let out = forward(&g, &x, &weight, &bias)?;
        let shape = Shape::from((batch, cout, g.ho, g.wo));
        Ok((from_f32(out, sx.dtype())?, shape))
    }
}

fn forward(g: &Geometry, x: &[f32], weight: &[f32], bias: &[f32]) -> Result<Vec<f32>> {
    let plane = g.ho * g.wo;
    let mut out = filled(g.batch * g.cout * plane, 0f32);
    if plane == 0 {
        return Ok(out);
    }
    let threads = rayon::current_num_threads();
    if uses_winograd(g) {
        let shape = winograd::Shape {
            batch: g.batch,
            cin: g.cin,
            cout: g.cout,
            h: g.h,
            w: g.w,
        };
        winograd::conv3x3(&shape, x, weight, bias, &mut out, threads)?;
        return Ok(out);
    }
    let image = g.cin * g.h * g.w;
    if g.batch >= threads && threads > 1 {
        // One image per thread, each product single-threaded: no synchronization inside the products, and
        // the unfolding of one image overlaps the products of the others.
        out.par_chunks_mut(g.cout * plane)
            .zip(x.par_chunks(image))
            .try_for_each_init(Vec::new, |col, (output, input)| {
                forward_image(g, input, weight, bias, output, col, 1)
            })?;
    } else {
        let mut col = Vec::new();
        for (output, input) in out.chunks_mut(g.cout * plane).zip(x.chunks(image)) {
            forward_image(g, input, weight, bias, output, &mut col, threads)?;
        }
    }
    Ok(out)
}

/// Whether an f32 convolution runs as Winograd F(2×2, 3×3) or F(4×4, 3×3) ([`winograd`]; the tiling chosen by
/// the shape): 3×3, stride 1, padding 1, on planes and channel counts large enough for its products to stay
/// efficient, and kernels small enough for their transformed copy (16 or 36 values per channel pair, made per
/// call) to stay a modest transient.
fn uses_winograd(g: &Geometry) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.pad == 1
        && g.h * g.w >= WINOGRAD_MIN_PIXELS
        && g.cin >= WINOGRAD_MIN_CHANNELS
        && g.cin * g.cout <= WINOGRAD_MAX_CHANNEL_PAIRS
}

/// One image of [`forward`]: `output` (`[out, ho·wo]`) = bias + weights · unfolded `input`, the products
/// split over `threads`; `col` is the reusable unfolding buffer.
fn forward_image(
    g: &Geometry,
    input: &[f32],
    weight: &[f32],
    bias: &[f32],
    output: &mut [f32],
    col: &mut Vec<f32>,
    threads: usize,
) -> Result<()> {
    let plane = g.ho * g.wo;
    let k = g.cin * g.kh * g.kw;
    for (row, &b) in output.chunks_mut(plane).zip(bias) {
        row.fill(b);
    }
    let weights = MatRef {
        data: weight,
        rows: g.cout,
        cols: k,
        rs: k,
        cs: 1,
    };
    if g.kh == 1 && g.kw == 1 && g.pad == 0 && g.stride == 1 {
        let dst = MatMut {
            data: output,
            rows: g.cout,
            cols: plane,
            rs: plane,
            cs: 1,
        };
        let rhs = MatRef {
            data: input,
            rows: g.cin,
            cols: plane,
            rs: plane,
            cs: 1,
        };
        return matmul(dst, weights, rhs, true, threads);
    }
    let rows_per_tile = (TILE_VALUES / (k * g.wo).max(1)).clamp(1, g.ho);
    col.resize(k * rows_per_tile * g.wo, 0.0);
    let mut r0 = 0;
    while r0 < g.ho {
        let rows = rows_per_tile.min(g.ho - r0);
        let p = rows * g.wo;
        let col = &mut col[..k * p];
        unfold(g, input, r0, rows, col);
        let dst = MatMut {
            data: &mut output[r0 * g.wo..],
            rows: g.cout,
            cols: p,
            rs: plane,
            cs: 1,
        };
        let rhs = MatRef {
            data: col,
            rows: k,
            cols: p,
            rs: p,
            cs: 1,
        };
        matmul(dst, weights, rhs, true, threads)?;
        r0 += rows;
    }
    Ok(())
}

/// Whether a bf16 convolution runs as Winograd F(2×2, 3×3) ([`winograd_bf16`]): 3×3, stride 1, padding 1, a shape
/// it suits.
fn uses_winograd_bf16(g: &Geometry, shape: &winograd::Shape) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == 1 && g.pad == 1 && winograd_bf16::suits(shape)
}

/// `x` (`[batch, cin, h, w]`, bf16) convolved with a square `weight` (`[cout, cin, k, k]`, bf16, cin·k·k even)
/// plus `bias`, in f32: the forward pass of training's mixed-precision convolution.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d_bf16_to_f32(
    x: &[bf16],
    (batch, cin, h, w): (usize, usize, usize, usize),
    weight: &[bf16],
    cout: usize,
    kernel: usize,
    bias: &[f32],
    padding: usize,
    stride: usize,
) -> Result<Vec<f32>> {
    let g = Geometry {
        batch,
        cin,
        h,
        w,
        cout,
        kh: kernel,
        kw: kernel,
        ho: (h + 2 * padding - kernel) / stride + 1,
        wo: (w + 2 * padding - kernel) / stride + 1,
        pad: padding,
        stride,
    };
    if x.len() != batch * cin * h * w
        || weight.len() != cout * cin * kernel * kernel
        || bias.len() != cout
    {
        bail!("conv2d (bf16): buffers do not match the geometry");
    }
    if !(cin * kernel * kernel).is_multiple_of(2) {
        bail!(
            "conv2d (bf16): odd inner dimension {}",
            cin * kernel * kernel
        );
    }
    forward_bf16(&g, x, weight, bias)
}

/// The convolution as one bf16 product per image: weights (`[out, in·kh·kw]`, already row-major) times the
/// unfolded input, unfolded panel by panel straight into the dot-product instruction's pair order.
fn forward_bf16<T: Elem>(
    g: &Geometry,
    x: &[bf16],
    weight: &[bf16],
    bias: &[f32],
) -> Result<Vec<T>> {
    let plane = g.ho * g.wo;
    let k = g.cin * g.kh * g.kw;
    let mut out = filled(g.batch * g.cout * plane, T::default());
    let problem = Problem {
        m: g.cout,
        n: plane,
        k,
        batch: g.batch,
        a: weight,
        a_batch_stride: 0,
        c_rs: plane,
        c_batch_stride: g.cout * plane,
        bias: Bias::Rows(bias),
    };
    bf16_gemm::run(&problem, &Im2colPanels::new(g, x), &mut out)?;
    Ok(out)
}

/// Unfolds panels of [`NR`] output pixels from a bf16 input, zero-padded once up front so that every kernel
/// tap reads a plain (for stride 1, contiguous) run of the padded rows.
struct Im2colPanels<'a> {
    g: &'a Geometry,
    /// The input with `g.pad` zeros on every side: `[batch, cin, h + 2·pad, w + 2·pad]`.
    padded: Cow<'a, [bf16]>,
    /// Width of a padded row.
    wp: usize,
    /// Values per padded image.
    image: usize,
    /// Offset in a padded image of each unfolded row's kernel tap, `(ci · hp + ky) · wp + kx`.
    taps: Vec<usize>,
}

impl<'a> Im2colPanels<'a> {
    fn new(g: &'a Geometry, x: &'a [bf16]) -> Self {
        let (hp, wp) = (g.h + 2 * g.pad, g.w + 2 * g.pad);
        let padded = if g.pad == 0 {
            Cow::Borrowed(x)
        } else {
            let mut padded = filled(g.batch * g.cin * hp * wp, bf16::ZERO);
            padded
                .par_chunks_mut(hp * wp)
                .zip(x.par_chunks(g.h * g.w))
                .for_each(|(dst, src)| {
                    for (row, src_row) in dst[g.pad * wp..].chunks_mut(wp).zip(src.chunks(g.w)) {
                        row[g.pad..g.pad + g.w].copy_from_slice(src_row);
                    }
                });
            Cow::Owned(padded)
        };
        let taps = (0..g.cin)
            .flat_map(|ci| {
                (0..g.kh).flat_map(move |ky| (0..g.kw).map(move |kx| (ci * hp + ky) * wp + kx))
            })
            .collect();
        Self {
            g,
            padded,
            wp,
            image: g.cin * hp * wp,
            taps,
        }
    }
}

impl PackB for Im2colPanels<'_> {
    fn panel<'a>(&'a self, b: usize, j0: usize, panel: &'a mut [u32]) -> &'a [u32] {
        let g = self.g;
        let end = (j0 + NR).min(g.ho * g.wo);
        let image = &self.padded[b * self.image..(b + 1) * self.image];
        // The panel's columns as runs along output rows: (first column, length, padded offset of the run's
        // first receptive field).
        let mut runs = [(0, 0, 0); NR];
        let mut count = 0;
        let mut p = j0;
        while p < end {
            let (oy, ox) = (p / g.wo, p % g.wo);
            let len = (g.wo - ox).min(end - p);
            runs[count] = (p - j0, len, (oy * self.wp + ox) * g.stride);
            count += 1;
            p += len;
        }
        let used = end - j0;
        for (row, taps) in panel.chunks_exact_mut(NR).zip(self.taps.chunks_exact(2)) {
            for &(c0, len, base) in &runs[..count] {
                let (lo, hi) = (&image[taps[0] + base..], &image[taps[1] + base..]);
                let dst = &mut row[c0..c0 + len];
                if g.stride == 1 {
                    for ((d, &l), &h) in dst.iter_mut().zip(&lo[..len]).zip(&hi[..len]) {
                        *d = pair(l, h);
                    }
                } else {
                    for (i, d) in dst.iter_mut().enumerate() {
                        *d = pair(lo[i * g.stride], hi[i * g.stride]);
                    }
                }
            }
            row[used..].fill(0);
        }
        panel
    }
}

/// im2col of output rows `r0..r0 + rows`: row `(ci · kh + ky) · kw + kx` of `col` holds, for each output pixel
/// of the tile, the input value that kernel tap meets (0 in the padding).
fn unfold(g: &Geometry, input: &[f32], r0: usize, rows: usize, col: &mut [f32]) {
    let p = rows * g.wo;
    col.par_chunks_mut(p).enumerate().for_each(|(row, dst)| {
        let kx = row % g.kw;
        let ky = (row / g.kw) % g.kh;
        let ci = row / (g.kw * g.kh);
        let channel = &input[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        // Output columns whose input column ox · stride + kx − pad lies inside the image.
        let first = g.pad.saturating_sub(kx).div_ceil(g.stride).min(g.wo);
        let last = if g.w + g.pad > kx {
            ((g.w + g.pad - kx - 1) / g.stride + 1).min(g.wo)
        } else {
            0
        }
        .max(first);
        for (r, seg) in dst.chunks_exact_mut(g.wo).enumerate() {
            let iy = (r0 + r) * g.stride + ky;
            if iy < g.pad || iy - g.pad >= g.h {
                seg.fill(0.0);
                continue;
            }
            let src = &channel[(iy - g.pad) * g.w..(iy - g.pad + 1) * g.w];
            seg[..first].fill(0.0);
            seg[last..].fill(0.0);
            if g.stride == 1 {
                let ix0 = first + kx - g.pad;
                seg[first..last].copy_from_slice(&src[ix0..ix0 + (last - first)]);
            } else {
                for (ox, v) in seg[first..last].iter_mut().enumerate() {
                    *v = src[(first + ox) * g.stride + kx - g.pad];
                }
            }
        }
    });
}
