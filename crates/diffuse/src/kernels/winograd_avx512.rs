//! The row loops of Winograd F(2×2, 3×3)'s transforms ([`super::winograd`]) on AVX-512, 16 tiles per
//! instruction: the same additions in the same order as the portable loops, so the results are identical. Each
//! function does the whole 16-tile chunks of a row and returns how many tiles it did; the caller finishes the rest.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::simd::{simd_level, SimdLevel};

/// Whether these loops can run on this CPU.
pub fn available() -> bool {
    simd_level() == SimdLevel::Avx512
}

/// The horizontal input transform d·B of one padded row: for tile tx, with d = `row[2·tx..2·tx + 4]`,
/// `h[0][tx] = d0 − d2`, `h[1][tx] = d1 + d2`, `h[2][tx] = d2 − d1`, `h[3][tx] = d1 − d3`, for the first tiles of
/// the `tw` (`row` holds at least 2·tw + 2 values); returns how many it did.
pub fn horizontal(row: &[f32], h: [&mut [f32]; 4], tw: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if available() {
        assert!(row.len() >= 2 * tw + 2 && h.iter().all(|h| h.len() >= tw));
        // SAFETY: AVX-512 F is present; the loads end at 2·(tx0 + 16) + 2 ≤ 2·tw + 2 values into `row` and the
        // stores at tx0 + 16 ≤ tw into each `h` (lengths checked above).
        return unsafe { horizontal_avx512(row, h, tw) };
    }
    let _ = (row, h, tw);
    0
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn horizontal_avx512(row: &[f32], h: [&mut [f32]; 4], tw: usize) -> usize {
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let [h0, h1, h2, h3] = h;
    let p = row.as_ptr();
    let mut tx = 0;
    while tx + 16 <= tw {
        let (a, b) = (
            _mm512_loadu_ps(p.add(2 * tx)),
            _mm512_loadu_ps(p.add(2 * tx + 16)),
        );
        let (a2, b2) = (
            _mm512_loadu_ps(p.add(2 * tx + 2)),
            _mm512_loadu_ps(p.add(2 * tx + 18)),
        );
        let d0 = _mm512_permutex2var_ps(a, even, b);
        let d1 = _mm512_permutex2var_ps(a, odd, b);
        let d2 = _mm512_permutex2var_ps(a2, even, b2);
        let d3 = _mm512_permutex2var_ps(a2, odd, b2);
        _mm512_storeu_ps(h0.as_mut_ptr().add(tx), _mm512_sub_ps(d0, d2));
        _mm512_storeu_ps(h1.as_mut_ptr().add(tx), _mm512_add_ps(d1, d2));
        _mm512_storeu_ps(h2.as_mut_ptr().add(tx), _mm512_sub_ps(d2, d1));
        _mm512_storeu_ps(h3.as_mut_ptr().add(tx), _mm512_sub_ps(d1, d3));
        tx += 16;
    }
    tx
}

/// The output transform Aᵀ·m·A + `bias` of one row of tiles: `mm[4a + b][tx]` the 16 products of tile tx; writes
/// outputs 2·tx and 2·tx + 1 of the row pair into `top` and `bottom` for the first tiles of the `tw`; returns how
/// many it did.
pub fn output(
    mm: &[&[f32]; 16],
    bias: f32,
    top: &mut [f32],
    bottom: &mut [f32],
    tw: usize,
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if available() {
        assert!(mm.iter().all(|m| m.len() >= tw) && top.len() >= 2 * tw && bottom.len() >= 2 * tw);
        // SAFETY: AVX-512 F is present; the loads end at tx0 + 16 ≤ tw into each `mm` row and the stores at
        // 2·(tx0 + 16) ≤ 2·tw into `top` and `bottom` (lengths checked above).
        return unsafe { output_avx512(mm, bias, top, bottom, tw) };
    }
    let _ = (mm, bias, top, bottom, tw);
    0
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn output_avx512(
    mm: &[&[f32]; 16],
    bias: f32,
    top: &mut [f32],
    bottom: &mut [f32],
    tw: usize,
) -> usize {
    // Outputs 2·i and 2·i + 1 from lane i of the even and odd vectors: the first 16 outputs, then the next.
    let first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let bias = _mm512_set1_ps(bias);
    let mut tx = 0;
    while tx + 16 <= tw {
        let e = |a: usize, b: usize| _mm512_loadu_ps(mm[4 * a + b].as_ptr().add(tx));
        let r0: [__m512; 4] =
            std::array::from_fn(|b| _mm512_add_ps(_mm512_add_ps(e(0, b), e(1, b)), e(2, b)));
        let r1: [__m512; 4] =
            std::array::from_fn(|b| _mm512_sub_ps(_mm512_sub_ps(e(1, b), e(2, b)), e(3, b)));
        for (r, out) in [(r0, &mut *top), (r1, &mut *bottom)] {
            let even = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(bias, r[0]), r[1]), r[2]);
            let odd = _mm512_sub_ps(_mm512_sub_ps(_mm512_add_ps(bias, r[1]), r[2]), r[3]);
            let dst = out.as_mut_ptr().add(2 * tx);
            _mm512_storeu_ps(dst, _mm512_permutex2var_ps(even, first, odd));
            _mm512_storeu_ps(dst.add(16), _mm512_permutex2var_ps(even, second, odd));
        }
        tx += 16;
    }
    tx
}

