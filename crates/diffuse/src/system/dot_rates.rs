//! How fast one core of this CPU multiplies and adds in each operand type: the f32 FMA, the bf16 dot product
//! (VDPBF16PS) and the int8 dot product (VPDPBUSD), each measured on 512-bit registers with enough independent
//! accumulators to hide its latency. CPUs that report the same features differ here (a CPU may issue bf16 dot
//! products at a fraction of its FMA rate), and these rates, not the feature flags, say which dtype is fast.

use std::time::Instant;

/// Multiply-adds per second on one core, per operand type (`None`: the CPU lacks the instruction).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DotRates {
    /// f32 FMA (16 multiply-adds per instruction).
    pub f32_fma: Option<f64>,
    /// bf16 pairs summed into f32 (VDPBF16PS, 32 per instruction).
    pub bf16_dot: Option<f64>,
    /// u8 × s8 quads summed into i32 (VPDPBUSD, 64 per instruction).
    pub int8_dot: Option<f64>,
}

/// Measures [`DotRates`] on the calling thread (a few milliseconds).
pub fn measure_dot_rates() -> DotRates {
    #[cfg(target_arch = "x86_64")]
    {
        let has = |f: &str| match f {
            "fma" => is_x86_feature_detected!("avx512f"),
            "bf16" => is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16"),
            _ => is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni"),
        };
        // Instructions per second: a warm-up round (clocks, caches), then the timed one.
        let rate = |run: unsafe fn(usize) -> f64, macs: f64| {
            // SAFETY: each kernel is called only where its instructions were detected just above.
            unsafe { run(20_000) };
            Some(unsafe { run(400_000) } * macs)
        };
        DotRates {
            f32_fma: has("fma").then(|| rate(run_fma, 16.0)).flatten(),
            bf16_dot: has("bf16").then(|| rate(run_bf16, 32.0)).flatten(),
            int8_dot: has("int8").then(|| rate(run_int8, 64.0)).flatten(),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        DotRates {
            f32_fma: None,
            bf16_dot: None,
            int8_dot: None,
        }
    }
}

/// Instructions per second of `step` over `iters` rounds of 24 independent accumulators (inlined into each
/// kernel below, which brings the instructions' target features).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn rounds<V: Copy>(iters: usize, zero: V, step: impl Fn(V) -> V) -> f64 {
    let mut acc = [zero; 24];
    let start = Instant::now();
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = step(*v);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    std::hint::black_box(&acc);
    (iters * 24) as f64 / seconds
}

/// f32 FMAs per second.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_fma(iters: usize) -> f64 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(1e-9);
    rounds(iters, _mm512_setzero_ps(), |v| _mm512_fmadd_ps(v, a, a))
}

/// VDPBF16PS per second.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn run_bf16(iters: usize) -> f64 {
    use std::arch::x86_64::*;
    let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x0001_0001));
    rounds(iters, _mm512_setzero_ps(), |v| _mm512_dpbf16_ps(v, a, a))
}

/// VPDPBUSD per second.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn run_int8(iters: usize) -> f64 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_epi32(0x0101_0101);
    rounds(iters, _mm512_setzero_si512(), |v| {
        _mm512_dpbusd_epi32(v, a, a)
    })
}
