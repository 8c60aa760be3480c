//! A differentiable convolution for training on the CPU: one candle op whose forward pass unfolds the input
//! (`im2col`) and multiplies it by the kernel, and whose backward pass computes the three gradients with two
//! more products and the unfolding's adjoint (`col2im`), each written once.
//!
//! candle's own CPU convolution computes the input gradient with a direct transposed convolution that is an
//! order of magnitude slower than the forward pass, and a convolution composed of candle ops leaves every
//! intermediate (the unfolded input, the product, the bias sum, the transposition) to candle's gradient store.
//! Under [`super::train_products::with_mixed_precision`] the products take bf16 operands.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::conv::conv2d_bf16_to_f32;
use super::gemm::MatRef;
use super::storage::{f32_slice, F32Values};
use super::train_products::{mixed_precision, product, round};

/// The geometry of a square-kernel convolution over `[batch, channels, height, width]` inputs.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    batch: usize,
    channels: usize,
    height: usize,
    width: usize,
    kernel: usize,
    padding: usize,
    stride: usize,
}

impl Geometry {
    fn out_height(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }

    fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Columns of the unfolded input: one per output pixel of every batch item.
    fn columns(&self) -> usize {
        self.batch * self.out_height() * self.out_width()
    }

    fn image_shape(&self) -> Shape {
        Shape::from((self.batch, self.channels, self.height, self.width))
    }

    /// For kernel column `kx`: the output columns `first..last` whose input column lies inside the image, and
    /// the input column of `first`; `None` when there are none.
    fn inside(&self, kx: usize) -> Option<(usize, usize, usize)> {
        let ow = self.out_width();
        let input_column = |ox: usize| (ox * self.stride + kx) as isize - self.padding as isize;
        let first = (0..ow).find(|&ox| input_column(ox) >= 0).unwrap_or(ow);
        let last = (0..ow)
            .rev()
            .find(|&ox| input_column(ox) < self.width as isize)
            .map_or(0, |ox| ox + 1);
        (first < last).then(|| (first, last, input_column(first) as usize))
    }

