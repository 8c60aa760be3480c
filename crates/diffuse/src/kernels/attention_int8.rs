//! int8 attention scores for models built for int8 (SageAttention's recipe, on AVX512-VNNI): a query block's
//! rows are quantized per token to 8 bits, the keys per token after their mean over the tokens is taken out
//! (which moves every score of a query by the same amount and so leaves the softmax unchanged, while it keeps
//! a channel's common offset out of the 8 bits), and Sᵀ is computed on VPDPBUSD. The online softmax and the
//! output product stay in f32, as in [`attention_avx512`](super::attention_avx512), whose key loop this
//! shares.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::attention_avx512::{
    accumulate_values, load_row, store_scores, write_head, KeyBlocks, VECS,
};
use super::attention_avx512::{Scratch, QB};
use super::int8_gemm;
use super::storage::filled;

/// The byte that stands for 0 in the unsigned query quads: VPDPBUSD multiplies unsigned by signed bytes, so
/// queries are stored as value + 128 and 128 · Σ key bytes is taken off each score ([`KeysInt8::shift`]).
const ZERO_POINT: u8 = 128;
/// Flips a quad of unsigned bytes (value + 128) into the signed bytes of the same values.
const SIGN_FLIP: u32 = 0x8080_8080;

/// The fewest keys the int8 scores take: with fewer, quantizing each query block costs more than the faster
/// scores save (cross-attention to the text's 77 tokens, the UNet's inner levels at 512²).
pub const MIN_KEYS: usize = 2048;

/// Whether this CPU runs the int8 scores (AVX-512 with VNNI).
pub fn available() -> bool {
    super::attention_avx512::available() && super::int8_gemm::available()
}

/// The keys of every (batch item, head), quantized: token t of head h of batch item b is
/// `quads[((b · heads + h) · tokens + t) · dq..][..dq]`, its head dimensions in quads of signed bytes (zero
/// past `d`), with `scale` and `shift` at `(b · heads + h) · tokens + t`.
pub struct KeysInt8 {
    /// The quads.
    pub quads: Vec<u32>,
    /// Per key: the value of one step of its bytes.
    pub scale: Vec<f32>,
    /// Per key: 128 · the sum of its bytes.
    pub shift: Vec<f32>,
    /// Quads per key (`d.div_ceil(4)`).
    pub dq: usize,
}

impl KeysInt8 {
    /// Quantizes `k` (`[batch, tokens, heads · d]`, token-major), each (batch item, head) after subtracting
    /// its keys' mean per head dimension.
    pub fn quantize(k: &[f32], batch: usize, tokens: usize, heads: usize, d: usize) -> Self {
        let (c, dq) = (heads * d, d.div_ceil(4));
        let mut quads = filled(batch * heads * tokens * dq, 0u32);
        let mut scale = vec![0f32; batch * heads * tokens];
        let mut shift = vec![0f32; batch * heads * tokens];
        quads
            .par_chunks_mut(tokens * dq)
            .zip(
                scale
                    .par_chunks_mut(tokens)
                    .zip(shift.par_chunks_mut(tokens)),
            )
            .enumerate()
            .for_each(|(bh, (quads, (scale, shift)))| {
                let (b, h) = (bh / heads, bh % heads);
                let key = |t: usize| &k[(b * tokens + t) * c + h * d..][..d];
                let mut mean = vec![0f32; d];
                for t in 0..tokens {
                    for (m, &x) in mean.iter_mut().zip(key(t)) {
                        *m += x;
                    }
                }
                mean.iter_mut().for_each(|m| *m /= tokens as f32);
                let mut centred = vec![0f32; d];
                // Past d the bytes stay at the zero point: signed 0 once flipped.
                let mut bytes = vec![ZERO_POINT; dq * 4];
                for t in 0..tokens {
                    for ((v, &x), &m) in centred.iter_mut().zip(key(t)).zip(&mean) {
                        *v = x - m;
                    }
                    scale[t] = quantize_unsigned(&centred, &mut bytes[..d]);
                    for (i, dst) in quads[t * dq..(t + 1) * dq].iter_mut().enumerate() {
                        *dst = quad(&bytes, i) ^ SIGN_FLIP;
                    }
                    let sum: i32 = bytes[..d].iter().map(|&b| i32::from(b) - 128).sum();
                    shift[t] = f32::from(ZERO_POINT) * sum as f32;
                }
            });
        Self {
            quads,
            scale,
            shift,
            dq,
        }
    }
}

