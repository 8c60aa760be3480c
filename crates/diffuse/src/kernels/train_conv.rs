//! A differentiable convolution for training on the CPU: `im2col` and its adjoint `col2im` as candle custom
//! ops with backward passes, so that a convolution becomes one matrix product.
//!
//! candle's own CPU convolution computes the input gradient with a direct transposed convolution that is an
//! order of magnitude slower than the forward pass; unfolding the input and multiplying keeps both the forward
//! and the backward pass in matrix products.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::storage::f32_slice;

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

    /// The shape of the unfolded input: `[channels · k · k, batch · out_h · out_w]`.
    fn cols_shape(&self) -> Shape {
        Shape::from((
            self.channels * self.kernel * self.kernel,
            self.batch * self.out_height() * self.out_width(),
        ))
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
struct Im2Col(Geometry);

/// Folds `[c·k·k, b·oh·ow]` back into `[b, c, h, w]`, summing overlaps (the adjoint of [`Im2Col`]).
struct Col2Im(Geometry);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let input = f32_slice(storage, layout, self.name())?;
        let shape = self.0.cols_shape();
        let mut out = vec![0f32; shape.elem_count()];
        // `cols.step` is the run length; `image.step` the stride between the pixels read.
        self.0.for_each_run(|image, cols| {
            let dst = &mut out[cols.start..cols.start + cols.step];
            if image.step == 1 {
                dst.copy_from_slice(&input[image.start..image.start + cols.step]);
            } else {
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = input[image.start + j * image.step];
                }
            }
        });
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Col2Im(self.0))?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let cols = f32_slice(storage, layout, self.name())?;
        let shape = self.0.image_shape();
        let mut out = vec![0f32; shape.elem_count()];
        self.0.for_each_run(|image, run| {
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
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Im2Col(self.0))?))
    }
}

/// `conv2d(x, weight) + bias` through im2col and one matrix product; `x` is an f32 CPU tensor
/// `[b, c, h, w]`, `weight` `[o, c, k, k]`, `bias` `[o]`.
pub fn conv2d_im2col(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    padding: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    let (batch, channels, height, width) = x.dims4()?;
    let (out_channels, _, kernel, _) = weight.dims4()?;
    let geometry = Geometry {
        batch,
        channels,
        height,
        width,
        kernel,
        padding,
        stride,
    };
    let (oh, ow) = (geometry.out_height(), geometry.out_width());
    let cols = x.contiguous()?.apply_op1(Im2Col(geometry))?;
    let w = weight.reshape((out_channels, channels * kernel * kernel))?;
    // The bias is added along the last dimension, where candle's backward reduction is fast.
    w.matmul(&cols)?
        .broadcast_add(&bias.reshape((out_channels, 1))?)?
        .reshape((out_channels, batch, oh, ow))?
        .transpose(0, 1)?
        .contiguous()
}
