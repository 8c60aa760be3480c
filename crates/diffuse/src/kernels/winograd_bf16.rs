//! 3×3 convolutions with stride 1 and padding 1 on bf16 tensors by Winograd's F(2×2, 3×3), as [`winograd`]
//! does in f32: 16 multiplications per 2×2 block of outputs and channel pair instead of 36. The transforms run in
//! f32 (the input's Bᵀ·d·B with [`winograd`]'s own routine, then rounded to bf16 straight into the dot-product
//! kernel's panel order; the kernel's G·g·Gᵀ rounded to bf16), the 16 products on [`bf16_gemm`] with f32
//! accumulation, and the output transform Aᵀ·m·A in f32 before the one rounding to the output type. Only
//! F(2×2): F(4×4)'s coefficients (up to 8, down to 1/24) on bf16 operands would cost more precision than bf16
//! has to spare.

use std::cell::RefCell;
use std::sync::OnceLock;

use candle_core::Result;
use half::bf16;
use rayon::prelude::*;

use super::bf16_gemm::{self, pair_rows, to_bf16, Bias, PackB, Problem, NR};
use super::storage::{filled, Elem, SharedOut};
use super::winograd::{
    self, pad_band, transform_input, transform_output, Band, Bands, OutputTile, Shape,
};

/// The smallest plane (pixels) a bf16 3×3 convolution takes Winograd's algorithm on: below it the transformed
/// kernel, streamed once per band, outweighs the products saved.
pub const MIN_PIXELS: usize = 256;
/// The fewest input and output channels a bf16 3×3 convolution takes Winograd's algorithm with: below it the
/// transforms, whose cost grows with the channels rather than with their pairs, outweigh the products saved.
pub const MIN_CHANNELS: usize = 128;

/// Channel pairs of the kernel one task transforms.
const KERNEL_BLOCK_PAIRS: usize = 1 << 16;

/// The transformed input, products and padded input of a band take at most about this many bytes.
const BAND_BYTES: usize = 16 << 20;

/// Whether a 3×3, stride 1, padding 1 convolution of this shape runs here: a plane of at least [`MIN_PIXELS`],
/// at least [`MIN_CHANNELS`] channels in and out, an even input channel count (the dot product's pairs), and
/// the bf16 kernel present.
pub fn suits(s: &Shape) -> bool {
    bf16_gemm::available()
        && s.h * s.w >= MIN_PIXELS
        && s.cin >= MIN_CHANNELS
        && s.cout >= MIN_CHANNELS
        && s.cin.is_multiple_of(2)
}

/// A layer's kernel as [`conv3x3`] multiplies it (G·g·Gᵀ in bf16, `[16, cout, cin]`): made at the layer's first
/// such convolution and kept, since making it costs a large part of a convolution on the smaller planes.
#[derive(Default)]
pub struct TransformedKernel(OnceLock<Vec<bf16>>);

impl std::fmt::Debug for TransformedKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let values = self.0.get().map_or(0, Vec::len);
        write!(f, "TransformedKernel({values} values)")
    }
}