/// Symmetric 8-bit quantization of `values` as the int8 products round ([`int8_gemm::quantize_into`]): value ·
/// 127 / max |value| plus 128 into `bytes` (as long as `values`); returns the value of one step: 0 for all-zero
/// values, NaN when a value is not finite (so that, as in f32, the scores it enters become NaN).
fn quantize_unsigned(values: &[f32], bytes: &mut [u8]) -> f32 {
    // `max_abs` passes over NaNs; they are looked for apart, without stopping at the first (a search that may stop
    // early runs one value at a time, a fold over all of them runs a vector at a time).
    let max = int8_gemm::max_abs(values);
    let max = if values.iter().fold(false, |nan, v| nan | v.is_nan()) {
        f32::NAN
    } else {
        max
    };
    if max > 0.0 && max.is_finite() {
        int8_gemm::quantize_into(values, 127.0 / max, bytes);
        max / 127.0
    } else {
        bytes.fill(ZERO_POINT);
        if max == 0.0 {
            0.0
        } else {
            f32::NAN
        }
    }
}

/// Bytes `bytes[4 · i..4 · i + 4]` as the little-endian quad i.
fn quad(bytes: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([
        bytes[4 * i],
        bytes[4 * i + 1],
        bytes[4 * i + 2],
        bytes[4 * i + 3],
    ])
}

/// One head of one batch item for [`head_block_int8`]: its quantized keys, and the f32 values as
/// [`super::attention_avx512::HeadKv`] holds them.
pub struct HeadKvInt8<'a> {
    /// The head's key quads, `dq` per token.
    pub k: &'a [u32],
    /// The keys' steps.
    pub k_scale: &'a [f32],
    /// The keys' shifts.
    pub k_shift: &'a [f32],
    /// Quads per key.
    pub dq: usize,
    /// Values, `[tokens, stride]`.
    pub v: &'a [f32],
    /// Channels per token of the values, queries and output.
    pub stride: usize,
    /// The head's first channel.
    pub offset: usize,
    /// Head dimension.
    pub d: usize,
    /// Key tokens.
    pub tokens: usize,
}