// F(4×4, 3×3): whole rows (masked at their ends), the additions and multiplications of `winograd::bt4` and
// `winograd::at4` in their order, so the results equal the portable loops'. Each returns whether it ran.

/// Lanes `o..o + 16` of a run of `avail` values: the mask of those that exist.
#[cfg(target_arch = "x86_64")]
fn lanes(avail: usize, o: usize) -> u16 {
    match avail.saturating_sub(o) {
        0 => 0,
        n if n >= 16 => u16::MAX,
        n => (1u16 << n) - 1,
    }
}

/// `winograd::bt4` on vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bt4_vec(d: [__m512; 6]) -> [__m512; 6] {
    let (two, four, five) = (
        _mm512_set1_ps(2.0),
        _mm512_set1_ps(4.0),
        _mm512_set1_ps(5.0),
    );
    let (mul, add, sub) = (_mm512_mul_ps, _mm512_add_ps, _mm512_sub_ps);
    [
        add(sub(mul(four, d[0]), mul(five, d[2])), d[4]),
        sub(add(d[3], d[4]), mul(four, add(d[1], d[2]))),
        add(mul(four, sub(d[1], d[2])), sub(d[4], d[3])),
        add(mul(two, sub(d[3], d[1])), sub(d[4], d[2])),
        add(mul(two, sub(d[1], d[3])), sub(d[4], d[2])),
        add(sub(mul(four, d[1]), mul(five, d[3])), d[5]),
    ]
}

/// `winograd::at4` on vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn at4_vec(m: [__m512; 6]) -> [__m512; 4] {
    let (two, four, eight) = (
        _mm512_set1_ps(2.0),
        _mm512_set1_ps(4.0),
        _mm512_set1_ps(8.0),
    );
    let (mul, add, sub) = (_mm512_mul_ps, _mm512_add_ps, _mm512_sub_ps);
    let (sum, diff) = (add(m[1], m[2]), sub(m[1], m[2]));
    let (sum2, diff2) = (add(m[3], m[4]), sub(m[3], m[4]));
    [
        add(add(m[0], sum), sum2),
        add(diff, mul(two, diff2)),
        add(sum, mul(four, sum2)),
        add(add(diff, mul(eight, diff2)), m[5]),
    ]
}

