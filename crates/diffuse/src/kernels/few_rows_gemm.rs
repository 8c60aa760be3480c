//! f32 linear layers over few rows, `y = x · Wᵀ + b` with W `[n, k]` used as stored: computed as yᵀ = W · xᵀ,
//! W's values broadcast one at a time against xᵀ packed in panels of [`NR`] rows of x. The text encoder (77
//! tokens a prompt, 154 with the negative one) and the UNet's projections of the text multiply a few hundred
//! rows at most; there a general product, which packs the weights at every call, spends more time packing than
//! multiplying, while here only x is packed and no copy of the weights is kept. AVX-512 only; callers fall
//! back to candle's matmul elsewhere.

use std::cell::RefCell;

use candle_core::{bail, Result};
use rayon::prelude::*;

use super::activation::{self, Pointwise};
use super::storage::SharedOut;

/// The rows of x this kernel takes: with more, the general product's packing of the weights is amortized over
/// the rows and it is as fast; with fewer, the product is a matrix-vector one bound by reading the weights,
/// and padding x to a panel would waste most of the multiply-adds.
pub const ROWS: std::ops::RangeInclusive<usize> = 16..=384;
/// Rows of x per packed panel (two 16-lane vectors).
const NR: usize = 32;
/// 16-lane vectors per panel row.
const VECS: usize = NR / 16;
/// Rows of W (columns of y) per micro-kernel call.
const MR: usize = 12;
/// W's row blocks per parallel task.
const BLOCKS_PER_TASK: usize = 4;
/// Inner-dimension slice per pass, so that a block of W and a panel's slice stay in L1.
const KC: usize = 256;

/// Whether this CPU runs the kernel (AVX-512 F with FMA, checked once).
pub fn available() -> bool {
    super::simd::simd_level() == super::simd::SimdLevel::Avx512
}

/// Whether a product over `rows` rows of x should run here: on this CPU, and faster than the general product.
pub fn suits(rows: usize) -> bool {
    available() && ROWS.contains(&rows)
}

/// What is done to each product before it is written.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Added to each row of y (`n` values).
    pub bias: Option<&'a [f32]>,
    /// Applied after the bias.
    pub activation: Option<Pointwise>,
}

/// `y[i, j] = f(Σ_kk x[i, kk] · w[j, kk] + bias[j])` for x `m`×`k` and W `n`×`k` row-major, y `m`×`n`, with
/// the bias and f of `epilogue`.
pub fn linear(
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
    epilogue: Epilogue,
    y: &mut [f32],
) -> Result<()> {
    let bias = epilogue.bias;
    if !available() {
        bail!("few-rows linear: this CPU has no AVX-512");
    }
    if x.len() != m * k
        || w.len() != n * k
        || y.len() != m * n
        || bias.is_some_and(|b| b.len() != n)
    {
        bail!(
            "few-rows linear: x of {} values for {m}×{k}, W of {} for {n}×{k}, y of {} for {m}×{n}, \
             bias of {:?} for {n}",
            x.len(),
            w.len(),
            y.len(),
            bias.map(<[f32]>::len)
        );
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let panels = m.div_ceil(NR);
    let out = SharedOut::new(y);
    let blocks = n.div_ceil(MR);
    let tasks = blocks.div_ceil(BLOCKS_PER_TASK);
    // One share of the tasks per thread, each with its own packed copy of x: a copy packed by another core
    // would be read from that core's cache by every task.
    let shares = rayon::current_num_threads().clamp(1, tasks);
    (0..shares).into_par_iter().for_each(|share| {
        with_scratch(panels, k, |xt, tiles| {
            for (p, panel) in xt.chunks_exact_mut(k * NR).enumerate() {
                // SAFETY: AVX-512 was detected above; x holds m rows of k (checked above), the panel k × NR.
                unsafe { pack_panel(x, m, k, p, panel) };
            }
            let product = Product {
                x: xt,
                m,
                w,
                n,
                k,
                epilogue,
            };
            for task in share * tasks / shares..(share + 1) * tasks / shares {
                let first = task * BLOCKS_PER_TASK;
                product.run(first..(first + BLOCKS_PER_TASK).min(blocks), tiles, &out);
            }
        })
    });
    Ok(())
}

/// A thread's buffers: x packed in panels (every value rewritten by each product) and the accumulators.
#[derive(Default)]
struct Scratch {
    xt: Vec<f32>,
    tiles: Vec<[[f32; NR]; MR]>,
}

thread_local! {
    /// Kept between products, so that packing writes into memory already mapped and in cache.
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// Runs `f` on this thread's scratch cut to `panels` panels of `k` and their tiles (a fresh one if it is in
/// use). The buffers only grow, so that products of alternating widths do not refill them.
fn with_scratch<R>(
    panels: usize,
    k: usize,
    f: impl FnOnce(&mut [f32], &mut [[[f32; NR]; MR]]) -> R,
) -> R {
    let run = |scratch: &mut Scratch| {
        let (values, tile_count) = (panels * k * NR, BLOCKS_PER_TASK * panels);
        if scratch.xt.len() < values {
            scratch.xt.resize(values, 0.0);
        }
        if scratch.tiles.len() < tile_count {
            scratch.tiles.resize(tile_count, [[0.0; NR]; MR]);
        }
        f(&mut scratch.xt[..values], &mut scratch.tiles[..tile_count])
    };
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => run(&mut scratch),
        Err(_) => run(&mut Scratch::default()),
    })
}