/// [`super::attention_avx512::head_block`] with int8 scores: `q` f32 query rows (row stride `kv.stride`, the
/// head at `kv.offset`), `out` the head's columns of the same rows. Panics if a slice is too short for the
/// shapes given, or if the CPU lacks AVX512-VNNI.
pub fn head_block_int8(
    q: &[f32],
    rows: usize,
    kv: &HeadKvInt8,
    scale: f32,
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    let (c, d, dq) = (kv.stride, kv.d, kv.dq);
    assert!(rows <= QB && rows > 0 && kv.tokens > 0 && kv.offset + d <= c && dq == d.div_ceil(4));
    assert!(
        q.len() >= (rows - 1) * c + kv.offset + d && out.len() >= (rows - 1) * c + kv.offset + d
    );
    assert!(kv.k.len() >= kv.tokens * dq && kv.v.len() >= kv.tokens * c);
    assert!(kv.k_scale.len() >= kv.tokens && kv.k_shift.len() >= kv.tokens);
    assert!(scratch.qt_quads.len() >= dq * QB && scratch.ot.len() >= d * QB);
    assert!(available(), "the int8 attention needs AVX512-VNNI");
    // SAFETY: AVX-512 with VNNI was detected; every index the kernel forms is below the lengths asserted above.
    unsafe { head_block_int8_avx512(q, rows, kv, scale, scratch, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")]
unsafe fn head_block_int8_avx512(
    q: &[f32],
    rows: usize,
    kv: &HeadKvInt8,
    scale: f32,
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    let (c, d, dq, h0) = (kv.stride, kv.d, kv.dq, kv.offset);
    let quads = &mut scratch.qt_quads[..dq * QB];
    quads.fill(u32::from_le_bytes([ZERO_POINT; 4]));
    let mut q_scale = [0f32; QB];
    let (scaled, bytes) = (&mut scratch.q_row[..d], &mut scratch.q_bytes[..dq * 4]);
    // Past d the bytes stay at the zero point.
    bytes.fill(ZERO_POINT);
    for r in 0..rows {
        for (s, &x) in scaled.iter_mut().zip(&q[r * c + h0..r * c + h0 + d]) {
            *s = x * scale;
        }
        q_scale[r] = quantize_unsigned(scaled, &mut bytes[..d]);
        for kq in 0..dq {
            quads[kq * QB + r] = quad(bytes, kq);
        }
    }
    let qt = quads.as_ptr();
    let q_scale = load_row(q_scale.as_ptr());
    let (k, k_scale, k_shift) = (kv.k.as_ptr(), kv.k_scale.as_ptr(), kv.k_shift.as_ptr());
    let v = kv.v.as_ptr().add(h0);
    let blocks = KeyBlocks {
        tokens: kv.tokens,
        d,
        st: &mut scratch.st,
        ot: &mut scratch.ot[..d * QB],
        pairs: None,
    };
    let keys = |key: usize| Keys {
        quads: k.add(key * dq),
        dq,
        scale: k_scale.add(key),
        shift: k_shift.add(key),
    };
    let sum = blocks.run(
        |key, n, dst, max| match n {
            6 => scores_int8::<6>(qt, keys(key), &q_scale, dst, max),
            5 => scores_int8::<5>(qt, keys(key), &q_scale, dst, max),
            4 => scores_int8::<4>(qt, keys(key), &q_scale, dst, max),
            3 => scores_int8::<3>(qt, keys(key), &q_scale, dst, max),
            2 => scores_int8::<2>(qt, keys(key), &q_scale, dst, max),
            _ => scores_int8::<1>(qt, keys(key), &q_scale, dst, max),
        },
        |probs, j0, kb, dd, n, acc| accumulate_values(probs.f32, v, c, (j0, kb, dd, n), acc),
    );
    write_head(&scratch.ot[..d * QB], &sum, rows, (c, h0, d), out);
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn head_block_int8_avx512(
    _q: &[f32],
    _rows: usize,
    _kv: &HeadKvInt8,
    _scale: f32,
    _scratch: &mut Scratch,
    _out: &mut [f32],
) {
}

/// The quantized keys a score micro-kernel reads, from its first key on.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Keys {
    quads: *const u32,
    dq: usize,
    scale: *const f32,
    shift: *const f32,
}

/// Sᵀ rows for `R` keys: `dst[r · QB + i] = q_scale[i] · k_scale[r] · (Σ_kq dot(qt quad, key quad) −
/// k_shift[r])`, the dot products of unsigned query bytes and signed key bytes; raises `max[i]` to them.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn scores_int8<const R: usize>(
    qt: *const u32,
    keys: Keys,
    q_scale: &[__m512; VECS],
    dst: *mut f32,
    max: *mut f32,
) {
    let mut acc = [[_mm512_setzero_si512(); VECS]; R];
    for kq in 0..keys.dq {
        let row = qt.add(kq * QB) as *const __m512i;
        let qv: [__m512i; VECS] = std::array::from_fn(|u| _mm512_loadu_si512(row.add(u)));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let kb = _mm512_set1_epi32(*keys.quads.add(r * keys.dq + kq) as i32);
            for (a, &qv_u) in acc_r.iter_mut().zip(&qv) {
                *a = _mm512_dpbusd_epi32(*a, qv_u, kb);
            }
        }
    }
    let mut scores = [[_mm512_setzero_ps(); VECS]; R];
    for (r, (s_r, acc_r)) in scores.iter_mut().zip(&acc).enumerate() {
        let shift = _mm512_set1_ps(*keys.shift.add(r));
        let k_scale = _mm512_set1_ps(*keys.scale.add(r));
        for ((s, &a), &qs) in s_r.iter_mut().zip(acc_r).zip(q_scale) {
            let dot = _mm512_sub_ps(_mm512_cvtepi32_ps(a), shift);
            *s = _mm512_mul_ps(dot, _mm512_mul_ps(qs, k_scale));
        }
    }
    store_scores(&scores, dst, max);
}