/// `out` (`[batch, cout, h, w]`) = bias + the 3×3 convolution (stride 1, zero padding 1) of `x`
/// (`[batch, cin, h, w]`) with `weight` (`[cout, cin, 3, 3]`); `cin` must be even. With `kept`, the transformed
/// kernel is made once there (it must belong to this `weight`); without, per call.
pub fn conv3x3<T: Elem>(
    s: &Shape,
    x: &[bf16],
    weight: &[bf16],
    kept: Option<&TransformedKernel>,
    bias: &[f32],
    out: &mut [T],
) -> Result<()> {
    let plane = s.h * s.w;
    if x.len() != s.batch * s.cin * plane
        || weight.len() != s.cout * s.cin * 9
        || bias.len() != s.cout
        || out.len() != s.batch * s.cout * plane
    {
        candle_core::bail!("winograd conv (bf16): buffers do not match the shape");
    }
    if !s.cin.is_multiple_of(2) {
        candle_core::bail!("winograd conv (bf16): odd input channel count {}", s.cin);
    }
    if plane == 0 || s.batch == 0 || s.cout == 0 || s.cin == 0 {
        return Ok(());
    }
    let made;
    let u = match kept {
        Some(kept) => match kept.0.get() {
            Some(u) => u,
            None => {
                // Two threads may both make it; one copy is kept.
                let _ = kept.0.set(transform_weights(weight, s.cout, s.cin)?);
                kept.0.get().expect("the kernel was kept just above")
            }
        },
        None => {
            made = transform_weights(weight, s.cout, s.cin)?;
            &made
        }
    };
    if u.len() != 16 * s.cout * s.cin {
        candle_core::bail!("winograd conv (bf16): the kept kernel belongs to another shape");
    }
    let (th, tw) = (s.h.div_ceil(2), s.w.div_ceil(2));
    // Per tile: 16 bf16 values per input channel, 16 f32 products per output channel, and the 2×2 pixels of
    // each input channel in f32 (with padding, a little more).
    let most_rows = (BAND_BYTES / (16 * (3 * s.cin + 4 * s.cout) * tw)).max(1);
    let bands = Bands::plan(s.batch, th, most_rows);
    let ph = 2 * bands.rows + 2;
    let pw = 2 * tw + 2;
    let most_tiles = bands.images * bands.rows * tw;
    BUFFERS.with(|cell| {
        let mut fresh = Buffers::default();
        let mut kept = cell.try_borrow_mut();
        let buffers = match kept.as_mut() {
            Ok(kept) => &mut **kept,
            Err(_) => &mut fresh,
        };
        let padded = grown(&mut buffers.padded, bands.images * s.cin * ph * pw);
        let v = grown(
            &mut buffers.v,
            16 * most_tiles.div_ceil(NR) * s.cin / 2 * NR,
        );
        let m = grown(&mut buffers.m, 16 * s.cout * most_tiles);
        for band in bands.iter(s.batch, th) {
            run_band(s, &band, tw, x, u, bias, out, padded, v, m)?;
        }
        Ok(())
    })
}

thread_local! {
    /// The padded input, transformed input and products, kept by the calling thread between calls (they only
    /// grow), so that each call does not fault in fresh pages for them.
    static BUFFERS: RefCell<Buffers> = RefCell::default();
}

#[derive(Default)]
struct Buffers {
    padded: Vec<f32>,
    v: Vec<u32>,
    m: Vec<f32>,
}

/// The first `len` values of `buffer`, grown to hold them.
fn grown<T: Copy + Default>(buffer: &mut Vec<T>, len: usize) -> &mut [T] {
    if buffer.len() < len {
        buffer.resize(len, T::default());
    }
    &mut buffer[..len]
}

/// One band of the convolution (`tw` tiles per row), in the buffers given.
#[allow(clippy::too_many_arguments)]
fn run_band<T: Elem>(
    s: &Shape,
    band: &Band,
    tw: usize,
    x: &[bf16],
    u: &[bf16],
    bias: &[f32],
    out: &mut [T],
    padded: &mut [f32],
    v: &mut [u32],
    m: &mut [f32],
) -> Result<()> {
    let plane = s.h * s.w;
    let per_image = band.rows * tw;
    let tiles = band.images * per_image;
    let (ph, pw) = (2 * band.rows + 2, 2 * tw + 2);
    let images = band.first..band.first + band.images;
    let padded = &mut padded[..band.images * s.cin * ph * pw];
    pad_band(
        s,
        &x[images.start * s.cin * plane..images.end * s.cin * plane],
        2 * band.ty0,
        padded,
        pw,
    );
    let (pairs, count) = (s.cin / 2, tiles.div_ceil(NR));
    let v = &mut v[..16 * count * pairs * NR];
    fill_panels(v, pairs, padded, (ph, pw), tw, band);
    let m = &mut m[..16 * s.cout * tiles];
    // M_ξ (cout × tiles) = U_ξ (cout × cin) · V_ξ (cin × tiles), the 16 products as one batch.
    let problem = Problem {
        m: s.cout,
        n: tiles,
        k: s.cin,
        batch: 16,
        a: u,
        a_batch_stride: s.cout * s.cin,
        c_rs: tiles,
        c_batch_stride: s.cout * tiles,
        bias: Bias::None,
    };
    let panels = Panels {
        v,
        pairs,
        panels: count,
    };
    bf16_gemm::run(&problem, &panels, m)?;
    let m = &*m;
    out[images.start * s.cout * plane..images.end * s.cout * plane]
        .par_chunks_mut(plane)
        .enumerate()
        .for_each(|(plane_index, y)| {
            let (image, co) = (plane_index / s.cout, plane_index % s.cout);
            let m = &m[image * per_image..];
            transform_output(m, s, co, tiles, band.ty0, band.rows, bias[co], y)
        });
    Ok(())
}

