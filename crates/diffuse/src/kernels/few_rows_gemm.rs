//! f32 linear layers over few rows, `y = x · Wᵀ + b` with W `[n, k]` used as stored: computed as yᵀ = W · xᵀ,
//! W's values broadcast one at a time against xᵀ packed in panels of [`NR`] rows of x. The text encoder (77
//! tokens a prompt, 154 with the negative one) and the UNet's projections of the text multiply a few hundred
//! rows at most; there a general product, which packs the weights at every call, spends more time packing than
//! multiplying, while here only x is packed and no copy of the weights is kept. AVX-512 only; callers fall
//! back to candle's matmul elsewhere.

use candle_core::{bail, Result};
use rayon::prelude::*;

/// The rows of x this kernel takes: with more, the general product's packing of the weights is amortized over
/// the rows and it is as fast; with fewer, the product is a matrix-vector one bound by reading the weights,
/// and padding x to a panel would waste most of the multiply-adds.
const ROWS: std::ops::RangeInclusive<usize> = 16..=384;
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

/// `y[i, j] = Σ_kk x[i, kk] · w[j, kk] + bias[j]` for x `m`×`k` and W `n`×`k` row-major, y `m`×`n`.
pub fn linear(
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<()> {
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
    let mut xt = vec![0f32; panels * k * NR];
    xt.par_chunks_mut(k * NR)
        .enumerate()
        .for_each(|(p, panel)| {
            for (c, row) in x.chunks_exact(k).skip(p * NR).take(NR).enumerate() {
                for (kk, &v) in row.iter().enumerate() {
                    panel[kk * NR + c] = v;
                }
            }
        });
    let out = SharedOut(y.as_mut_ptr());
    let blocks = n.div_ceil(MR);
    (0..blocks.div_ceil(BLOCKS_PER_TASK))
        .into_par_iter()
        .for_each_init(
            || vec![[[0f32; NR]; MR]; BLOCKS_PER_TASK * panels],
            |tiles, task| {
                let task_blocks =
                    task * BLOCKS_PER_TASK..((task + 1) * BLOCKS_PER_TASK).min(blocks);
                tiles.iter_mut().for_each(|t| *t = [[0f32; NR]; MR]);
                // The inner dimension outermost: a slice of every panel stays in L2 for all the task's blocks.
                for k0 in (0..k).step_by(KC) {
                    let kc = KC.min(k - k0);
                    for (block, block_tiles) in task_blocks.clone().zip(tiles.chunks_mut(panels)) {
                        let j0 = block * MR;
                        let rows = MR.min(n - j0);
                        let w_block = &w[j0 * k..(j0 + rows) * k];
                        for (p, tile) in block_tiles.iter_mut().enumerate() {
                            let panel = &xt[p * k * NR + k0 * NR..p * k * NR + (k0 + kc) * NR];
                            // SAFETY: AVX-512 was detected above; the W rows' columns k0..k0 + kc and the
                            // panel's slice lie inside their buffers (lengths checked above).
                            unsafe { accumulate(w_block, rows, k, k0, kc, panel, tile) };
                        }
                    }
                }
                for (block, block_tiles) in task_blocks.zip(tiles.chunks(panels)) {
                    let j0 = block * MR;
                    let rows = MR.min(n - j0);
                    for (p, tile) in block_tiles.iter().enumerate() {
                        let tokens = NR.min(m - p * NR);
                        for c in 0..tokens {
                            // SAFETY: row p · NR + c < m and columns j0..j0 + rows < n lie inside y (checked
                            // above), and this task alone writes y's columns j0..j0 + rows.
                            let dst = unsafe { out.at((p * NR + c) * n + j0) };
                            for (r, t) in tile.iter().enumerate().take(rows) {
                                let value = t[c] + bias.map_or(0.0, |b| b[j0 + r]);
                                unsafe { *dst.add(r) = value };
                            }
                        }
                    }
                }
            },
        );
    Ok(())
}

/// y's buffer, shared by tasks that write disjoint columns.
struct SharedOut(*mut f32);

// SAFETY: each task writes only its own columns of y, which outlives the parallel loop.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The element at `offset`.
    ///
    /// # Safety
    /// `offset` must lie inside y.
    unsafe fn at(&self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// Adds the product of columns `k0..k0 + kc` of `rows` rows of W (row stride `k`) and the packed panel's
/// matching slice to `tile`.
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
        12 => micro::<12>(w, k, kc, panel, tile),
        11 => micro::<11>(w, k, kc, panel, tile),
        10 => micro::<10>(w, k, kc, panel, tile),
        9 => micro::<9>(w, k, kc, panel, tile),
        8 => micro::<8>(w, k, kc, panel, tile),
        7 => micro::<7>(w, k, kc, panel, tile),
        6 => micro::<6>(w, k, kc, panel, tile),
        5 => micro::<5>(w, k, kc, panel, tile),
        4 => micro::<4>(w, k, kc, panel, tile),
        3 => micro::<3>(w, k, kc, panel, tile),
        2 => micro::<2>(w, k, kc, panel, tile),
        _ => micro::<1>(w, k, kc, panel, tile),
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

/// `tile[r][c] += Σ_{kk < kc} w[r · ldw + kk] · panel[kk · NR + c]` for the first `R` rows of W.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn micro<const R: usize>(
    w: &[f32],
    ldw: usize,
    kc: usize,
    panel: &[f32],
    tile: &mut [[f32; NR]; MR],
) {
    use std::arch::x86_64::*;
    debug_assert!(w.len() >= (R - 1) * ldw + kc && panel.len() >= kc * NR);
    let mut acc: [[__m512; VECS]; R] = std::array::from_fn(|r| {
        std::array::from_fn(|v| _mm512_loadu_ps(tile[r].as_ptr().add(16 * v)))
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
