//! The AVX-512 path of the flash-style attention, computed transposed: a block of [`QB`] queries is held
//! query-minor (16 queries per vector), so the scores of a key block form Sᵀ (keys × queries), and the online
//! softmax (running max, rescaling, exponentials, sums) and the output update Oᵀ += Vᵀ·Pᵀ all run across 16
//! queries per vector instruction. Neither K nor V is repacked: the micro-kernels broadcast their elements
//! straight from the token-major tensors, and the only copies are the query block's transpose in and the
//! output's transpose out. Small head dimensions (40, 80) gain most: a general GEMM with an inner dimension
//! of 40 spends much of its time packing.
//!
//! bf16 tensors on CPUs with AVX512-BF16 take [`head_block_bf16`]: both products run on the dot-product
//! instruction (VDPBF16PS, pairs of head dimensions for the scores, pairs of keys for the output), the
//! softmax stays in f32 and the probabilities are rounded to bf16 for the second product, as PyTorch's bf16
//! attention does. Values come in pairs of consecutive tokens ([`HeadKvBf16::v_pairs`], made once per call).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use half::bf16;

use super::storage::Elem;

#[cfg(target_arch = "x86_64")]
use super::vmath;

/// Queries per block (four vectors of 16).
pub const QB: usize = 64;
/// Vectors per query block.
pub(super) const VECS: usize = QB / 16;
/// Keys per score block: Sᵀ is `KB`×`QB` f32 (32 KiB, L1-sized).
const KB: usize = 128;
/// Keys per score micro-kernel call.
const SCORE_ROWS: usize = 6;
/// Head dimensions per output micro-kernel call.
const OUT_ROWS: usize = 5;

/// One head of one batch item: its keys and values on their own (`[tokens, d]` each, as `attention` lays them
/// out); the queries and the output are token rows of `stride` channels with the head's columns at `offset`.
pub struct HeadKv<'a> {
    /// The head's keys, `[tokens, d]`.
    pub k: &'a [f32],
    /// The head's values, `[tokens, d]`.
    pub v: &'a [f32],
    /// Channels per token of the queries and the output.
    pub stride: usize,
    /// The head's first channel in the queries and the output.
    pub offset: usize,
    /// Head dimension.
    pub d: usize,
    /// Key tokens.
    pub tokens: usize,
}

/// One head of one batch item in bf16: keys as in [`HeadKv`], values as pairs of consecutive tokens.
pub struct HeadKvBf16<'a> {
    /// Keys, `[tokens, stride]`.
    pub k: &'a [bf16],
    /// Values, `[tokens.div_ceil(2), stride]`: `pair(V[2j, ch], V[2j + 1, ch])` (see
    /// [`super::bf16_gemm::pair`]), zero in the high half past the last token.
    pub v_pairs: &'a [u32],
    /// Channels per token.
    pub stride: usize,
    /// The head's first channel.
    pub offset: usize,
    /// Head dimension (even).
    pub d: usize,
    /// Key tokens.
    pub tokens: usize,
}

/// The per-task working memory of [`head_block`] and [`head_block_bf16`].
pub struct Scratch {
    qt: Vec<f32>,
    pub(super) st: Vec<f32>,
    pub(super) ot: Vec<f32>,
    qt_pairs: Vec<u32>,
    pt_pairs: Vec<u32>,
    /// The query block as quads of 8-bit head dimensions ([`super::attention_int8`]).
    pub(super) qt_quads: Vec<u32>,
    /// One query row, scaled, and its bytes ([`super::attention_int8`]).
    pub(super) q_row: Vec<f32>,
    pub(super) q_bytes: Vec<u8>,
}

impl Scratch {
    /// Working memory for head dimension `d`.
    pub fn new(d: usize) -> Self {
        Self {
            qt: vec![0.0; d * QB],
            st: vec![0.0; KB * QB],
            ot: vec![0.0; d * QB],
            qt_pairs: vec![0; d.div_ceil(2) * QB],
            pt_pairs: vec![0; KB / 2 * QB],
            qt_quads: vec![0; d.div_ceil(4) * QB],
            q_row: vec![0.0; d],
            q_bytes: vec![0; d.div_ceil(4) * 4],
        }
    }
}