/// U (`[16, cout, cin]`, bf16) = G·g·Gᵀ of every kernel g: [`winograd`]'s f32 transform (one small product)
/// over a block of output channels per task, rounded to bf16 into the block's rows of the 16 planes.
fn transform_weights(weight: &[bf16], cout: usize, cin: usize) -> Result<Vec<bf16>> {
    // Output channels per task: about 2¹⁶ channel pairs, a transient of 4 MiB of f32 transformed values.
    let block = (KERNEL_BLOCK_PAIRS / cin.max(1)).clamp(1, cout.max(1));
    let mut u = filled(16 * cout * cin, bf16::ZERO);
    let shared = SharedOut::new(&mut u);
    weight
        .par_chunks(block * cin * 9)
        .enumerate()
        .try_for_each(|(index, kernels)| -> Result<()> {
            let (co0, outputs) = (index * block, kernels.len() / (cin * 9));
            let wide: Vec<f32> = kernels.iter().map(|w| w.to_f32()).collect();
            let planes = winograd::transform_weights(OutputTile::Two, &wide, outputs, cin, 1)?;
            for (xi, plane) in planes.chunks_exact(outputs * cin).enumerate() {
                let start = (xi * cout + co0) * cin;
                // SAFETY: rows co0..co0 + outputs of plane ξ lie inside `u` (co0 + outputs ≤ cout) and only
                // this task (that block of output channels) writes them.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(shared.at(start), outputs * cin) };
                for (d, &v) in dst.iter_mut().zip(plane) {
                    *d = to_bf16(v);
                }
            }
            Ok(())
        })?;
    Ok(u)
}

/// The transformed input of a band as [`bf16_gemm`] panels: `v[((ξ · panels + j) · pairs + kp) · NR + c]` pairs
/// input channels 2·kp and 2·kp + 1 of entry ξ of tile j·NR + c (zero past the band's last tile).
struct Panels<'a> {
    v: &'a [u32],
    pairs: usize,
    panels: usize,
}

impl PackB for Panels<'_> {
    fn panel<'a>(&'a self, b: usize, j0: usize, _scratch: &'a mut [u32]) -> &'a [u32] {
        let size = self.pairs * NR;
        let start = (b * self.panels + j0 / NR) * size;
        &self.v[start..start + size]
    }
}

/// Writes [`Panels`] of `band` from its padded images (`[images, cin, ph, pw]`) into `v`, a channel pair per
/// task; tile t of the band is tile t mod (rows · tw) of its image t / (rows · tw).
fn fill_panels(
    v: &mut [u32],
    pairs: usize,
    padded: &[f32],
    (ph, pw): (usize, usize),
    tw: usize,
    band: &Band,
) {
    let per_image = band.rows * tw;
    let tiles = band.images * per_image;
    let panels = tiles.div_ceil(NR);
    assert_eq!(
        v.len(),
        16 * panels * pairs * NR,
        "winograd conv (bf16): panel buffer"
    );
    let shared = SharedOut::new(v);
    let channel_values = ph * pw;
    (0..pairs).into_par_iter().for_each_init(
        || (vec![0f32; 16 * tiles], vec![0f32; 16 * tiles], Vec::new()),
        |(lo, hi, scratch), kp| {
            for image in 0..band.images {
                let channel = |c: usize| {
                    let start = (image * 2 * pairs + c) * channel_values;
                    &padded[start..start + channel_values]
                };
                let at = image * per_image;
                transform_input(
                    channel(2 * kp),
                    pw,
                    tw,
                    0,
                    band.rows,
                    &mut lo[at..],
                    tiles,
                    scratch,
                );
                transform_input(
                    channel(2 * kp + 1),
                    pw,
                    tw,
                    0,
                    band.rows,
                    &mut hi[at..],
                    tiles,
                    scratch,
                );
            }
            for xi in 0..16 {
                let (lo, hi) = (
                    &lo[xi * tiles..(xi + 1) * tiles],
                    &hi[xi * tiles..(xi + 1) * tiles],
                );
                for j in 0..panels {
                    let start = ((xi * panels + j) * pairs + kp) * NR;
                    // SAFETY: this row of NR pairs lies inside `v` (16 entries of `panels` panels of `pairs`
                    // rows, checked above) and only this task (channel pair `kp`) writes it.
                    let row = unsafe { std::slice::from_raw_parts_mut(shared.at(start), NR) };
                    let t0 = j * NR;
                    let used = NR.min(tiles - t0);
                    pair_rows(&mut row[..used], &lo[t0..t0 + used], &hi[t0..t0 + used]);
                    row[used..].fill(0);
                }
            }
        },
    );
}
