//! Causal self-attention over few tokens in f32, the CLIP text encoder's (77 tokens, 12 heads of 64): each
//! (item, head) is one task that copies its keys transposed and reads its queries and values in place from the
//! token-major projections, then for each query takes the scores against the keys up to its own position, their
//! softmax and the weighted sum of the values, written straight into the token-major output. candle's path splits
//! the heads into copies, runs two batched products, a scale, a mask addition and a softmax with scalar
//! `exp` as separate passes, which at this size cost more than the arithmetic.

use candle_core::{bail, Result, Tensor};
use rayon::prelude::*;

use super::storage::{F32Values, SharedOut};

/// The head width the kernel takes (every CLIP text encoder's: ViT-L/14, OpenCLIP ViT-H and bigG).
pub const HEAD_DIM: usize = 64;
/// Keys per score vector.
const KEYS: usize = 16;

/// Whether the kernel runs attention over `heads` heads of `width` channels on this CPU (AVX-512, heads of
/// [`HEAD_DIM`]); elsewhere the caller takes candle's ops ([`causal_attention_reference`]).
pub fn suits(width: usize, heads: usize) -> bool {
    super::simd::simd_level() == super::simd::SimdLevel::Avx512
        && heads > 0
        && width == heads * HEAD_DIM
}

/// softmax(q·kᵀ · scale + causal mask) · v for `q`, `k`, `v` `[batch, tokens, heads · 64]` (f32, CPU), the mask
/// hiding from each query the keys after it. Returns `[batch, tokens, heads · 64]`.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
) -> Result<Tensor> {
    let (batch, tokens, width) = q.dims3()?;
    if k.dims() != q.dims() || v.dims() != q.dims() {
        bail!(
            "causal attention: q {:?}, k {:?} and v {:?} must have one shape",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if !suits(width, heads) {
        bail!("causal attention: needs AVX-512 and heads of {HEAD_DIM} (got width {width}, {heads} heads)");
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let (qv, kv, vv) = (
        F32Values::of(&q, "causal attention q")?,
        F32Values::of(&k, "causal attention k")?,
        F32Values::of(&v, "causal attention v")?,
    );
    let (qs, ks, vs) = (qv.get(), kv.get(), vv.get());
    let stride = tokens.next_multiple_of(KEYS);
    let mut out = vec![0f32; batch * tokens * width];
    let out_ptr = SharedOut::new(&mut out);
    (0..batch * heads).into_par_iter().for_each_init(
        || (vec![0f32; HEAD_DIM * stride], vec![0f32; stride]),
        |(keys_t, scores), task| {
            let (item, head) = (task / heads, task % heads);
            let first = item * tokens * width + head * HEAD_DIM;
            let head = Head {
                q: &qs[first..],
                k: &ks[first..],
                v: &vs[first..],
                tokens,
                width,
                scale,
            };
            // SAFETY: AVX-512 was checked by `suits`; the head's rows lie inside q, k, v and out (all
            // batch × tokens × width, checked above), and this task alone writes its head's columns of out.
            unsafe { head.run(keys_t, scores, out_ptr.at(first)) };
        },
    );
    Tensor::from_vec(out, (batch, tokens, width), q.device())
}

/// One (item, head): its queries, keys and values from their first token on, rows `width` apart.
struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    tokens: usize,
    width: usize,
    scale: f32,
}

impl Head<'_> {
    /// Writes the head's output rows (`width` apart) from `out`, with `keys_t` (`HEAD_DIM` × stride) and
    /// `scores` (stride) as scratch.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F; `out` must point at `tokens` writable rows of `HEAD_DIM`, `width` apart.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn run(&self, keys_t: &mut [f32], scores: &mut [f32], out: *mut f32) {
        use std::arch::x86_64::*;
        let Self {
            q,
            k,
            v,
            tokens,
            width,
            scale,
        } = *self;
        let stride = scores.len();
        // Keys transposed: row dd holds channel dd of every key, zeros past the last.
        keys_t.fill(0.0);
        for t in 0..tokens {
            for (dd, &x) in k[t * width..t * width + HEAD_DIM].iter().enumerate() {
                keys_t[dd * stride + t] = x;
            }
        }
        for i in 0..tokens {
            let blocks = (i + 1).div_ceil(KEYS);
            let query = &q[i * width..i * width + HEAD_DIM];
            for first in (0..blocks).step_by(4) {
                match blocks - first {
                    1 => scores_of::<1>(query, keys_t, stride, first, scale, scores),
                    2 => scores_of::<2>(query, keys_t, stride, first, scale, scores),
                    3 => scores_of::<3>(query, keys_t, stride, first, scale, scores),
                    _ => scores_of::<4>(query, keys_t, stride, first, scale, scores),
                }
            }
            let seen = &mut scores[..blocks * KEYS];
            // The keys after position i are hidden: no part in the maximum, weight 0.
            seen[i + 1..].fill(f32::NEG_INFINITY);
            let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
            for block in seen.chunks_exact(KEYS) {
                max = _mm512_max_ps(max, _mm512_loadu_ps(block.as_ptr()));
            }
            let max = _mm512_reduce_max_ps(max);
            for s in seen.iter_mut() {
                *s = super::vmath::exp(*s - max);
            }
            seen[i + 1..].fill(0.0);
            let mut sum = _mm512_setzero_ps();
            for block in seen.chunks_exact(KEYS) {
                sum = _mm512_add_ps(sum, _mm512_loadu_ps(block.as_ptr()));
            }
            let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
            // Σ p_j · v_j, even and odd keys in separate accumulators (two independent chains per vector).
            let mut acc = [[_mm512_setzero_ps(); HEAD_DIM / 16]; 2];
            for (j, &p) in seen[..=i].iter().enumerate() {
                let (pv, row) = (_mm512_set1_ps(p), v.as_ptr().add(j * width));
                for (c, a) in acc[j % 2].iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(pv, _mm512_loadu_ps(row.add(16 * c)), *a);
                }
            }
            for (c, (&even, &odd)) in acc[0].iter().zip(&acc[1]).enumerate() {
                let total = _mm512_add_ps(even, odd);
                _mm512_storeu_ps(out.add(i * width + 16 * c), _mm512_mul_ps(total, inv));
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn run(&self, _keys_t: &mut [f32], _scores: &mut [f32], _out: *mut f32) {}
}

/// `scores[KEYS · (first + b)..][..KEYS]` = scale · q·k for `B` blocks of keys from block `first` on, keys
/// stored transposed in `keys_t` (rows of `stride`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn scores_of<const B: usize>(
    query: &[f32],
    keys_t: &[f32],
    stride: usize,
    first: usize,
    scale: f32,
    scores: &mut [f32],
) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); B];
    let base = keys_t.as_ptr().add(first * KEYS);
    for (dd, &qd) in query.iter().enumerate() {
        let qv = _mm512_set1_ps(qd);
        for (b, a) in acc.iter_mut().enumerate() {
            *a = _mm512_fmadd_ps(qv, _mm512_loadu_ps(base.add(dd * stride + b * KEYS)), *a);
        }
    }
    for (b, a) in acc.iter().enumerate() {
        let at = scores.as_mut_ptr().add((first + b) * KEYS);
        _mm512_storeu_ps(at, _mm512_mul_ps(*a, _mm512_set1_ps(scale)));
    }
}

/// The same composed from candle ops (the text encoder's general path), the reference of the kernel.
pub fn causal_attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
) -> Result<Tensor> {
    use crate::models::attention::{
        causal_mask, merge_heads, scaled_dot_product_attention, split_heads,
    };
    let tokens = q.dim(1)?;
    let mask = causal_mask(tokens, q.device())?.to_dtype(q.dtype())?;
    let (q, k, v) = (
        split_heads(q, heads)?,
        split_heads(k, heads)?,
        split_heads(v, heads)?,
    );
    merge_heads(&scaled_dot_product_attention(
        &q,
        &k,
        &v,
        scale as f64,
        Some(&mask),
        false,
    )?)
}
