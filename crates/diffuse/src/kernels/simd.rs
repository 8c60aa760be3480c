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
