//! A differentiable convolution for training on the CPU: one candle op whose forward pass unfolds the input
//! (`im2col`) and multiplies it by the kernel, and whose backward pass computes the three gradients with two
//! more products and the unfolding's adjoint (`col2im`), each written once.
//!
//! candle's own CPU convolution computes the input gradient with a direct transposed convolution that is an
//! order of magnitude slower than the forward pass, and a convolution composed of candle ops leaves every
//! intermediate (the unfolded input, the product, the bias sum, the transposition) to candle's gradient store.
//! Under [`super::train_products::with_mixed_precision`] the products take bf16 operands.

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

    /// Calls `f(image_run, cols_run)` with matching runs of input pixels and unfolded entries: for every
    /// (channel, kernel offset, batch item, output row), the input pixels that row reads (padding skipped).
    fn for_each_run(&self, mut f: impl FnMut(Run, Run)) {
        let (oh, ow) = (self.out_height(), self.out_width());
        let k = self.kernel;
        let columns = self.batch * oh * ow;
        let (pad, stride) = (self.padding as isize, self.stride as isize);
        for c in 0..self.channels {
            for ky in 0..k {
                for kx in 0..k {
                    let row = (c * k + ky) * k + kx;
                    // The output columns whose input column lies inside the image.
                    let first = (0..ow)
                        .find(|&ox| ox as isize * stride + kx as isize - pad >= 0)
                        .unwrap_or(ow);
                    let last = (0..ow)
                        .rev()
                        .find(|&ox| {
                            ((ox as isize * stride + kx as isize - pad) as usize) < self.width
                        })
                        .map_or(0, |ox| ox + 1);
                    if first >= last {
                        continue;
                    }
                    let ix0 = (first as isize * stride + kx as isize - pad) as usize;
                    for b in 0..self.batch {
                        let image = (b * self.channels + c) * self.height * self.width;
                        for oy in 0..oh {
                            let iy = oy as isize * stride + ky as isize - pad;
                            if iy < 0 || iy >= self.height as isize {
                                continue;
                            }
                            f(
                                Run {
                                    start: image + iy as usize * self.width + ix0,
                                    step: self.stride,
                                },
                                Run {
                                    start: row * columns + (b * oh + oy) * ow + first,
                                    step: last - first,
                                },
                            );
                        }
                    }
                }
            }
        }
    }
}

/// A run of `len` values: in the image, `start` then every `step`-th; in the columns, `len` consecutive.
#[derive(Clone, Copy)]
struct Run {
    start: usize,
    step: usize,
}

/// Unfolds `[b, c, h, w]` into `[c·k·k, b·oh·ow]`.
fn unfold(g: &Geometry, input: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; g.channels * g.kernel * g.kernel * g.columns()];
    // `cols.step` is the run length; `image.step` the stride between the pixels read.
    g.for_each_run(|image, cols| {
        let dst = &mut out[cols.start..cols.start + cols.step];
        if image.step == 1 {
            dst.copy_from_slice(&input[image.start..image.start + cols.step]);
        } else {
            for (j, d) in dst.iter_mut().enumerate() {
                *d = input[image.start + j * image.step];
            }
        }
    });
    out
}

/// Folds `[c·k·k, b·oh·ow]` back into `[b, c, h, w]`, summing overlaps (the adjoint of [`unfold`]).
fn fold(g: &Geometry, cols: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; g.image_shape().elem_count()];
    g.for_each_run(|image, run| {
        let src = &cols[run.start..run.start + run.step];
        if image.step == 1 {
            for (d, v) in out[image.start..image.start + run.step].iter_mut().zip(src) {
                *d += v;
            }
        } else {
            for (j, v) in src.iter().enumerate() {
                out[image.start + j * image.step] += v;
            }
        }
    });
    out
}

/// `conv2d(x, weight) + bias` over (x `[b, c, h, w]`, weight `[o, c, k, k]`, bias `[o]`).
struct TrainConv(Geometry);

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
        let g = &self.0;
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
        // `y` is `[o, b·plane]`; the output is `[b, o, plane]` plus the bias.
        let mut out = vec![0f32; g.batch * o * plane];
        for (b, image) in out.chunks_exact_mut(o * plane).enumerate() {
            for (c, (dst, &bc)) in image.chunks_exact_mut(plane).zip(bias).enumerate() {
                let src = &y[c * columns + b * plane..c * columns + (b + 1) * plane];
                for (d, v) in dst.iter_mut().zip(src) {
                    *d = v + bc;
                }
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
        let g = &self.0;
        let o = weight.dim(0)?;
        let ckk = g.channels * g.kernel * g.kernel;
        let (plane, columns) = (g.out_height() * g.out_width(), g.columns());
        let grad = grad.contiguous()?;
        let dy = F32Values::of(&grad, self.name())?;
        // The output gradient as `[o, b·plane]`, and its sums for the bias.
        let mut dy_rows = vec![0f32; o * columns];
        let mut d_bias = vec![0f32; o];
        for (b, image) in dy.get().chunks_exact(o * plane).enumerate() {
            for (c, src) in image.chunks_exact(plane).enumerate() {
                dy_rows[c * columns + b * plane..c * columns + (b + 1) * plane]
                    .copy_from_slice(src);
                d_bias[c] += src.iter().sum::<f32>();
            }
        }
        let d_weight = if weight.track_op() {
            let x = F32Values::of(x, self.name())?;
            let cols = unfold(g, x.get());
            // dWᵀ = cols · dyᵀ: the unfolded input (the larger operand) is read in its own order.
            let dwt = product(
                MatRef::row_major(&cols, ckk, columns),
                MatRef::transpose_of(&dy_rows, o, columns),
            )?;
            let mut dw = vec![0f32; o * ckk];
            for (t, row) in dwt.chunks_exact(o).enumerate() {
                for (c, &v) in row.iter().enumerate() {
                    dw[c * ckk + t] = v;
                }
            }
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
        TrainConv(geometry),
    )
}