    /// Calls `f(image_start, cols_start, len)` with matching runs of input pixels and unfolded entries: for
    /// every (channel, kernel offset, batch item, output row), the `len` input pixels that row reads (padding
    /// skipped), every `stride`-th from `image_start`, and their `len` consecutive entries from `cols_start`.
    fn for_each_run(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (oh, ow) = (self.out_height(), self.out_width());
        let k = self.kernel;
        let columns = self.batch * oh * ow;
        let (pad, stride) = (self.padding as isize, self.stride as isize);
        for c in 0..self.channels {
            for ky in 0..k {
                for kx in 0..k {
                    let row = (c * k + ky) * k + kx;
                    let Some((first, last, ix0)) = self.inside(kx) else {
                        continue;
                    };
                    for b in 0..self.batch {
                        let image = (b * self.channels + c) * self.height * self.width;
                        for oy in 0..oh {
                            let iy = oy as isize * stride + ky as isize - pad;
                            if iy < 0 || iy >= self.height as isize {
                                continue;
                            }
                            f(
                                image + iy as usize * self.width + ix0,
                                row * columns + (b * oh + oy) * ow + first,
                                last - first,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Unfolds `[b, c, h, w]` into `[c·k·k, b·oh·ow]`, written in order (padding as zeros, no zero-fill first).
fn unfold(g: &Geometry, input: &[f32]) -> Vec<f32> {
    let (oh, ow, k) = (g.out_height(), g.out_width(), g.kernel);
    let plane = g.height * g.width;
    let mut out = Vec::with_capacity(g.channels * k * k * g.columns());
    for c in 0..g.channels {
        for ky in 0..k {
            for kx in 0..k {
                let inside = g.inside(kx);
                for b in 0..g.batch {
                    let image = &input[(b * g.channels + c) * plane..][..plane];
                    for oy in 0..oh {
                        let iy = (oy * g.stride + ky) as isize - g.padding as isize;
                        let (first, last, ix0) = match inside {
                            Some(run) if iy >= 0 && (iy as usize) < g.height => run,
                            _ => {
                                out.resize(out.len() + ow, 0.0);
                                continue;
                            }
                        };
                        let row = &image[iy as usize * g.width..][..g.width];
                        out.resize(out.len() + first, 0.0);
                        if g.stride == 1 {
                            out.extend_from_slice(&row[ix0..ix0 + last - first]);
                        } else {
                            out.extend((0..last - first).map(|j| row[ix0 + j * g.stride]));
                        }
                        out.resize(out.len() + ow - last, 0.0);
                    }
                }
            }
        }
    }
    out
}

/// Folds `[c·k·k, b·oh·ow]` back into `[b, c, h, w]`, summing overlaps (the adjoint of [`unfold`]).
fn fold(g: &Geometry, cols: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; g.image_shape().elem_count()];
    g.for_each_run(|image, start, len| {
        let src = &cols[start..start + len];
        if g.stride == 1 {
            for (d, v) in out[image..image + len].iter_mut().zip(src) {
                *d += v;
            }
        } else {
            for (j, v) in src.iter().enumerate() {
                out[image + j * g.stride] += v;
            }
        }
    });
    out
}

/// `conv2d(x, weight) + bias` over (x `[b, c, h, w]`, weight `[o, c, k, k]`, bias `[o]`). The f32 forward pass
/// keeps its unfolded input for the weight gradient, which takes it (a second backward pass unfolds again).
struct TrainConv {
    geometry: Geometry,
    columns: Mutex<Option<Vec<f32>>>,
}

impl TrainConv {
    fn keep_columns(&self, cols: Vec<f32>) {
        if let Ok(mut kept) = self.columns.lock() {
            *kept = Some(cols);
        }
    }

    fn kept_columns(&self) -> Option<Vec<f32>> {
        self.columns.lock().ok().and_then(|mut kept| kept.take())
    }
}

impl CustomOp3 for TrainConv {
    fn name(&self) -> &'static str {
        "train-conv2d"
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
        let g = &self.geometry;
        let x = f32_slice(sx, lx, self.name())?;
        let w = f32_slice(sw, lw, self.name())?;
        let bias = f32_slice(sb, lb, self.name())?;
        let (o, ..) = lw.shape().dims4()?;
        let ckk = g.channels * g.kernel * g.kernel;
        let (plane, columns) = (g.out_height() * g.out_width(), g.columns());
        if w.len() != o * ckk || bias.len() != o || x.len() != g.image_shape().elem_count() {
            candle_core::bail!(
                "train-conv2d: input {:?}, weight {:?}, bias {:?}",
                lx.shape(),
                lw.shape(),
                lb.shape()
            );
        }
        let shape = Shape::from((g.batch, o, g.out_height(), g.out_width()));
        if mixed_precision() && ckk.is_multiple_of(2) {
            // The inference kernel's bf16 convolution, unfolding panel by panel, with f32 results.
            let dims = (g.batch, g.channels, g.height, g.width);
            let (x16, w16) = (round(x), round(w));
            let out = conv2d_bf16_to_f32(&x16, dims, &w16, o, g.kernel, bias, g.padding, g.stride)?;
            return Ok((CpuStorage::F32(out), shape));
        }
        let cols = unfold(g, x);
        let y = product(
            MatRef::row_major(w, o, ckk),
            MatRef::row_major(&cols, ckk, columns),
        )?;
        self.keep_columns(cols);
        // `y` is `[o, b·plane]`; the output is `[b, o, plane]` plus the bias.
        let mut out = Vec::with_capacity(g.batch * o * plane);
        for b in 0..g.batch {
            for (c, &bc) in bias.iter().enumerate() {
                let src = &y[c * columns + b * plane..c * columns + (b + 1) * plane];
                out.extend(src.iter().map(|v| v + bc));
            }
        }
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = &self.geometry;
        let o = weight.dim(0)?;
        let ckk = g.channels * g.kernel * g.kernel;
        let (plane, columns) = (g.out_height() * g.out_width(), g.columns());
        let grad = grad.contiguous()?;
        let dy = F32Values::of(&grad, self.name())?;
        // The output gradient as `[o, b·plane]`, and its sums for the bias.
        let dy = dy.get();
        let mut dy_rows = Vec::with_capacity(o * columns);
        for c in 0..o {
            for b in 0..g.batch {
                let start = (b * o + c) * plane;
                dy_rows.extend_from_slice(&dy[start..start + plane]);
            }
        }
        // Summed image by image, in the order of the batch.
        let d_bias: Vec<f32> = dy_rows
            .chunks_exact(columns.max(1))
            .map(|row| {
                row.chunks_exact(plane.max(1))
                    .fold(0.0, |acc, image| acc + image.iter().sum::<f32>())
            })
            .collect();
        let d_weight = if weight.track_op() {
            let cols = match self.kept_columns() {
                Some(cols) => cols,
                None => unfold(g, F32Values::of(x, self.name())?.get()),
            };
            // dWᵀ = cols · dyᵀ: the unfolded input (the larger operand) is read in its own order.
            let dwt = product(
                MatRef::row_major(&cols, ckk, columns),
                MatRef::transpose_of(&dy_rows, o, columns),
            )?;
            let dw: Vec<f32> = (0..o)
                .flat_map(|c| dwt.iter().skip(c).step_by(o).copied())
                .collect();
            Some(Tensor::from_vec(dw, weight.shape(), weight.device())?)
        } else {
            None
        };
        let d_x = if x.track_op() {
            let w = F32Values::of(weight, self.name())?;
            let d_cols = product(
                MatRef::transpose_of(w.get(), o, ckk),
                MatRef::row_major(&dy_rows, o, columns),
            )?;
            Some(Tensor::from_vec(fold(g, &d_cols), x.shape(), x.device())?)
        } else {
            None
        };
        let d_bias = if bias.track_op() {
            Some(Tensor::from_vec(d_bias, bias.shape(), bias.device())?)
        } else {
            None
        };
        Ok((d_x, d_weight, d_bias))
    }
}

/// `conv2d(x, weight) + bias` for training, differentiable in all three; `x` is an f32 CPU tensor
/// `[b, c, h, w]`, `weight` `[o, c, k, k]`, `bias` `[o]`.
pub fn conv2d_tracked(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    padding: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    let (batch, channels, height, width) = x.dims4()?;
    let (_, in_channels, kernel, kernel_w) = weight.dims4()?;
    if in_channels != channels || kernel != kernel_w || stride == 0 {
        candle_core::bail!(
            "train-conv2d: input {:?}, weight {:?}, stride {stride}",
            x.shape(),
            weight.shape()
        );
    }
    if height + 2 * padding < kernel || width + 2 * padding < kernel {
        candle_core::bail!(
            "train-conv2d: input {height}×{width} smaller than the kernel {kernel}×{kernel}"
        );
    }
    let geometry = Geometry {
        batch,
        channels,
        height,
        width,
        kernel,
        padding,
        stride,
    };
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        TrainConv {
            geometry,
            columns: Mutex::new(None),
        },
    )
}
