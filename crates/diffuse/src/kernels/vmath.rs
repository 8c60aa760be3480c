//! Vectorizable math: `exp` and `silu` written as plain arithmetic the compiler turns into SIMD code
//! (libm's `expf` is a scalar call that stops vectorization).

/// Independent accumulators in reductions, so the compiler can keep them in one SIMD register.
pub const LANES: usize = 16;

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 · 2²³: adding and subtracting it rounds an f32 of magnitude < 2²² to the nearest integer.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// e^x with a relative error of about 1 ulp on the normal range; inputs are clamped to [-87, 88], so very
/// negative inputs give ~1e-38 rather than 0, and the result never overflows to infinity.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND_MAGIC;
    let n = shifted - ROUND_MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Cephes' expf polynomial on [-ln2/2, ln2/2].
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // n's bits are the low bits of `shifted` (|n| < 2²²): integer arithmetic on them vectorizes, where
    // `n as i32` (saturating, NaN to 0) compiles to one scalar conversion per lane.
    let biased = shifted
        .to_bits()
        .wrapping_sub(ROUND_MAGIC.to_bits())
        .wrapping_add(127);
    let scale = f32::from_bits(biased << 23);
    e * scale
}

/// x · sigmoid(x).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// x · sigmoid(1.702 x), OpenAI CLIP's `quick_gelu`.
#[inline(always)]
pub fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + exp(-1.702 * x))
}

/// erf(x) by Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7), branch-free.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let mut p = 1.061_405_4f32;
    p = p * t - 1.453_152_1;
    p = p * t + 1.421_413_8;
    p = p * t - 0.284_496_74;
    p = p * t + 0.254_829_6;
    let y = 1.0 - p * t * exp(-a * a);
    y.copysign(x)
}

/// The exact (erf-based) GELU: x · (1 + erf(x / √2)) / 2.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_matches_libm() {
        let mut worst = 0f64;
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let want = (x as f64).exp();
            let got = super::exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "relative error {worst}");
        // Past the clamp the result stays finite and positive; NaN stays NaN.
        assert!(super::exp(-200.0) > 0.0 && super::exp(200.0).is_finite());
        assert!(super::exp(f32::NAN).is_nan() && super::silu(f32::NAN).is_nan());
    }

    #[test]
    fn erf_matches_reference_values() {
        // erf at a few points, to 9 digits (Abramowitz & Stegun table 7.1).
        for (x, want) in [
            (0.0f32, 0.0f64),
            (0.1, 0.112_462_916),
            (0.5, 0.520_499_878),
            (1.0, 0.842_700_793),
            (1.5, 0.966_105_146),
            (2.0, 0.995_322_265),
            (3.0, 0.999_977_910),
        ] {
            assert!((super::erf(x) as f64 - want).abs() < 4e-7, "erf({x})");
            assert!((super::erf(-x) as f64 + want).abs() < 4e-7, "erf(-{x})");
        }
    }

    #[test]
    fn silu_matches_definition() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.05;
            let want = x as f64 / (1.0 + (-(x as f64)).exp());
            assert!((super::silu(x) as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()));
        }
    }
}