/// One product: x packed in panels, W and the epilogue as given.
struct Product<'a> {
    x: &'a [f32],
    m: usize,
    w: &'a [f32],
    n: usize,
    k: usize,
    epilogue: Epilogue<'a>,
}

impl Product<'_> {
    /// Computes y's columns of the W row blocks `blocks` (at most [`BLOCKS_PER_TASK`]) into `out`, with
    /// `tiles` as the accumulators.
    fn run(
        &self,
        blocks: std::ops::Range<usize>,
        tiles: &mut [[[f32; NR]; MR]],
        out: &SharedOut<f32>,
    ) {
        let Self {
            x: xt,
            m,
            w,
            n,
            k,
            epilogue,
        } = *self;
        let panels = m.div_ceil(NR);
        // The inner dimension outermost: a slice of every panel stays in L2 for all the task's blocks.
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            for (block, block_tiles) in blocks.clone().zip(tiles.chunks_mut(panels)) {
                let j0 = block * MR;
                let rows = MR.min(n - j0);
                let w_block = &w[j0 * k..(j0 + rows) * k];
                for (p, tile) in block_tiles.iter_mut().enumerate() {
                    let panel = &xt[p * k * NR + k0 * NR..p * k * NR + (k0 + kc) * NR];
                    // SAFETY: AVX-512 was detected by `linear`; the W rows' columns k0..k0 + kc and the
                    // panel's slice lie inside their buffers (lengths checked by `linear`).
                    unsafe { accumulate(w_block, rows, k, k0, kc, panel, tile) };
                }
            }
        }
        for (block, block_tiles) in blocks.zip(tiles.chunks_mut(panels)) {
            let j0 = block * MR;
            let rows = MR.min(n - j0);
            for (p, tile) in block_tiles.iter_mut().enumerate() {
                let tokens = NR.min(m - p * NR);
                // SAFETY: AVX-512 was detected by `linear`; rows p · NR.. p · NR + tokens ≤ m and columns
                // j0..j0 + rows ≤ n lie inside y (checked by `linear`), and this task alone writes y's
                // columns j0..j0 + rows.
                unsafe {
                    write_tile(
                        tile,
                        rows,
                        tokens,
                        epilogue.bias.map(|b| &b[j0..j0 + rows]),
                        epilogue.activation,
                        out.at(p * NR * n + j0),
                        n,
                    )
                };
            }
        }
    }
}