/// Whether this CPU runs the AVX-512 path.
pub fn available() -> bool {
    super::simd::simd_level() == super::simd::SimdLevel::Avx512
}

/// Whether this CPU runs the bf16 path ([`head_block_bf16`]).
pub fn available_bf16() -> bool {
    available() && super::bf16_gemm::available()
}

/// Attention of `rows` (≤ [`QB`]) queries of one head: `q` holds the query tokens (row stride `kv.stride`,
/// the head at `kv.offset`), `out` receives the head's columns of the same rows. Panics if a slice is too
/// short for the shapes given (callers size them from the tensors).
pub fn head_block(
    q: &[f32],
    rows: usize,
    kv: &HeadKv,
    scale: f32,
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    let (c, d) = (kv.stride, kv.d);
    assert!(rows <= QB && rows > 0 && kv.tokens > 0 && kv.offset + d <= c);
    assert!(
        q.len() >= (rows - 1) * c + kv.offset + d && out.len() >= (rows - 1) * c + kv.offset + d
    );
    assert!(kv.k.len() >= kv.tokens * d && kv.v.len() >= kv.tokens * d);
    assert!(scratch.qt.len() >= d * QB && scratch.ot.len() >= d * QB);
    assert!(available(), "the AVX-512 attention needs AVX-512");
    // SAFETY: AVX-512 was detected; every index the kernel forms is below the lengths asserted above.
    unsafe { head_block_avx512(q, rows, kv, scale, scratch, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn head_block_avx512(
    q: &[f32],
    rows: usize,
    kv: &HeadKv,
    scale: f32,
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    let (c, d, h0) = (kv.stride, kv.d, kv.offset);
    let qt = &mut scratch.qt[..d * QB];
    qt.fill(0.0);
    for r in 0..rows {
        let src = &q[r * c + h0..r * c + h0 + d];
        for (kk, &x) in src.iter().enumerate() {
            qt[kk * QB + r] = x * scale;
        }
    }
    let qt = qt.as_ptr();
    let (k, v) = (kv.k.as_ptr(), kv.v.as_ptr());
    let blocks = KeyBlocks {
        tokens: kv.tokens,
        d,
        st: &mut scratch.st,
        ot: &mut scratch.ot[..d * QB],
        pairs: None,
    };
    let sum = blocks.run(
        |key, n, dst, max| match n {
            6 => scores::<6>(qt, k.add(key * d), d, d, dst, max),
            5 => scores::<5>(qt, k.add(key * d), d, d, dst, max),
            4 => scores::<4>(qt, k.add(key * d), d, d, dst, max),
            3 => scores::<3>(qt, k.add(key * d), d, d, dst, max),
            2 => scores::<2>(qt, k.add(key * d), d, d, dst, max),
            _ => scores::<1>(qt, k.add(key * d), d, d, dst, max),
        },
        |probs, j0, kb, dd, n, acc| accumulate_values(probs.f32, v, d, (j0, kb, dd, n), acc),
    );
    write_head(&scratch.ot[..d * QB], &sum, rows, (c, h0, d), out);
}

/// [`head_block`] on bf16 tensors (the module's bf16 path): `q` and `out` bf16 token rows, `kv.d` even.
/// Panics if a slice is too short for the shapes given, or if the CPU lacks AVX512-BF16.
pub fn head_block_bf16(
    q: &[bf16],
    rows: usize,
    kv: &HeadKvBf16,
    scale: f32,
    scratch: &mut Scratch,
    out: &mut [bf16],
) {
    let (c, d) = (kv.stride, kv.d);
    assert!(rows <= QB && rows > 0 && kv.tokens > 0 && kv.offset + d <= c && d % 2 == 0);
    assert!(
        q.len() >= (rows - 1) * c + kv.offset + d && out.len() >= (rows - 1) * c + kv.offset + d
    );
    assert!(kv.k.len() >= kv.tokens * c && kv.v_pairs.len() >= kv.tokens.div_ceil(2) * c);
    assert!(scratch.qt_pairs.len() >= d / 2 * QB && scratch.ot.len() >= d * QB);
    assert!(available_bf16(), "the bf16 attention needs AVX512-BF16");
    // SAFETY: AVX-512 and AVX512-BF16 were detected; every index the kernel forms is below the lengths
    // asserted above.
    unsafe { head_block_bf16_avx512(q, rows, kv, scale, scratch, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
unsafe fn head_block_bf16_avx512(
    q: &[bf16],
    rows: usize,
    kv: &HeadKvBf16,
    scale: f32,
    scratch: &mut Scratch,
    out: &mut [bf16],
) {
    let (c, d, h0) = (kv.stride, kv.d, kv.offset);
    let qt = &mut scratch.qt_pairs[..d / 2 * QB];
    qt.fill(0);
    for r in 0..rows {
        let src = &q[r * c + h0..r * c + h0 + d];
        for (kp, two) in src.chunks_exact(2).enumerate() {
            qt[kp * QB + r] = super::bf16_gemm::pair(two[0], two[1]);
        }
    }
    let qt = qt.as_ptr();
    let (k, v) = (kv.k.as_ptr().add(h0), kv.v_pairs.as_ptr().add(h0));
    let blocks = KeyBlocks {
        tokens: kv.tokens,
        d,
        st: &mut scratch.st,
        ot: &mut scratch.ot[..d * QB],
        pairs: Some(&mut scratch.pt_pairs),
    };
    let sum = blocks.run(
        |key, n, dst, max| match n {
            6 => scores_bf16::<6>(qt, k.add(key * c), c, d, scale, dst, max),
            5 => scores_bf16::<5>(qt, k.add(key * c), c, d, scale, dst, max),
            4 => scores_bf16::<4>(qt, k.add(key * c), c, d, scale, dst, max),
            3 => scores_bf16::<3>(qt, k.add(key * c), c, d, scale, dst, max),
            2 => scores_bf16::<2>(qt, k.add(key * c), c, d, scale, dst, max),
            _ => scores_bf16::<1>(qt, k.add(key * c), c, d, scale, dst, max),
        },
        |probs, j0, kb, dd, n, acc| {
            let (p, pairs, v) = (probs.pairs, kb.div_ceil(2), v.add(j0 / 2 * c + dd));
            match n {
                5 => accumulate_bf16::<5>(p, pairs, v, c, acc),
                4 => accumulate_bf16::<4>(p, pairs, v, c, acc),
                3 => accumulate_bf16::<3>(p, pairs, v, c, acc),
                2 => accumulate_bf16::<2>(p, pairs, v, c, acc),
                _ => accumulate_bf16::<1>(p, pairs, v, c, acc),
            }
        },
    );
    write_head(&scratch.ot[..d * QB], &sum, rows, (c, h0, d), out);
}

/// Oᵀ (`ot`, d × [`QB`]) divided by the softmax denominators `sum`, into the head's columns `h0..h0 + d` of the
/// first `rows` token rows of `out` (row stride `c`).
pub(super) fn write_head<T: Elem>(
    ot: &[f32],
    sum: &[f32; QB],
    rows: usize,
    (c, h0, d): (usize, usize, usize),
    out: &mut [T],
) {
    let inv = sum.map(|s| 1.0 / s);
    for r in 0..rows {
        let dst = &mut out[r * c + h0..r * c + h0 + d];
        for (kk, o) in dst.iter_mut().enumerate() {
            *o = T::from_f32(ot[kk * QB + r] * inv[r]);
        }
    }
}

/// The output step of the key loop on f32 probabilities `p` and values: `v` points at the head's first value
/// channel of token 0 (row stride `c`); adds the products of keys `j0..j0 + kb` for head dimensions
/// `dd..dd + n` (n ≤ [`OUT_ROWS`]) into `acc`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn accumulate_values(
    p: *const f32,
    v: *const f32,
    c: usize,
    (j0, kb, dd, n): (usize, usize, usize, usize),
    acc: *mut f32,
) {
    let v = v.add(j0 * c + dd);
    match n {
        5 => accumulate::<5>(p, kb, v, c, acc),
        4 => accumulate::<4>(p, kb, v, c, acc),
        3 => accumulate::<3>(p, kb, v, c, acc),
        2 => accumulate::<2>(p, kb, v, c, acc),
        _ => accumulate::<1>(p, kb, v, c, acc),
    }
}

/// A key block's probabilities as the output micro-kernels read them: `f32` rows of Sᵀ, or (bf16 path)
/// `pairs` of keys.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct Probabilities {
    pub(super) f32: *const f32,
    pairs: *const u32,
}

/// The key loop both precisions share, over one query block: the keys in blocks of up to [`KB`], each block's
/// scores folded into the online softmax and its products added into the output accumulator `ot` (Oᵀ,
/// `d`×[`QB`]). With `pairs`, the probabilities are handed to the output kernels as bf16 pairs of keys.
#[cfg(target_arch = "x86_64")]
pub(super) struct KeyBlocks<'a> {
    pub(super) tokens: usize,
    pub(super) d: usize,
    pub(super) st: &'a mut [f32],
    pub(super) ot: &'a mut [f32],
    pub(super) pairs: Option<&'a mut [u32]>,
}

#[cfg(target_arch = "x86_64")]
impl KeyBlocks<'_> {
    /// Runs the loop: `scores(key, n, dst, max)` writes the Sᵀ rows of keys `key..key + n` (n ≤
    /// [`SCORE_ROWS`]) at `dst` and raises the running maxima `max`; `accumulate(probs, j0, kb, dd, n, acc)`
    /// adds the products of the block of `kb` keys from `j0` for head dimensions `dd..dd + n` (n ≤
    /// [`OUT_ROWS`]) into `acc`. Returns the softmax denominators.
    #[inline(always)]
    pub(super) fn run(
        self,
        scores: impl Fn(usize, usize, *mut f32, *mut f32),
        accumulate: impl Fn(Probabilities, usize, usize, usize, usize, *mut f32),
    ) -> [f32; QB] {
        let KeyBlocks {
            tokens,
            d,
            st,
            ot,
            mut pairs,
        } = self;
        ot.fill(0.0);
        let mut max = [f32::NEG_INFINITY; QB];
        let mut sum = [0f32; QB];
        let mut j0 = 0;
        while j0 < tokens {
            let kb = KB.min(tokens - j0);
            let st = &mut st[..kb * QB];
            let mut new_max = max;
            let mut jj = 0;
            while jj < kb {
                let n = SCORE_ROWS.min(kb - jj);
                scores(j0 + jj, n, st[jj * QB..].as_mut_ptr(), new_max.as_mut_ptr());
                jj += n;
            }
            let mut pt = pairs.as_deref_mut().map(|p| &mut p[..kb.div_ceil(2) * QB]);
            softmax_block(st, &mut max, new_max, &mut sum, ot, pt.as_deref_mut());
            let probs = Probabilities {
                f32: st.as_ptr(),
                pairs: pt.map_or(std::ptr::null(), |p| p.as_ptr()),
            };
            let mut dd = 0;
            while dd < d {
                let n = OUT_ROWS.min(d - dd);
                accumulate(probs, j0, kb, dd, n, ot[dd * QB..].as_mut_ptr());
                dd += n;
            }
            j0 += kb;
        }
        sum
    }
}

/// Folds a block of scores Sᵀ (`st`, keys × [`QB`]) whose maximum (with the running one) is `new_max` into
/// the running softmax: rescales `sum` and the output accumulator `ot` by e^(`max` − `new_max`), replaces
/// the scores by e^(s − `new_max`) (or, given `pairs`, writes them there as bf16 pairs of keys), adds them
/// to `sum` and sets `max` to `new_max`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn softmax_block(
    st: &mut [f32],
    max: &mut [f32; QB],
    new_max: [f32; QB],
    sum: &mut [f32; QB],
    ot: &mut [f32],
    pairs: Option<&mut [u32]>,
) {
    let mut correction = [0f32; QB];
    for ((corr, &old), &new) in correction.iter_mut().zip(max.iter()).zip(&new_max) {
        *corr = vmath::exp(old - new);
    }
    if correction.iter().any(|&x| x != 1.0) {
        for row in ot.chunks_exact_mut(QB) {
            for (o, &corr) in row.iter_mut().zip(&correction) {
                *o *= corr;
            }
        }
    }
    let mut block_sum = [0f32; QB];
    match pairs {
        // SAFETY: the callers run with AVX-512 enabled, and with AVX512-BF16 when they pass `pairs`.
        None => unsafe { exp_block(st, &new_max, &mut block_sum) },
        Some(pairs) => unsafe { exp_pairs(st, &new_max, &mut block_sum, pairs) },
    }
    for ((s, &corr), &b) in sum.iter_mut().zip(&correction).zip(&block_sum) {
        *s = *s * corr + b;
    }
    *max = new_max;
}

/// Replaces every row of `st` (keys × [`QB`]) by e^(row − `max`) and adds the rows into `sum`: the softmax's
/// exponentials, which bound the kernel at small head dimensions (one per score against `d` multiply-adds).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn exp_block(st: &mut [f32], max: &[f32; QB], sum: &mut [f32; QB]) {
    let m = load_row(max.as_ptr());
    let mut acc = [_mm512_setzero_ps(); VECS];
    for row in st.chunks_exact_mut(QB) {
        let p = row.as_mut_ptr();
        for (u, (a, &m_u)) in acc.iter_mut().zip(&m).enumerate() {
            let e = exp_nonpositive::<6>(_mm512_sub_ps(_mm512_loadu_ps(p.add(16 * u)), m_u));
            _mm512_storeu_ps(p.add(16 * u), e);
            *a = _mm512_add_ps(*a, e);
        }
    }
    for (u, &a) in acc.iter().enumerate() {
        _mm512_storeu_ps(sum.as_mut_ptr().add(16 * u), a);
    }
}

