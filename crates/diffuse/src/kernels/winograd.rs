//! 3×3 convolutions with stride 1 and padding 1, in f32, by Winograd's minimal filtering F(2×2, 3×3) (Lavin and
//! Gray, 2016): a 2×2 block of outputs costs 16 multiplications per channel pair instead of 36. The input is
//! cut into overlapping 4×4 tiles and transformed (Bᵀ·d·B, additions only), the kernel is transformed (G·g·Gᵀ,
//! itself one small matrix product per call, so no transformed copy of the weights is kept), the 16 transformed
//! planes are multiplied as 16 independent matrix products (`gemm`), and each product is folded back into 2×2
//! outputs (Aᵀ·m·A). Tiles go in bands of rows, so the transformed data stays a few MiB whatever the image.
//! Large planes take F(4×4, 3×3) instead: 6×6 input tiles, 36 products, 4×4 outputs per tile.

use candle_core::Result;
use rayon::prelude::*;

use super::gemm::{matmul, MatMut, MatRef};
use super::storage::{filled, Elem};
use super::winograd_avx512;

/// The transformed input and products of a band hold at most about this many f32 values (16 MiB).
const BAND_VALUES: usize = 1 << 22;

/// G (4×3), the kernel transform.
const G: [[f32; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// The smallest plane (pixels) F(4×4, 3×3) is used on.
pub const F4_MIN_PIXELS: usize = 128 * 128;
/// The fewest input channels F(4×4, 3×3) is used with.
pub const F4_MIN_CHANNELS: usize = 256;

/// G (6×3), the kernel transform of F(4×4, 3×3) (interpolation points 0, ±1, ±2 and ∞).
const G4: [[f32; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// Bᵀ (6×6), the input transform of F(4×4, 3×3).
const BT4: [[f32; 6]; 6] = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
];

/// Aᵀ (4×6), the output transform of F(4×4, 3×3).
const AT4: [[f32; 6]; 4] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
];

/// The shape of one convolution.
pub struct Shape {
    /// Images.
    pub batch: usize,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Image height (input and output).
    pub h: usize,
    /// Image width (input and output).
    pub w: usize,
}

/// `out` (`[batch, cout, h, w]`) = bias + the 3×3 convolution (stride 1, zero padding 1) of `x`
/// (`[batch, cin, h, w]`) with `weight` (`[cout, cin, 3, 3]`), products split over `threads`.
pub fn conv3x3(
    s: &Shape,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    out: &mut [f32],
    threads: usize,
) -> Result<()> {
    conv3x3_tiled(OutputTile::for_shape(s), s, x, weight, bias, out, threads)
}

/// The side of the output block each tile yields: F(2×2, 3×3) or F(4×4, 3×3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputTile {
    /// 2×2 outputs from 4×4 inputs, 16 products: exact up to f32 rounding of additions.
    Two,
    /// 4×4 outputs from 6×6 inputs, 36 products (2.25 multiplications per output instead of 4); the transforms'
    /// coefficients (up to 8 and down to 1/24) cost about one decimal digit of precision against F(2×2).
    Four,
}

impl OutputTile {
    /// F(4×4, 3×3) on planes of at least [`F4_MIN_PIXELS`] with at least [`F4_MIN_CHANNELS`] input channels (the
    /// VAE decoder's upper blocks) and at most 2²⁰ channel pairs (its transformed kernel, 36 values a pair, then
    /// stays under 144 MiB); F(2×2) elsewhere: its transforms cost more per tile, which only wide products repay.
    pub fn for_shape(s: &Shape) -> Self {
        if s.h * s.w >= F4_MIN_PIXELS && s.cin >= F4_MIN_CHANNELS && s.cin * s.cout <= 1 << 20 {
            OutputTile::Four
        } else {
            OutputTile::Two
        }
    }

    /// The output side m of a tile.
    fn side(self) -> usize {
        match self {
            OutputTile::Two => 2,
            OutputTile::Four => 4,
        }
    }
}

/// [`conv3x3`] with the tile size given.
pub fn conv3x3_tiled(
    tile: OutputTile,
    s: &Shape,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    out: &mut [f32],
    threads: usize,
) -> Result<()> {
    let m_side = tile.side();
    let n_side = m_side + 2;
    let nn = n_side * n_side;
    let plane = s.h * s.w;
    if x.len() != s.batch * s.cin * plane
        || weight.len() != s.cout * s.cin * 9
        || bias.len() != s.cout
        || out.len() != s.batch * s.cout * plane
    {
        candle_core::bail!("winograd conv: buffers do not match the shape");
    }
    if plane == 0 || s.batch == 0 || s.cout == 0 {
        return Ok(());
    }
    let u = transform_weights(tile, weight, s.cout, s.cin, threads)?;
    let (th, tw) = (s.h.div_ceil(m_side), s.w.div_ceil(m_side));
    let band_rows = (BAND_VALUES / (nn * (s.cin + s.cout) * tw)).clamp(1, th);
    let (ph, pw) = (m_side * th + 2, m_side * tw + 2);
    let mut padded = filled(s.cin * ph * pw, 0f32);
    let mut v = filled(nn * s.cin * band_rows * tw, 0f32);
    let mut m = filled(nn * s.cout * band_rows * tw, 0f32);
    for (image, output) in x.chunks(s.cin * plane).zip(out.chunks_mut(s.cout * plane)) {
        pad(s, image, &mut padded, pw);
        let mut ty0 = 0;
        while ty0 < th {
            let rows = band_rows.min(th - ty0);
            let tiles = rows * tw;
            let v = &mut v[..nn * s.cin * tiles];
            let m = &mut m[..nn * s.cout * tiles];
            v.par_chunks_mut(nn * tiles)
                .zip(padded.par_chunks(ph * pw))
                .for_each_init(Vec::new, |scratch, (v_ci, p)| match tile {
                    OutputTile::Two => transform_input(p, pw, tw, ty0, rows, v_ci, tiles, scratch),
                    OutputTile::Four => transform_input4(p, pw, tw, ty0, rows, v_ci, scratch),
                });
            // M_ξ (cout × tiles) = U_ξ (cout × cin) · V_ξ (cin × tiles), the products side by side.
            m.par_chunks_mut(s.cout * tiles)
                .enumerate()
                .try_for_each(|(xi, m_xi)| {
                    matmul(
                        MatMut {
                            data: m_xi,
                            rows: s.cout,
                            cols: tiles,
                            rs: tiles,
                            cs: 1,
                        },
                        MatRef {
                            data: &u[xi * s.cout * s.cin..(xi + 1) * s.cout * s.cin],
                            rows: s.cout,
                            cols: s.cin,
                            rs: s.cin,
                            cs: 1,
                        },
                        MatRef {
                            data: &v[xi * tiles..],
                            rows: s.cin,
                            cols: tiles,
                            rs: nn * tiles,
                            cs: 1,
                        },
                        false,
                        1,
                    )
                })?;
            let m = &*m;
            output.par_chunks_mut(plane).zip(bias).enumerate().for_each(
                |(co, (y, &b))| match tile {
                    OutputTile::Two => transform_output(m, s, co, tiles, ty0, rows, b, y),
                    OutputTile::Four => transform_output4(m, s, co, tiles, ty0, rows, b, y),
                },
            );
            ty0 += rows;
        }
    }
    Ok(())
}

/// U (`[n², cout, cin]`) = G·g·Gᵀ for every kernel g, as one product: U = T · Wᵀ with T (n²×9) the transform
/// written out, T[n·a + b][3i + j] = G[a][i] · G[b][j] (n = 4 or 6, the tile's input side).
pub(super) fn transform_weights(
    tile: OutputTile,
    weight: &[f32],
    cout: usize,
    cin: usize,
    threads: usize,
) -> Result<Vec<f32>> {
    let g: &[[f32; 3]] = match tile {
        OutputTile::Two => &G,
        OutputTile::Four => &G4,
    };
    let side = g.len();
    let mut t = vec![0f32; side * side * 9];
    for a in 0..side {
        for b in 0..side {
            for i in 0..3 {
                for j in 0..3 {
                    t[(side * a + b) * 9 + 3 * i + j] = g[a][i] * g[b][j];
                }
            }
        }
    }
    let n = cout * cin;
    let mut u = filled(side * side * n, 0f32);
    matmul(
        MatMut {
            data: &mut u,
            rows: side * side,
            cols: n,
            rs: n,
            cs: 1,
        },
        MatRef {
            data: &t,
            rows: side * side,
            cols: 9,
            rs: 9,
            cs: 1,
        },
        MatRef {
            data: weight,
            rows: 9,
            cols: n,
            rs: 1,
            cs: 9,
        },
        false,
        threads,
    )?;
    Ok(u)
}

/// Copies each channel of `image` into `padded` with one zero row and column before it and enough after it
/// for whole 4×4 tiles (`pw` values per row).
fn pad(s: &Shape, image: &[f32], padded: &mut [f32], pw: usize) {
    let ph = padded.len() / s.cin / pw;
    padded
        .par_chunks_mut(ph * pw)
        .zip(image.par_chunks(s.h * s.w))
        .for_each(|(dst, src)| {
            dst.fill(0.0);
            for (row, src_row) in dst[pw..].chunks_mut(pw).zip(src.chunks(s.w)) {
                row[1..=s.w].copy_from_slice(src_row);
            }
        });
}

/// Bᵀ·d·B of every 4×4 tile in tile rows `ty0..ty0 + rows` of one padded channel `p`: `v[ξ · stride + t]`
/// for the 16 entries ξ of tile t (`tw` tiles per row, `stride` ≥ `rows · tw`); `hb` is reusable scratch.
#[allow(clippy::too_many_arguments)]
pub(super) fn transform_input(
    p: &[f32],
    pw: usize,
    tw: usize,
    ty0: usize,
    rows: usize,
    v: &mut [f32],
    stride: usize,
    hb: &mut Vec<f32>,
) {
    // The rows' horizontal transforms d·B: hb[r][b][tx] for padded rows 2·ty0 .. 2·(ty0 + rows) + 1.
    hb.resize((2 * rows + 2) * 4 * tw, 0.0);
    for (r, h) in hb.chunks_exact_mut(4 * tw).enumerate() {
        let row = &p[(2 * ty0 + r) * pw..(2 * ty0 + r + 1) * pw];
        let (h0, rest) = h.split_at_mut(tw);
        let (h1, rest) = rest.split_at_mut(tw);
        let (h2, h3) = rest.split_at_mut(tw);
        let done = winograd_avx512::horizontal(row, [&mut *h0, &mut *h1, &mut *h2, &mut *h3], tw);
        for tx in done..tw {
            let d = &row[2 * tx..2 * tx + 4];
            h0[tx] = d[0] - d[2];
            h1[tx] = d[1] + d[2];
            h2[tx] = d[2] - d[1];
            h3[tx] = d[1] - d[3];
        }
    }
    for ty in 0..rows {
        let q =
            |k: usize, b: usize| &hb[((2 * ty + k) * 4 + b) * tw..((2 * ty + k) * 4 + b + 1) * tw];
        for b in 0..4 {
            let (q0, q1, q2, q3) = (q(0, b), q(1, b), q(2, b), q(3, b));
            let at = |a: usize| (4 * a + b) * stride + ty * tw;
            for tx in 0..tw {
                v[at(0) + tx] = q0[tx] - q2[tx];
                v[at(1) + tx] = q1[tx] + q2[tx];
                v[at(2) + tx] = q2[tx] - q1[tx];
                v[at(3) + tx] = q1[tx] - q3[tx];
            }
        }
    }
}

/// Aᵀ·m·A + `bias` of output channel `co` for tile rows `ty0..ty0 + rows` into its plane `y`, clipped to the
/// image; `m` holds the 16 products (`[16, cout, tiles]`).
#[allow(clippy::too_many_arguments)]
pub(super) fn transform_output<T: Elem>(
    m: &[f32],
    s: &Shape,
    co: usize,
    tiles: usize,
    ty0: usize,
    rows: usize,
    bias: f32,
    y: &mut [T],
) {
    let tw = s.w.div_ceil(2);
    let entry = |xi: usize, ty: usize| {
        let start = (xi * s.cout + co) * tiles + ty * tw;
        &m[start..start + tw]
    };
    let mut top = vec![0f32; 2 * tw];
    let mut bottom = vec![0f32; 2 * tw];
    for ty in 0..rows {
        let mm: [&[f32]; 16] = std::array::from_fn(|xi| entry(xi, ty));
        let done = winograd_avx512::output(&mm, bias, &mut top, &mut bottom, tw);
        for tx in done..tw {
            let e = |a: usize, b: usize| mm[4 * a + b][tx];
            // Aᵀ·m: rows 0 and 1 of the 2×4 intermediate.
            let r0: [f32; 4] = std::array::from_fn(|b| e(0, b) + e(1, b) + e(2, b));
            let r1: [f32; 4] = std::array::from_fn(|b| e(1, b) - e(2, b) - e(3, b));
            top[2 * tx] = bias + r0[0] + r0[1] + r0[2];
            top[2 * tx + 1] = bias + r0[1] - r0[2] - r0[3];
            bottom[2 * tx] = bias + r1[0] + r1[1] + r1[2];
            bottom[2 * tx + 1] = bias + r1[1] - r1[2] - r1[3];
        }
        let oy = 2 * (ty0 + ty);
        store(&mut y[oy * s.w..(oy + 1) * s.w], &top);
        if oy + 1 < s.h {
            store(&mut y[(oy + 1) * s.w..(oy + 2) * s.w], &bottom);
        }
    }
}

/// `values` (at least as many as `row`) into `row`, rounded to its type.
fn store<T: Elem>(row: &mut [T], values: &[f32]) {
    for (d, &v) in row.iter_mut().zip(values) {
        *d = T::from_f32(v);
    }
}

/// Bᵀ·d·B of every 6×6 tile (stride 4) in tile rows `ty0..ty0 + rows` of one padded channel `p`:
/// `v[ξ · tiles + t]` for the 36 entries ξ of tile t (`tw` tiles per row); `hb` is reusable scratch.
fn transform_input4(
    p: &[f32],
    pw: usize,
    tw: usize,
    ty0: usize,
    rows: usize,
    v: &mut [f32],
    hb: &mut Vec<f32>,
) {
    let tiles = rows * tw;
    // The rows' horizontal transforms d·B: hb[r][b][tx] for padded rows 4·ty0 .. 4·(ty0 + rows) + 1.
    hb.resize((4 * rows + 2) * 6 * tw, 0.0);
    let mut d = vec![0f32; 6 * tw];
    for (r, h) in hb.chunks_exact_mut(6 * tw).enumerate() {
        let row = &p[(4 * ty0 + r) * pw..(4 * ty0 + r + 1) * pw];
        // The row's six phases, d[j][tx] = row[4·tx + j], so the sums below run along tx.
        for (j, dj) in d.chunks_exact_mut(tw).enumerate() {
            for (tx, x) in dj.iter_mut().enumerate() {
                *x = row[4 * tx + j];
            }
        }
        for (b, hb_b) in h.chunks_exact_mut(tw).enumerate() {
            combine(&BT4[b], &d, tw, hb_b);
        }
    }
    let mut q = vec![0f32; 6 * tw];
    for ty in 0..rows {
        for b in 0..6 {
            for (i, qi) in q.chunks_exact_mut(tw).enumerate() {
                let at = ((4 * ty + i) * 6 + b) * tw;
                qi.copy_from_slice(&hb[at..at + tw]);
            }
            for (a, coefficients) in BT4.iter().enumerate() {
                let at = (6 * a + b) * tiles + ty * tw;
                combine(coefficients, &q, tw, &mut v[at..at + tw]);
            }
        }
    }
}

/// `out[tx] = Σ_j coefficients[j] · rows[j][tx]` for rows of `tw` values stored one after another, zero
/// coefficients skipped.
fn combine(coefficients: &[f32], rows: &[f32], tw: usize, out: &mut [f32]) {
    out.fill(0.0);
    for (&c, row) in coefficients.iter().zip(rows.chunks_exact(tw)) {
        if c != 0.0 {
            for (o, &x) in out.iter_mut().zip(row) {
                *o += c * x;
            }
        }
    }
}

/// Aᵀ·m·A + `bias` of output channel `co` for tile rows `ty0..ty0 + rows` into its plane `y`, clipped to the
/// image; `m` holds the 36 products (`[36, cout, tiles]`).
#[allow(clippy::too_many_arguments)]
fn transform_output4(
    m: &[f32],
    s: &Shape,
    co: usize,
    tiles: usize,
    ty0: usize,
    rows: usize,
    bias: f32,
    y: &mut [f32],
) {
    let tw = s.w.div_ceil(4);
    let mut entries = vec![0f32; 6 * tw];
    // Aᵀ·m: r[i][b][tx], the 4×6 intermediate of every tile of the row.
    let mut r = vec![0f32; 4 * 6 * tw];
    let mut cols = vec![0f32; 6 * tw];
    let mut line = vec![0f32; 4 * tw];
    for ty in 0..rows {
        for b in 0..6 {
            for (a, e) in entries.chunks_exact_mut(tw).enumerate() {
                let start = ((6 * a + b) * s.cout + co) * tiles + ty * tw;
                e.copy_from_slice(&m[start..start + tw]);
            }
            for (i, coefficients) in AT4.iter().enumerate() {
                let at = (i * 6 + b) * tw;
                combine(coefficients, &entries, tw, &mut r[at..at + tw]);
            }
        }
        for i in 0..4 {
            let oy = 4 * (ty0 + ty) + i;
            if oy >= s.h {
                break;
            }
            cols.copy_from_slice(&r[i * 6 * tw..(i + 1) * 6 * tw]);
            for (j, out_j) in line.chunks_exact_mut(tw).enumerate() {
                combine(&AT4[j], &cols, tw, out_j);
            }
            let dst = &mut y[oy * s.w..(oy + 1) * s.w];
            for (ox, o) in dst.iter_mut().enumerate() {
                *o = bias + line[(ox % 4) * tw + ox / 4];
            }
        }
    }
}