/// Packs rows `p · NR..(p + 1) · NR` of x (`m` × `k`) into `panel` (`k` × [`NR`]: its row kk holds column kk
/// of those rows), zeros for rows past `m`; 16×16 blocks transposed in registers.
///
/// # Safety
/// The CPU must have AVX-512 F; `x` must hold `m · k` values and `panel` `k · NR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_panel(x: &[f32], m: usize, k: usize, p: usize, panel: &mut [f32]) {
    use std::arch::x86_64::*;
    debug_assert!(x.len() == m * k && panel.len() == k * NR);
    for half in 0..VECS {
        let first = p * NR + 16 * half;
        let live = m.saturating_sub(first).min(16);
        for k0 in (0..k).step_by(16) {
            let width = 16.min(k - k0);
            let mask = ((1u32 << width) - 1) as u16;
            let rows = std::array::from_fn(|i| {
                if i < live {
                    _mm512_maskz_loadu_ps(mask, x.as_ptr().add((first + i) * k + k0))
                } else {
                    _mm512_setzero_ps()
                }
            });
            let columns = super::simd::transpose16(rows);
            for (j, column) in columns.iter().take(width).enumerate() {
                _mm512_storeu_ps(panel.as_mut_ptr().add((k0 + j) * NR + 16 * half), *column);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_panel(_x: &[f32], _m: usize, _k: usize, _p: usize, _panel: &mut [f32]) {}

/// Writes `tile` (its first `rows` ≤ [`MR`] rows: y's columns, by `tokens` ≤ [`NR`] of y's rows) transposed
/// to `dst` (y's row stride `n`), after adding `bias` (`rows` values) and applying `activation` in place.
///
/// # Safety
/// The CPU must have AVX-512 F; `dst` must point at `tokens` rows of `rows` writable values, `n` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn write_tile(
    tile: &mut [[f32; NR]; MR],
    rows: usize,
    tokens: usize,
    bias: Option<&[f32]>,
    activation: Option<Pointwise>,
    dst: *mut f32,
    n: usize,
) {
    use std::arch::x86_64::*;
    debug_assert!(rows <= MR && tokens <= NR && bias.is_none_or(|b| b.len() == rows));
    if let Some(bias) = bias {
        for (row, &b) in tile.iter_mut().zip(bias) {
            for v in 0..VECS {
                let at = row.as_mut_ptr().add(16 * v);
                _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), _mm512_set1_ps(b)));
            }
        }
    }
    if let Some(f) = activation {
        activation::apply_in_place(tile[..rows].as_flattened_mut(), f);
    }
    let mask = ((1u32 << rows) - 1) as u16;
    for half in 0..VECS {
        let live = tokens.saturating_sub(16 * half).min(16);
        let columns = std::array::from_fn(|r| {
            if r < rows {
                _mm512_loadu_ps(tile[r].as_ptr().add(16 * half))
            } else {
                _mm512_setzero_ps()
            }
        });
        let token_rows = super::simd::transpose16(columns);
        for (c, values) in token_rows.iter().take(live).enumerate() {
            _mm512_mask_storeu_ps(dst.add((16 * half + c) * n), mask, *values);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn write_tile(
    _tile: &mut [[f32; NR]; MR],
    _rows: usize,
    _tokens: usize,
    _bias: Option<&[f32]>,
    _activation: Option<Pointwise>,
    _dst: *mut f32,
    _n: usize,
) {
}

/// Adds the product of columns `k0..k0 + kc` of `rows` rows of W (row stride `k`) and the packed panel's
/// matching slice to `tile` (to zero for the first slice, `k0` = 0).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn accumulate(
    w: &[f32],
    rows: usize,
    k: usize,
    k0: usize,
    kc: usize,
    panel: &[f32],
    tile: &mut [[f32; NR]; MR],
) {
    let w = &w[k0..];
    match rows {
        12 => micro::<12>(w, k, kc, k0 == 0, panel, tile),
        11 => micro::<11>(w, k, kc, k0 == 0, panel, tile),
        10 => micro::<10>(w, k, kc, k0 == 0, panel, tile),
        9 => micro::<9>(w, k, kc, k0 == 0, panel, tile),
        8 => micro::<8>(w, k, kc, k0 == 0, panel, tile),
        7 => micro::<7>(w, k, kc, k0 == 0, panel, tile),
        6 => micro::<6>(w, k, kc, k0 == 0, panel, tile),
        5 => micro::<5>(w, k, kc, k0 == 0, panel, tile),
        4 => micro::<4>(w, k, kc, k0 == 0, panel, tile),
        3 => micro::<3>(w, k, kc, k0 == 0, panel, tile),
        2 => micro::<2>(w, k, kc, k0 == 0, panel, tile),
        _ => micro::<1>(w, k, kc, k0 == 0, panel, tile),
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn accumulate(
    _w: &[f32],
    _rows: usize,
    _k: usize,
    _k0: usize,
    _kc: usize,
    _panel: &[f32],
    _tile: &mut [[f32; NR]; MR],
) {
}

/// `tile[r][c] += Σ_{kk < kc} w[r · ldw + kk] · panel[kk · NR + c]` for the first `R` rows of W (`=` when
/// `fresh`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn micro<const R: usize>(
    w: &[f32],
    ldw: usize,
    kc: usize,
    fresh: bool,
    panel: &[f32],
    tile: &mut [[f32; NR]; MR],
) {
    use std::arch::x86_64::*;
    debug_assert!(w.len() >= (R - 1) * ldw + kc && panel.len() >= kc * NR);
    let mut acc: [[__m512; VECS]; R] = std::array::from_fn(|r| {
        std::array::from_fn(|v| {
            if fresh {
                _mm512_setzero_ps()
            } else {
                _mm512_loadu_ps(tile[r].as_ptr().add(16 * v))
            }
        })
    });
    let rows: [*const f32; R] = std::array::from_fn(|r| w.as_ptr().add(r * ldw));
    let xp = panel.as_ptr();
    for kk in 0..kc {
        let xv: [__m512; VECS] = std::array::from_fn(|v| _mm512_loadu_ps(xp.add(kk * NR + 16 * v)));
        for (acc_r, row) in acc.iter_mut().zip(&rows) {
            let wv = _mm512_set1_ps(*row.add(kk));
            for (a, &xv) in acc_r.iter_mut().zip(&xv) {
                *a = _mm512_fmadd_ps(wv, xv, *a);
            }
        }
    }
    for (t, acc_r) in tile.iter_mut().zip(&acc) {
        for (v, &a) in acc_r.iter().enumerate() {
            _mm512_storeu_ps(t.as_mut_ptr().add(16 * v), a);
        }
    }
}