/// [`exp_block`] for the bf16 path: e^(row − `max`) of rows 2j and 2j + 1 of `st` go to row j of `pairs` as
/// bf16 pairs (the high half 0 past an odd last row); `sum` gets the f32 values.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn exp_pairs(st: &[f32], max: &[f32; QB], sum: &mut [f32; QB], pairs: &mut [u32]) {
    let m = load_row(max.as_ptr());
    let mut acc = [_mm512_setzero_ps(); VECS];
    let rows = st.len() / QB;
    for (jp, dst) in pairs
        .chunks_exact_mut(QB)
        .take(rows.div_ceil(2))
        .enumerate()
    {
        let lo = st.as_ptr().add(2 * jp * QB);
        for (u, (a, &m_u)) in acc.iter_mut().zip(&m).enumerate() {
            let e0 = exp_nonpositive::<4>(_mm512_sub_ps(_mm512_loadu_ps(lo.add(16 * u)), m_u));
            let e1 = if 2 * jp + 1 < rows {
                exp_nonpositive::<4>(_mm512_sub_ps(_mm512_loadu_ps(lo.add(QB + 16 * u)), m_u))
            } else {
                _mm512_setzero_ps()
            };
            *a = _mm512_add_ps(*a, _mm512_add_ps(e0, e1));
            _mm512_storeu_si512(
                dst.as_mut_ptr().add(16 * u) as *mut __m512i,
                bf16_pairs(e0, e1),
            );
        }
    }
    for (u, &a) in acc.iter().enumerate() {
        _mm512_storeu_ps(sum.as_mut_ptr().add(16 * u), a);
    }
}