/// F(4×4)'s column transform Bᵀ·q: `out[a][t] = bt4(q0[t], …, q5[t])[a]` for t < `n`.
pub fn bt4_columns(q: &[&[f32]; 6], out: &mut [&mut [f32]; 6], n: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if available() {
        assert!(q.iter().all(|q| q.len() >= n) && out.iter().all(|o| o.len() >= n));
        // SAFETY: AVX-512 F is present; every load and store is masked to t < n (lengths checked above).
        unsafe { bt4_columns_avx512(q, out, n) };
        return true;
    }
    let _ = (q, out, n);
    false
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bt4_columns_avx512(q: &[&[f32]; 6], out: &mut [&mut [f32]; 6], n: usize) {
    for t in (0..n).step_by(16) {
        let k = lanes(n, t);
        let d = std::array::from_fn(|i| _mm512_maskz_loadu_ps(k, q[i].as_ptr().add(t)));
        for (o, e) in out.iter_mut().zip(bt4_vec(d)) {
            _mm512_mask_storeu_ps(o.as_mut_ptr().add(t), k, e);
        }
    }
}

/// F(4×4)'s column transform Aᵀ·m: `out[i][t] = at4(m0[t], …, m5[t])[i]` for t < `n`.
pub fn at4_columns(m: &[&[f32]; 6], out: &mut [&mut [f32]; 4], n: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if available() {
        assert!(m.iter().all(|m| m.len() >= n) && out.iter().all(|o| o.len() >= n));
        // SAFETY: AVX-512 F is present; every load and store is masked to t < n (lengths checked above).
        unsafe { at4_columns_avx512(m, out, n) };
        return true;
    }
    let _ = (m, out, n);
    false
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn at4_columns_avx512(m: &[&[f32]; 6], out: &mut [&mut [f32]; 4], n: usize) {
    for t in (0..n).step_by(16) {
        let k = lanes(n, t);
        let e = std::array::from_fn(|a| _mm512_maskz_loadu_ps(k, m[a].as_ptr().add(t)));
        for (o, v) in out.iter_mut().zip(at4_vec(e)) {
            _mm512_mask_storeu_ps(o.as_mut_ptr().add(t), k, v);
        }
    }
}

/// F(4×4)'s row transform d·B of one padded row: for tile tx < `tw`, with d = `row[4·tx..4·tx + 6]`,
/// `h[b][tx] = bt4(d)[b]` (`row` holds at least 4·tw + 2 values).
pub fn bt4_row(row: &[f32], h: &mut [&mut [f32]; 6], tw: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if available() {
        assert!(row.len() >= 4 * tw + 2 && h.iter().all(|h| h.len() >= tw));
        // SAFETY: AVX-512 F is present; loads are masked to `row`'s length and stores to tx < tw (lengths checked
        // above).
        unsafe { bt4_row_avx512(row, h, tw) };
        return true;
    }
    let _ = (row, h, tw);
    false
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bt4_row_avx512(row: &[f32], h: &mut [&mut [f32]; 6], tw: usize) {
    // Phase j of 16 tiles from the 64 values at 4·tx0 (+ 4 for phases 4 and 5): lanes j, j + 4, … of each pair
    // of vectors, then the two halves side by side.
    let phase = |j: i32| {
        _mm512_setr_epi32(
            j,
            j + 4,
            j + 8,
            j + 12,
            j + 16,
            j + 20,
            j + 24,
            j + 28,
            j,
            j + 4,
            j + 8,
            j + 12,
            j + 16,
            j + 20,
            j + 24,
            j + 28,
        )
    };
    let idx = [phase(0), phase(1), phase(2), phase(3)];
    let p = row.as_ptr();
    for tx0 in (0..tw).step_by(16) {
        let base = 4 * tx0;
        let avail = row.len() - base;
        // Past the row's end the lanes are zero, and no pointer is formed there.
        let load = |o: usize| match lanes(avail, o) {
            0 => _mm512_setzero_ps(),
            k => _mm512_maskz_loadu_ps(k, p.add(base + o)),
        };
        let split = |v: [__m512; 4], j: usize| {
            let lo = _mm512_permutex2var_ps(v[0], idx[j], v[1]);
            let hi = _mm512_permutex2var_ps(v[2], idx[j], v[3]);
            _mm512_shuffle_f32x4::<0x44>(lo, hi)
        };
        let here = [load(0), load(16), load(32), load(48)];
        let next = [load(4), load(20), load(36), load(52)];
        let d = [
            split(here, 0),
            split(here, 1),
            split(here, 2),
            split(here, 3),
            split(next, 0),
            split(next, 1),
        ];
        let k = lanes(tw, tx0);
        for (hb, e) in h.iter_mut().zip(bt4_vec(d)) {
            _mm512_mask_storeu_ps(hb.as_mut_ptr().add(tx0), k, e);
        }
    }
}

/// F(4×4)'s row transform (Aᵀ·m)·A + `bias` of one row of tiles into one output row: for tile tx, outputs
/// `out[4·tx..4·tx + 4] = bias + at4(r0[tx], …, r5[tx])`, clipped to `out`'s length (at most 4·tw values).
pub fn at4_row(r: &[&[f32]; 6], bias: f32, out: &mut [f32], tw: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if available() {
        assert!(r.iter().all(|r| r.len() >= tw) && out.len() <= 4 * tw);
        // SAFETY: AVX-512 F is present; loads are masked to tx < tw and stores to `out`'s length (checked above).
        unsafe { at4_row_avx512(r, bias, out, tw) };
        return true;
    }
    let _ = (r, bias, out, tw);
    false
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn at4_row_avx512(r: &[&[f32]; 6], bias: f32, out: &mut [f32], tw: usize) {
    // Pairs (o0, o1) and (o2, o3) interleaved, then the pairs interleaved: tile tx's four outputs side by side.
    let pairs_lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let pairs_hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let quads_lo = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
    let quads_hi = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
    let bias = _mm512_set1_ps(bias);
    let len = out.len();
    let dst = out.as_mut_ptr();
    for tx0 in (0..tw).step_by(16) {
        let k = lanes(tw, tx0);
        let q = std::array::from_fn(|b| _mm512_maskz_loadu_ps(k, r[b].as_ptr().add(tx0)));
        let o = at4_vec(q).map(|v| _mm512_add_ps(bias, v));
        let a_lo = _mm512_castps_pd(_mm512_permutex2var_ps(o[0], pairs_lo, o[1]));
        let a_hi = _mm512_castps_pd(_mm512_permutex2var_ps(o[0], pairs_hi, o[1]));
        let b_lo = _mm512_castps_pd(_mm512_permutex2var_ps(o[2], pairs_lo, o[3]));
        let b_hi = _mm512_castps_pd(_mm512_permutex2var_ps(o[2], pairs_hi, o[3]));
        let quads = [
            _mm512_permutex2var_pd(a_lo, quads_lo, b_lo),
            _mm512_permutex2var_pd(a_lo, quads_hi, b_lo),
            _mm512_permutex2var_pd(a_hi, quads_lo, b_hi),
            _mm512_permutex2var_pd(a_hi, quads_hi, b_hi),
        ];
        for (i, v) in quads.into_iter().enumerate() {
            let at = 4 * tx0 + 16 * i;
            if at < len {
                _mm512_mask_storeu_ps(dst.add(at), lanes(len, at), _mm512_castpd_ps(v));
            }
        }
    }
}

/// The kernel transform G·g·Gᵀ (G the n×3 matrix `g`, n = 4 or 6) of every 3×3 kernel in `w` (9 values each,
/// row-major), 16 kernels at a time: `planes[n·a + b][p]` gets entry (a, b) of kernel p's transform (every entry
/// below the number of kernels is written, so the planes may start uninitialized). Returns whether it ran.
pub fn transform_kernels(
    g: &[[f32; 3]],
    w: &[f32],
    planes: &mut [&mut [std::mem::MaybeUninit<f32>]],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if available() {
        let kernels = w.len() / 9;
        assert!(
            w.len().is_multiple_of(9)
                && g.len() <= 6
                && planes.len() == g.len() * g.len()
                && planes.iter().all(|p| p.len() >= kernels)
        );
        // SAFETY: AVX-512 F is present; gathers and stores are masked to the kernels that exist (checked above).
        unsafe { transform_kernels_avx512(g, w, planes, kernels) };
        return true;
    }
    let _ = (g, w, planes);
    false
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_kernels_avx512(
    g: &[[f32; 3]],
    w: &[f32],
    planes: &mut [&mut [std::mem::MaybeUninit<f32>]],
    kernels: usize,
) {
    let side = g.len();
    let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let stride = _mm512_mullo_epi32(lane, _mm512_set1_epi32(9));
    let offsets: [__m512i; 9] =
        std::array::from_fn(|j| _mm512_add_epi32(stride, _mm512_set1_epi32(j as i32)));
    let c: Vec<[__m512; 3]> = g.iter().map(|row| row.map(|v| _mm512_set1_ps(v))).collect();
    let (mul, add) = (_mm512_mul_ps, _mm512_add_ps);
    let dot = |c: &[__m512; 3], x: [__m512; 3]| {
        add(add(mul(c[0], x[0]), mul(c[1], x[1])), mul(c[2], x[2]))
    };
    for p in (0..kernels).step_by(16) {
        let k = lanes(kernels, p);
        let base = w.as_ptr().add(9 * p);
        // The gathers do not draw the hardware prefetcher along: ask for the kernels four steps on (a prefetch
        // past the end is harmless; the address is only formed, never read).
        for line in 0..9 {
            let ahead = base.wrapping_add(9 * 16 * 4 + 16 * line);
            _mm_prefetch::<_MM_HINT_T0>(ahead.cast::<i8>());
        }
        let x: [__m512; 9] = std::array::from_fn(|j| {
            _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), k, offsets[j], base)
        });
        // g·Gᵀ: t[i][b] for kernel row i, then G·(g·Gᵀ).
        let mut t = [[_mm512_setzero_ps(); 6]; 3];
        for (i, ti) in t.iter_mut().enumerate() {
            for (b, cb) in c.iter().enumerate() {
                ti[b] = dot(cb, [x[3 * i], x[3 * i + 1], x[3 * i + 2]]);
            }
        }
        for (a, ca) in c.iter().enumerate() {
            for b in 0..side {
                let v = dot(ca, [t[0][b], t[1][b], t[2][b]]);
                let plane = planes[side * a + b].as_mut_ptr().cast::<f32>();
                _mm512_mask_storeu_ps(plane.add(p), k, v);
            }
        }
    }
}
