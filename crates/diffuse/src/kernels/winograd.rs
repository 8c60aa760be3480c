//! 3×3 convolutions with stride 1 and padding 1, in f32, by Winograd's minimal filtering F(2×2, 3×3) (Lavin and
//! Gray, 2016): a 2×2 block of outputs costs 16 multiplications per channel pair instead of 36. The input is
//! cut into overlapping 4×4 tiles and transformed (Bᵀ·d·B, additions only), the kernel is transformed (G·g·Gᵀ,
//! made per call in one pass over the weights, so no transformed copy of them is kept), the 16 transformed
//! planes are multiplied as 16 independent matrix products (`gemm`), and each product is folded back into 2×2
//! outputs (Aᵀ·m·A). Tiles go in bands (whole images together while they fit, else rows of one image), so the
//! products are as wide as the transformed data's budget allows and that data stays a few tens of MiB whatever
//! the image. Planes of 32×32 and more take F(4×4, 3×3) instead: 6×6 input tiles, 36 products, 4×4 outputs per
//! tile, its transforms written out ([`bt4`], [`at4`]) and run along whole rows of tiles (on AVX-512 by
//! [`winograd_avx512`], with equal results).

use candle_core::Result;
use rayon::prelude::*;

use super::gemm::{matmul, MatMut, MatRef};
use super::storage::{filled, Elem, SharedOut};
use super::winograd_avx512;

/// The transformed input and products of a band hold at most about this many f32 values (32 MiB): enough for
/// both images of a batch of two at SD's 32×32 level in one band of F(4×4) products.
const BAND_VALUES: usize = 1 << 23;

/// Kernels (channel pairs) one task of the kernel transform takes.
const KERNEL_BLOCK: usize = 1 << 14;

