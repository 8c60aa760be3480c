//! The float logarithm, sine and cosine of torch's AVX2 normal kernel, one lane at a time, to the bit.
//!
//! torch 2.15 evaluates Box–Muller on x86 with `log256_ps` and `sincos256_ps` from ATen's `avx_mathfun.h`
//! (Cephes polynomials by Julien Pommier and Giovanni Garberoglio). GCC builds that file with `-mfma` and
//! contracts some multiply–add pairs into fused operations; the `mul_add` calls below are exactly the pairs it
//! fuses (checked bit for bit against torch's output), every other operation is a separately rounded f32 one.
//! Constants are written as C does: a double literal rounded to float (shortened where the double is the same).

/// C's `0.707106781186547524`, which is this double.
const SQRT_HALF: f32 = std::f64::consts::FRAC_1_SQRT_2 as f32;
const LOG_P: [f32; 9] = [
    7.037_683_629_2E-2_f64 as f32,
    -1.151_461_031_0E-1_f64 as f32,
    1.167_699_874_0E-1_f64 as f32,
    -1.242_014_084_6E-1_f64 as f32,
    1.424_932_278_7E-1_f64 as f32,
    -1.666_805_766_5E-1_f64 as f32,
    2.000_071_476_5E-1_f64 as f32,
    -2.499_999_399_3E-1_f64 as f32,
    3.333_333_117_4E-1_f64 as f32,
];
const LOG_Q1: f32 = -2.121_944_40e-4_f64 as f32;
const LOG_Q2: f32 = 0.693_359_375_f64 as f32;

const MINUS_DP1: f32 = -0.785_156_25_f64 as f32;
const MINUS_DP2: f32 = -2.418_756_484_985_351_6e-4_f64 as f32;
const MINUS_DP3: f32 = -3.774_894_977_445_941e-8_f64 as f32;
const SINCOF: [f32; 3] = [
    -1.951_529_589_1E-4_f64 as f32,
    8.332_160_873_6E-3_f64 as f32,
    -1.666_665_461_1E-1_f64 as f32,
];
const COSCOF: [f32; 3] = [
    2.443_315_711_809_948E-5_f64 as f32,
    -1.388_731_625_493_765E-3_f64 as f32,
    4.166_664_568_298_827E-2_f64 as f32,
];
const FOUR_OVER_PI: f32 = 1.273_239_544_735_16_f64 as f32;

/// `log256_ps` for one lane, for `x` in (0, 1] (the only arguments the normal kernel passes).
pub(crate) fn log(x: f32) -> f32 {
    let x = x.max(f32::from_bits(0x0080_0000));
    let exponent = (x.to_bits() >> 23) as i32 - 0x7f;
    let mut x = f32::from_bits((x.to_bits() & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = exponent as f32 + 1.0;
    let below = x < SQRT_HALF;
    let tmp = if below { x } else { 0.0 };
    x -= 1.0;
    e -= if below { 1.0 } else { 0.0 };
    x += tmp;
    let z = x * x;
    let mut y = LOG_P[0];
    for &p in &LOG_P[1..] {
        y = y.mul_add(x, p);
    }
    y *= x;
    y = y.mul_add(z, e * LOG_Q1);
    y = (-z).mul_add(0.5, y);
    x += y;
    e.mul_add(LOG_Q2, x)
}

/// `sincos256_ps` for one lane: `(sin(x), cos(x))`.
pub(crate) fn sin_cos(x: f32) -> (f32, f32) {
    let sign_sin = x.to_bits() & 0x8000_0000;
    let mut x = f32::from_bits(x.to_bits() & 0x7fff_ffff);
    let octant = (((x * FOUR_OVER_PI) as i32) + 1) & !1;
    let y = octant as f32;
    let swap_sign_sin = ((octant & 4) as u32) << 29;
    let use_sin_poly = octant & 2 == 0;
    x = y.mul_add(MINUS_DP1, x);
    x = y.mul_add(MINUS_DP2, x);
    x = y.mul_add(MINUS_DP3, x);
    let sign_cos = ((!(octant - 2) & 4) as u32) << 29;
    let sign_sin = sign_sin ^ swap_sign_sin;

    let z = x * x;
    let mut cos_poly = COSCOF[0].mul_add(z, COSCOF[1]);
    cos_poly = cos_poly.mul_add(z, COSCOF[2]);
    cos_poly *= z;
    cos_poly = cos_poly.mul_add(z, -(z * 0.5));
    cos_poly += 1.0;

    let mut sin_poly = SINCOF[0].mul_add(z, SINCOF[1]);
    sin_poly = sin_poly.mul_add(z, SINCOF[2]);
    sin_poly *= z;
    sin_poly = sin_poly.mul_add(x, x);

    let sin_from_sin = if use_sin_poly { sin_poly } else { 0.0 };
    let sin_from_cos = if use_sin_poly { 0.0 } else { cos_poly };
    let cos_from_sin = sin_poly - sin_from_sin;
    let cos_from_cos = cos_poly - sin_from_cos;
    let sin = sin_from_cos + sin_from_sin;
    let cos = cos_from_cos + cos_from_sin;
    (
        f32::from_bits(sin.to_bits() ^ sign_sin),
        f32::from_bits(cos.to_bits() ^ sign_cos),
    )
}
