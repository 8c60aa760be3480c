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