/// G (4×3), the kernel transform.
const G: [[f32; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// The smallest plane (pixels) F(4×4, 3×3) is used on.
pub const F4_MIN_PIXELS: usize = 32 * 32;
/// The fewest input channels F(4×4, 3×3) is used with.
pub const F4_MIN_CHANNELS: usize = 32;
/// The most channel pairs (in × out) F(4×4, 3×3) is used with: its transformed kernel, 36 values a pair made per
/// call, then holds at most 288 MiB (SD 1.5's largest, 1280 → 1280 at 32×32, takes 236 MiB).
pub const F4_MAX_CHANNEL_PAIRS: usize = 1 << 21;

/// G (6×3), the kernel transform of F(4×4, 3×3) (interpolation points 0, ±1, ±2 and ∞).
const G4: [[f32; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
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
    /// UNet's 64×64 and 32×32 levels, the VAE decoder) and at most [`F4_MAX_CHANNEL_PAIRS`]; F(2×2) elsewhere: on
    /// smaller planes F(4×4)'s few tiles make products too thin to repay its costlier transforms.
    pub fn for_shape(s: &Shape) -> Self {
        if s.h * s.w >= F4_MIN_PIXELS
            && s.cin >= F4_MIN_CHANNELS
            && s.cin * s.cout <= F4_MAX_CHANNEL_PAIRS
        {
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
    let bands = Bands::plan(s.batch, th, BAND_VALUES / (nn * (s.cin + s.cout) * tw));
    let (ph, pw) = (m_side * bands.rows + 2, m_side * tw + 2);
    let most_tiles = bands.images * bands.rows * tw;
    let mut padded = filled(bands.images * s.cin * ph * pw, 0f32);
    let mut v = filled(nn * s.cin * most_tiles, 0f32);
    let mut m = filled(nn * s.cout * most_tiles, 0f32);
    for band in bands.iter(s.batch, th) {
        let per_image = band.rows * tw;
        let tiles = band.images * per_image;
        let images = band.first..band.first + band.images;
        let ph = m_side * band.rows + 2;
        let padded = &mut padded[..band.images * s.cin * ph * pw];
        pad_band(
            s,
            &x[images.start * s.cin * plane..images.end * s.cin * plane],
            m_side * band.ty0,
            padded,
            pw,
        );
        let padded = &*padded;
        // v: `[cin, n², tiles]`, tile t of the band being tile t mod per_image of its image t / per_image.
        let v = &mut v[..nn * s.cin * tiles];
        let m = &mut m[..nn * s.cout * tiles];
        v.par_chunks_mut(nn * tiles)
            .enumerate()
            .for_each_init(Vec::new, |scratch, (ci, v_ci)| {
                for image in 0..band.images {
                    let p = &padded[(image * s.cin + ci) * ph * pw..][..ph * pw];
                    let v_image = &mut v_ci[image * per_image..];
                    match tile {
                        OutputTile::Two => {
                            transform_input(p, pw, tw, 0, band.rows, v_image, tiles, scratch)
                        }
                        OutputTile::Four => {
                            transform_input4(p, pw, tw, band.rows, v_image, tiles, scratch)
                        }
                    }
                }
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
        out[images.start * s.cout * plane..images.end * s.cout * plane]
            .par_chunks_mut(plane)
            .enumerate()
            .for_each_init(Vec::new, |scratch, (plane_index, y)| {
                let (image, co) = (plane_index / s.cout, plane_index % s.cout);
                let m = &m[image * per_image..];
                let b = bias[co];
                match tile {
                    OutputTile::Two => transform_output(m, s, co, tiles, band.ty0, band.rows, b, y),
                    OutputTile::Four => {
                        transform_output4(m, s, co, tiles, band.ty0, band.rows, b, y, scratch)
                    }
                }
            });
    }
    Ok(())
}

/// How the tiles are cut into bands, each one batch of products: whole images together while they fit (so that
/// the transformed kernel streams once for all of them), otherwise bands of equal height in one image (a short
/// last band would be a product too thin to run at speed).
pub(super) struct Bands {
    /// Images per band.
    pub(super) images: usize,
    /// Tile rows per band (of one image).
    pub(super) rows: usize,
}

/// A band: tile rows `ty0..ty0 + rows` of images `first..first + images`.
pub(super) struct Band {
    pub(super) first: usize,
    pub(super) images: usize,
    pub(super) ty0: usize,
    pub(super) rows: usize,
}

impl Bands {
    /// Bands of at most `most_rows` tile rows in all (at least one), over `batch` images of `th` tile rows.
    pub(super) fn plan(batch: usize, th: usize, most_rows: usize) -> Self {
        let most_rows = most_rows.max(1);
        if th <= most_rows {
            Self {
                images: (most_rows / th).clamp(1, batch),
                rows: th,
            }
        } else {
            Self {
                images: 1,
                rows: th.div_ceil(th.div_ceil(most_rows)),
            }
        }
    }

    /// The bands of `batch` images of `th` tile rows, in order.
    pub(super) fn iter(&self, batch: usize, th: usize) -> impl Iterator<Item = Band> + '_ {
        (0..batch).step_by(self.images).flat_map(move |first| {
            (0..th).step_by(self.rows).map(move |ty0| Band {
                first,
                images: self.images.min(batch - first),
                ty0,
                rows: self.rows.min(th - ty0),
            })
        })
    }
}

/// U (`[n², cout, cin]`) = G·g·Gᵀ for every kernel g (n = 4 or 6, the tile's input side): on AVX-512 one pass
/// over the kernels, 16 at a time ([`winograd_avx512::transform_kernels`]), else [`transform_weights_product`].
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
    let n = cout * cin;
    if weight.len() != 9 * n {
        candle_core::bail!("winograd conv: the kernel does not match its channels");
    }
    if !winograd_avx512::available() {
        return transform_weights_product(g, weight, threads);
    }
    let side = g.len();
    // Every entry is written below, so the planes are not zeroed first (at the 16×16 level that would double
    // the memory written, which is what this transform's time is).
    let len = side * side * n;
    let mut u: Vec<f32> = Vec::with_capacity(len);
    let shared = SharedOut::new(u.spare_capacity_mut());
    let task = |block: usize| {
        let (p0, p1) = (block * KERNEL_BLOCK, ((block + 1) * KERNEL_BLOCK).min(n));
        let mut planes: Vec<&mut [std::mem::MaybeUninit<f32>]> = (0..side * side)
            // SAFETY: entries p0..p1 of plane ξ lie inside `u`'s capacity (ξ·n + p1 ≤ n²·n) and only this task
            // (this block of kernels) writes them.
            .map(|xi| unsafe { std::slice::from_raw_parts_mut(shared.at(xi * n + p0), p1 - p0) })
            .collect();
        winograd_avx512::transform_kernels(g, &weight[9 * p0..9 * p1], &mut planes);
    };
    let blocks = n.div_ceil(KERNEL_BLOCK);
    if threads > 1 {
        (0..blocks).into_par_iter().for_each(task);
    } else {
        (0..blocks).for_each(task);
    }
    // SAFETY: the blocks cover kernels 0..n of every plane, and `transform_kernels` writes each of them.
    unsafe { u.set_len(len) };
    Ok(u)
}

/// U (`[n², kernels]`) = G·g·Gᵀ for every 3×3 kernel g in `weight` (G the n×3 matrix `g`) as one product:
/// U = T · Wᵀ with T (n²×9) the transform written out, T[n·a + b][3i + j] = G[a][i] · G[b][j].
fn transform_weights_product(g: &[[f32; 3]], weight: &[f32], threads: usize) -> Result<Vec<f32>> {
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
    let n = weight.len() / 9;
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

/// Rows `top − 1 .. top − 1 + ph` of each channel of `images`, with one zero column before them and zeros after
/// them up to `pw` values per row (rows outside the image zero too), into `padded` (f32, `[images, cin, ph, pw]`):
/// the input of the tiles whose outputs start at row `top`.
pub(super) fn pad_band<E: Elem>(
    s: &Shape,
    images: &[E],
    top: usize,
    padded: &mut [f32],
    pw: usize,
) {
    let ph = padded.len() / (images.len() / (s.h * s.w)) / pw;
    padded
        .par_chunks_mut(ph * pw)
        .zip(images.par_chunks(s.h * s.w))
        .for_each(|(dst, src)| {
            for (r, row) in dst.chunks_exact_mut(pw).enumerate() {
                row.fill(0.0);
                // Padded row r holds image row top + r − 1.
                let Some(y) = (top + r).checked_sub(1).filter(|&y| y < s.h) else {
                    continue;
                };
                for (d, &v) in row[1..=s.w].iter_mut().zip(&src[y * s.w..(y + 1) * s.w]) {
                    *d = v.to_f32();
                }
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

/// Bᵀ·d for one column d of six values (or d·B for a row): [`BT4`] written out.
#[inline(always)]
fn bt4(d: [f32; 6]) -> [f32; 6] {
    [
        4.0 * d[0] - 5.0 * d[2] + d[4],
        (d[3] + d[4]) - 4.0 * (d[1] + d[2]),
        4.0 * (d[1] - d[2]) + (d[4] - d[3]),
        2.0 * (d[3] - d[1]) + (d[4] - d[2]),
        2.0 * (d[1] - d[3]) + (d[4] - d[2]),
        4.0 * d[1] - 5.0 * d[3] + d[5],
    ]
}

/// Aᵀ·m for one column m of six values (or m·A for a row): [`AT4`] written out.
#[inline(always)]
fn at4(m: [f32; 6]) -> [f32; 4] {
    let (sum, diff) = (m[1] + m[2], m[1] - m[2]);
    let (sum2, diff2) = (m[3] + m[4], m[3] - m[4]);
    [
        m[0] + sum + sum2,
        diff + 2.0 * diff2,
        sum + 4.0 * sum2,
        diff + 8.0 * diff2 + m[5],
    ]
}

/// Bᵀ·d·B of every 6×6 tile (stride 4) in the first `rows` tile rows of one padded channel `p`: `v[ξ · stride + t]`
/// for the 36 entries ξ of tile t (`tw` tiles per row, `stride` ≥ `rows · tw`); `hb` is reusable scratch.
fn transform_input4(
    p: &[f32],
    pw: usize,
    tw: usize,
    rows: usize,
    v: &mut [f32],
    stride: usize,
    hb: &mut Vec<f32>,
) {
    let n = rows * tw;
    // The rows' horizontal transforms d·B, by phase: padded row 4k + φ goes to hb[b][φ][k][tx], so that rows
    // 4·ty + i of every tile row ty lie side by side (i = 4, 5 being phases 0, 1 one tile row on).
    let run = (rows + 1) * tw;
    hb.resize(6 * 4 * run, 0.0);
    for r in 0..4 * rows + 2 {
        let row = &p[r * pw..r * pw + 4 * tw + 2];
        let at = (r % 4) * run + (r / 4) * tw;
        let mut parts = hb.chunks_mut(4 * run).map(|h| &mut h[at..at + tw]);
        let mut h: [&mut [f32]; 6] = std::array::from_fn(|_| parts.next().unwrap_or_default());
        if !winograd_avx512::bt4_row(row, &mut h, tw) {
            bt4_row(row, &mut h, tw);
        }
    }
    // The vertical transforms Bᵀ·(d·B) of all the band's tiles at once.
    for b in 0..6 {
        let h = &hb[b * 4 * run..(b + 1) * 4 * run];
        let q: [&[f32]; 6] = std::array::from_fn(|i| {
            let at = (i % 4) * run + (i / 4) * tw;
            &h[at..at + n]
        });
        let mut outs = v.chunks_mut(stride).skip(b).step_by(6).map(|o| &mut o[..n]);
        let mut out: [&mut [f32]; 6] = std::array::from_fn(|_| outs.next().unwrap_or_default());
        if !winograd_avx512::bt4_columns(&q, &mut out, n) {
            bt4_columns(&q, &mut out, n);
        }
    }
}

/// Aᵀ·m·A + `bias` of output channel `co` for tile rows `ty0..ty0 + rows` into its plane `y`, clipped to the
/// image; `m` holds the 36 products (`[36, cout, tiles]`); `r` is reusable scratch.
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
    r: &mut Vec<f32>,
) {
    let tw = s.w.div_ceil(4);
    let n = rows * tw;
    // Aᵀ·m of all the tiles at once: r[i][b][t], the 4×6 intermediate of tile t.
    r.resize(4 * 6 * n, 0.0);
    for b in 0..6 {
        let e: [&[f32]; 6] = std::array::from_fn(|a| {
            let start = ((6 * a + b) * s.cout + co) * tiles;
            &m[start..start + n]
        });
        let mut outs = r.chunks_mut(n).skip(b).step_by(6);
        let mut out: [&mut [f32]; 4] = std::array::from_fn(|_| outs.next().unwrap_or_default());
        if !winograd_avx512::at4_columns(&e, &mut out, n) {
            at4_columns(&e, &mut out, n);
        }
    }
    // (Aᵀ·m)·A, a row of tiles at a time, into four rows of the plane each.
    for ty in 0..rows {
        for i in 0..4 {
            let oy = 4 * (ty0 + ty) + i;
            if oy >= s.h {
                break;
            }
            let ri: [&[f32]; 6] = std::array::from_fn(|b| {
                let at = (i * 6 + b) * n + ty * tw;
                &r[at..at + tw]
            });
            let dst = &mut y[oy * s.w..(oy + 1) * s.w];
            if !winograd_avx512::at4_row(&ri, bias, dst, tw) {
                at4_row(&ri, bias, dst, tw);
            }
        }
    }
}

// F(4×4)'s row loops in portable arithmetic: what runs without AVX-512, and what [`winograd_avx512`]'s loops
// equal bit for bit (the unit tests below).

/// `h[b][tx] = bt4(row[4·tx..4·tx + 6])[b]` for tx < `tw`.
fn bt4_row(row: &[f32], h: &mut [&mut [f32]; 6], tw: usize) {
    for (tx, d) in row.windows(6).step_by(4).take(tw).enumerate() {
        for (hb, value) in h.iter_mut().zip(bt4([d[0], d[1], d[2], d[3], d[4], d[5]])) {
            hb[tx] = value;
        }
    }
}

/// `out[a][t] = bt4(q0[t], …, q5[t])[a]` for t < `n`.
fn bt4_columns(q: &[&[f32]; 6], out: &mut [&mut [f32]; 6], n: usize) {
    for t in 0..n {
        for (o, value) in out.iter_mut().zip(bt4(std::array::from_fn(|i| q[i][t]))) {
            o[t] = value;
        }
    }
}

/// `out[i][t] = at4(m0[t], …, m5[t])[i]` for t < `n`.
fn at4_columns(m: &[&[f32]; 6], out: &mut [&mut [f32]; 4], n: usize) {
    for t in 0..n {
        for (o, value) in out.iter_mut().zip(at4(std::array::from_fn(|a| m[a][t]))) {
            o[t] = value;
        }
    }
}

/// `out[4·tx..4·tx + 4] = bias + at4(r0[tx], …, r5[tx])`, clipped to `out`.
fn at4_row(r: &[&[f32]; 6], bias: f32, out: &mut [f32], tw: usize) {
    for (tx, dst) in out.chunks_mut(4).take(tw).enumerate() {
        for (o, value) in dst.iter_mut().zip(at4(std::array::from_fn(|b| r[b][tx]))) {
            *o = bias + value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bᵀ (6×6), the input transform of F(4×4, 3×3) (Lavin and Gray, 2016).
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

    /// Values exact in f32 whatever the order of the sums (small integers), so the written-out transforms must
    /// equal the matrices exactly.
    fn integers(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) % 201) as f32 - 100.0
            })
            .collect()
    }

    #[test]
    fn written_out_transforms_equal_the_matrices() {
        let d = integers(6 * 50, 1);
        for d in d.chunks_exact(6) {
            let d: [f32; 6] = std::array::from_fn(|i| d[i]);
            let want: [f32; 6] = std::array::from_fn(|a| (0..6).map(|i| BT4[a][i] * d[i]).sum());
            assert_eq!(bt4(d), want);
            let want: [f32; 4] = std::array::from_fn(|a| (0..6).map(|i| AT4[a][i] * d[i]).sum());
            assert_eq!(at4(d), want);
        }
    }

    /// The one-pass kernel transform against the product, both tilings, a number of kernels with a partial last
    /// vector and a partial last block: the same sums in another order, so to a few f32 roundings.
    #[test]
    fn kernel_transform_equals_the_product() {
        if !winograd_avx512::available() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        let (cout, cin) = (37, 455);
        let weight: Vec<f32> = integers(9 * cout * cin, 6)
            .iter()
            .map(|v| v / 13.7)
            .collect();
        for (tile, g) in [(OutputTile::Two, &G[..]), (OutputTile::Four, &G4[..])] {
            let fast = transform_weights(tile, &weight, cout, cin, 2).unwrap();
            let product = transform_weights_product(g, &weight, 2).unwrap();
            assert_eq!(fast.len(), product.len());
            let scale = product.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (i, (a, b)) in fast.iter().zip(&product).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * scale,
                    "{tile:?} entry {i}: {a} against {b}"
                );
            }
        }
    }

    /// The rows of `v` as the array of mutable slices the row loops take.
    fn slices<const N: usize>(v: &mut [Vec<f32>]) -> [&mut [f32]; N] {
        let mut rows = v.iter_mut().map(|r| r.as_mut_slice());
        std::array::from_fn(|_| rows.next().expect("as many rows as slices"))
    }

    /// Random values (not integers): the AVX-512 loops must round as the portable ones do. Lengths with whole
    /// chunks of 16 and a masked rest, and shorter than one chunk.
    #[test]
    fn avx512_row_loops_equal_the_portable_ones() {
        if !winograd_avx512::available() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        let random = |n: usize, seed: u64| -> Vec<f32> {
            integers(n, seed).iter().map(|v| v / 7.3 + 0.011).collect()
        };
        let bits = |v: &[Vec<f32>]| -> Vec<Vec<u32>> {
            v.iter()
                .map(|r| r.iter().map(|x| x.to_bits()).collect())
                .collect()
        };
        for (seed, n) in [(2, 37), (3, 5), (4, 16), (5, 64)] {
            let inputs: Vec<Vec<f32>> = (0..6).map(|i| random(n, seed * 10 + i)).collect();
            let q: [&[f32]; 6] = std::array::from_fn(|i| inputs[i].as_slice());
            let (mut a, mut b) = (vec![vec![f32::NAN; n]; 6], vec![vec![f32::NAN; n]; 6]);
            assert!(winograd_avx512::bt4_columns(&q, &mut slices(&mut a), n));
            bt4_columns(&q, &mut slices(&mut b), n);
            assert_eq!(bits(&a), bits(&b), "bt4 columns, n {n}");

            let (mut a, mut b) = (vec![vec![f32::NAN; n]; 4], vec![vec![f32::NAN; n]; 4]);
            assert!(winograd_avx512::at4_columns(&q, &mut slices(&mut a), n));
            at4_columns(&q, &mut slices(&mut b), n);
            assert_eq!(bits(&a), bits(&b), "at4 columns, n {n}");

            // A padded row of n tiles (4·n + 2 values), and an output row clipped short of the last tile.
            let row = random(4 * n + 2, seed);
            let (mut a, mut b) = (vec![vec![f32::NAN; n]; 6], vec![vec![f32::NAN; n]; 6]);
            assert!(winograd_avx512::bt4_row(&row, &mut slices(&mut a), n));
            bt4_row(&row, &mut slices(&mut b), n);
            assert_eq!(bits(&a), bits(&b), "bt4 row, {n} tiles");

            let width = 4 * n - 3;
            let (mut a, mut b) = (vec![vec![f32::NAN; width]], vec![vec![f32::NAN; width]]);
            assert!(winograd_avx512::at4_row(&q, 0.37, &mut a[0], n));
            at4_row(&q, 0.37, &mut b[0], n);
            assert_eq!(bits(&a), bits(&b), "at4 row, {n} tiles");
        }
    }
}