/// Lane i of `lo` and of `hi` rounded to bf16 and packed into lane i as a pair (`lo` in the low half).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_pairs(lo: __m512, hi: __m512) -> __m512i {
    let lo = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(
        _mm512_cvtneps_pbh(lo),
    ));
    let hi = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(
        _mm512_cvtneps_pbh(hi),
    ));
    _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi))
}

/// e^x for x ≤ 0 (scores minus their running max) as 2^n · 2^f with n = round(x·log₂e) and 2^f, |f| ≤ ½, from
/// its Taylor polynomial of degree `D` ≤ 6 (relative error ≤ 1.3e-7 at 6, for f32 probabilities; ≤ 4.2e-5 at
/// 4, well inside the 2⁻⁹ rounding of bf16 ones); `vscalefps` applies 2^n and flushes to 0 below f32's range.
/// About half the instructions of [`vmath::exp`], which is general (clamps, integer exponent).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn exp_nonpositive<const D: usize>(x: __m512) -> __m512 {
    /// ln2^k / k! for k = 6 down to 0.
    const TAYLOR: [f32; 7] = [
        1.540_353e-4,
        1.333_355_8e-3,
        9.618_129e-3,
        5.550_411e-2,
        0.240_226_5,
        std::f32::consts::LN_2,
        1.0,
    ];
    let x = _mm512_max_ps(x, _mm512_set1_ps(-150.0));
    let t = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let f = _mm512_sub_ps(t, n);
    let coefficients = &TAYLOR[TAYLOR.len() - 1 - D..];
    let mut p = _mm512_set1_ps(coefficients[0]);
    for &c in &coefficients[1..] {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// The [`QB`] bf16 pairs at `p` as four vectors.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn load_pairs(p: *const __m512i) -> [__m512bh; VECS] {
    let mut v = [_mm512_setzero_si512(); VECS];
    for (i, v_i) in v.iter_mut().enumerate() {
        *v_i = _mm512_loadu_si512(p.add(i));
    }
    std::mem::transmute::<[__m512i; VECS], [__m512bh; VECS]>(v)
}

