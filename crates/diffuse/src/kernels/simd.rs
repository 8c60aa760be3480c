//! Run-time CPU feature dispatch: the same plain Rust loop compiled for AVX-512, for AVX2+FMA and for the
//! baseline, the fastest one the CPU supports picked when called. Release binaries need no `target-cpu`.

/// What the running CPU can do, detected once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimdLevel {
    /// AVX-512 F/BW/VL/DQ with FMA.
    Avx512,
    /// AVX2 with FMA.
    Avx2,
    /// Whatever the target's baseline is (SSE2 on x86-64, NEON on aarch64).
    Baseline,
}

/// The best [`SimdLevel`] of this CPU.
pub fn simd_level() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("fma")
            {
                SimdLevel::Avx512
            } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                SimdLevel::Avx2
            } else {
                SimdLevel::Baseline
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        SimdLevel::Baseline
    }
}

/// Defines `fn $name(args) -> ret` that runs `$body` compiled for the best instruction set available.
///
/// The body must be plain safe Rust; it is inlined into one `#[target_feature]` copy per level so the compiler
/// vectorizes it for that level.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident $(<$($g:ident: $bound:path),*>)? ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name $(<$($g: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body $(<$($g: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
                unsafe fn avx512 $(<$($g: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2 $(<$($g: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                match $crate::kernels::simd::simd_level() {
                    // SAFETY: the level was detected on this CPU, so its instructions exist.
                    $crate::kernels::simd::SimdLevel::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    $crate::kernels::simd::SimdLevel::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::kernels::simd::SimdLevel::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}

pub(crate) use multiversion;

/// The transpose of a 16×16 block of f32 held as 16 row vectors: `out[j]` lane `i` is `rows[i]` lane `j`.
/// Three rounds of shuffles within registers (pairs of rows, quads, then 128-bit lanes).
///
/// # Safety
/// The CPU must have AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn transpose16(
    rows: [std::arch::x86_64::__m512; 16],
) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
    // Per 128-bit lane: (a0 b0 a1 b1) and (a2 b2 a3 b3) of rows 2i, 2i + 1.
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (rows[i & !1], rows[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // u[4g + j], per 128-bit lane L: column 4L + j of rows 4g..4g + 4.
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let (g, j) = (i / 4, i % 4);
        let (lo, hi) = (t[4 * g + j / 2], t[4 * g + 2 + j / 2]);
        if j % 2 == 0 {
            _mm512_shuffle_ps::<0x44>(lo, hi)
        } else {
            _mm512_shuffle_ps::<0xEE>(lo, hi)
        }
    });
    let mut out = [_mm512_setzero_ps(); 16];
    for j in 0..4 {
        // Lanes (0, 2) and (1, 3) of the column pieces of rows 0..8 and 8..16.
        let even_lo = _mm512_shuffle_f32x4::<0x88>(u[j], u[4 + j]);
        let odd_lo = _mm512_shuffle_f32x4::<0xDD>(u[j], u[4 + j]);
        let even_hi = _mm512_shuffle_f32x4::<0x88>(u[8 + j], u[12 + j]);
        let odd_hi = _mm512_shuffle_f32x4::<0xDD>(u[8 + j], u[12 + j]);
        out[j] = _mm512_shuffle_f32x4::<0x88>(even_lo, even_hi);
        out[8 + j] = _mm512_shuffle_f32x4::<0xDD>(even_lo, even_hi);
        out[4 + j] = _mm512_shuffle_f32x4::<0x88>(odd_lo, odd_hi);
        out[12 + j] = _mm512_shuffle_f32x4::<0xDD>(odd_lo, odd_hi);
    }
    out
}