/// The [`QB`] values at `p` as four vectors.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn load_row(p: *const f32) -> [__m512; VECS] {
    [
        _mm512_loadu_ps(p),
        _mm512_loadu_ps(p.add(16)),
        _mm512_loadu_ps(p.add(32)),
        _mm512_loadu_ps(p.add(48)),
    ]
}

/// Stores four vectors as the [`QB`] values at `p`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store_row(p: *mut f32, row: &[__m512; VECS]) {
    for (u, &v) in row.iter().enumerate() {
        _mm512_storeu_ps(p.add(16 * u), v);
    }
}

/// Stores the Sᵀ rows of a score micro-kernel (`acc`, one row of [`QB`] per key) at `dst` and raises the
/// running maxima at `max` to them.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn store_scores<const R: usize>(
    acc: &[[__m512; VECS]; R],
    dst: *mut f32,
    max: *mut f32,
) {
    let mut m = load_row(max);
    for (r, acc_r) in acc.iter().enumerate() {
        store_row(dst.add(r * QB), acc_r);
        for (m_u, &a) in m.iter_mut().zip(acc_r) {
            *m_u = _mm512_max_ps(*m_u, a);
        }
    }
    store_row(max, &m);
}

/// Sᵀ rows for `R` keys: `dst[r · QB + i] = Σ_kk k[r · c + kk] · qt[kk · QB + i]`; raises `max[i]` (QB
/// values) to the largest of them.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn scores<const R: usize>(
    qt: *const f32,
    k: *const f32,
    c: usize,
    d: usize,
    dst: *mut f32,
    max: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); VECS]; R];
    for kk in 0..d {
        let row = qt.add(kk * QB);
        let qv = load_row(row);
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let kb = _mm512_set1_ps(*k.add(r * c + kk));
            for (a, &qv_u) in acc_r.iter_mut().zip(&qv) {
                *a = _mm512_fmadd_ps(kb, qv_u, *a);
            }
        }
    }
    store_scores(&acc, dst, max);
}

/// Oᵀ rows for `R` head dimensions: `acc[r · QB + i] += Σ_j v[j · c + r] · p[j · QB + i]` over `keys` keys.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn accumulate<const R: usize>(
    p: *const f32,
    keys: usize,
    v: *const f32,
    c: usize,
    acc: *mut f32,
) {
    let mut regs = [[_mm512_setzero_ps(); VECS]; R];
    for (r, regs_r) in regs.iter_mut().enumerate() {
        *regs_r = load_row(acc.add(r * QB));
    }
    for j in 0..keys {
        let row = p.add(j * QB);
        let pv = load_row(row);
        for (r, regs_r) in regs.iter_mut().enumerate() {
            let vb = _mm512_set1_ps(*v.add(j * c + r));
            for (a, &pv_u) in regs_r.iter_mut().zip(&pv) {
                *a = _mm512_fmadd_ps(vb, pv_u, *a);
            }
        }
    }
    for (r, regs_r) in regs.iter().enumerate() {
        store_row(acc.add(r * QB), regs_r);
    }
}

/// [`scores`] on bf16 pairs: `qt` holds pairs of head dimensions ([`QB`] per pair), `k` bf16 key rows;
/// the sums are multiplied by `scale`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn scores_bf16<const R: usize>(
    qt: *const u32,
    k: *const bf16,
    c: usize,
    d: usize,
    scale: f32,
    dst: *mut f32,
    max: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); VECS]; R];
    for kp in 0..d / 2 {
        let row = qt.add(kp * QB) as *const __m512i;
        let qv = load_pairs(row);
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let pair = (k.add(r * c + 2 * kp) as *const i32).read_unaligned();
            let kb: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
            for (a, &qv_u) in acc_r.iter_mut().zip(&qv) {
                *a = _mm512_dpbf16_ps(*a, qv_u, kb);
            }
        }
    }
    let s = _mm512_set1_ps(scale);
    for acc_r in acc.iter_mut() {
        for a in acc_r.iter_mut() {
            *a = _mm512_mul_ps(*a, s);
        }
    }
    store_scores(&acc, dst, max);
}

/// [`accumulate`] on bf16 pairs of keys: `p` holds `pairs` rows of [`QB`] probability pairs, `v` value pairs
/// with row stride `c`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn accumulate_bf16<const R: usize>(
    p: *const u32,
    pairs: usize,
    v: *const u32,
    c: usize,
    acc: *mut f32,
) {
    let mut regs = [[_mm512_setzero_ps(); VECS]; R];
    for (r, regs_r) in regs.iter_mut().enumerate() {
        *regs_r = load_row(acc.add(r * QB));
    }
    for jp in 0..pairs {
        let row = p.add(jp * QB) as *const __m512i;
        let pv = load_pairs(row);
        for (r, regs_r) in regs.iter_mut().enumerate() {
            let vb: __m512bh = std::mem::transmute(_mm512_set1_epi32(*v.add(jp * c + r) as i32));
            for (a, &pv_u) in regs_r.iter_mut().zip(&pv) {
                *a = _mm512_dpbf16_ps(*a, pv_u, vb);
            }
        }
    }
    for (r, regs_r) in regs.iter().enumerate() {
        store_row(acc.add(r * QB), regs_r);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn head_block_bf16_avx512(
    _q: &[bf16],
    _rows: usize,
    _kv: &HeadKvBf16,
    _scale: f32,
    _scratch: &mut Scratch,
    _out: &mut [bf16],
) {
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn head_block_avx512(
    _q: &[f32],
    _rows: usize,
    _kv: &HeadKv,
    _scale: f32,
    _scratch: &mut Scratch,
    _out: &mut [f32],
) {
}
