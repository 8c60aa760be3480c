//! Flash-style multi-head attention on the CPU: queries in blocks of [`Q_BLOCK`] rows, keys in blocks of
//! [`K_BLOCK`], with an online softmax, so no thread ever holds more than a `Q_BLOCK`×`K_BLOCK` block of
//! scores and memory stays bounded whatever the token count. Computes in f32, except bf16 tensors on CPUs with
//! AVX512-BF16, whose products run on the bf16 dot-product instruction ([`attention_avx512::head_block_bf16`]).

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;
use std::cell::RefCell;

use half::bf16;

use super::attention_avx512;
use super::attention_int8::{self, KeysInt8};
use super::bf16_gemm::pair;
use super::gemm::{matmul, MatMut, MatRef};
use super::simd::multiversion;
use super::storage::{as_f32, filled, from_f32};
use super::vmath::{self, LANES};

/// Query rows per task (the AVX-512 kernel's block).
pub const Q_BLOCK: usize = attention_avx512::QB;
/// Keys per score block.
pub const K_BLOCK: usize = 512;
/// The most query blocks one attention task runs for a head before the next head ([`query_blocks`]).
const GROUP_BLOCKS: usize = 16;

/// softmax(q·kᵀ · scale) · v per head, on token-major tensors: `q` `[batch, q_tokens, heads · d]`, `k` and `v`
/// `[batch, kv_tokens, heads · d]` → `[batch, q_tokens, heads · d]` in `q`'s dtype. CPU tensors only.
/// On CPUs with AVX-512 the blocks run the transposed kernel of [`attention_avx512`], elsewhere two `gemm`
/// products per block.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    run(q, k, v, heads, scale, attention_avx512::available(), false)
}

/// [`attention`] with the scores computed in int8 where the CPU has AVX512-VNNI
/// ([`attention_int8`](super::attention_int8): queries and mean-centred keys quantized per token), for models
/// built for int8: f32 tensors with at least [`attention_int8::MIN_KEYS`] keys; [`attention`] for the rest.
pub fn attention_int8(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
) -> Result<Tensor> {
    let int8 = attention_int8::available()
        && q.dtype() == DType::F32
        && k.dims()
            .get(1)
            .is_some_and(|&n| n >= attention_int8::MIN_KEYS);
    run(q, k, v, heads, scale, attention_avx512::available(), int8)
}

/// [`attention`] on its portable path (the `gemm` products), whatever the CPU: what CPUs without AVX-512
/// run, public so that its parity test runs everywhere.
pub fn attention_portable(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
) -> Result<Tensor> {
    run(q, k, v, heads, scale, false, false)
}

/// Applies the kernel, on the AVX-512 path when `avx512`, with int8 scores when `int8` (f32 tensors).
fn run(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    avx512: bool,
    int8: bool,
) -> Result<Tensor> {
    let op = FlashAttention {
        heads,
        scale: scale as f32,
        avx512,
        int8,
    };
    q.contiguous()?
        .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)
}

/// The same attention composed from candle ops (it forms the full score matrix): the reference the kernel is
/// tested against.
pub fn attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
) -> Result<Tensor> {
    let dtype = q.dtype();
    let split = |t: &Tensor| -> Result<Tensor> {
        let (b, n, c) = t.dims3()?;
        t.to_dtype(candle_core::DType::F32)?
            .reshape((b, n, heads, c / heads))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.matmul(&v)?;
    let (b, h, n, d) = out.dims4()?;
    out.transpose(1, 2)?.reshape((b, n, h * d))?.to_dtype(dtype)
}

struct FlashAttention {
    heads: usize,
    scale: f32,
    avx512: bool,
    int8: bool,
}

struct Dims {
    nq: usize,
    nk: usize,
    channels: usize,
    d: usize,
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "flash-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, nq, channels) = lq.shape().dims3()?;
        let (bk, nk, ck) = lk.shape().dims3()?;
        if lv.shape().dims3()? != (bk, nk, ck) || bk != batch || ck != channels {
            bail!(
                "attention: q {:?}, k {:?}, v {:?} do not fit together",
                lq.shape(),
                lk.shape(),
                lv.shape()
            );
        }
        if self.heads == 0 || !channels.is_multiple_of(self.heads) || nk == 0 {
            bail!(
                "attention: {channels} channels, {} heads, {nk} keys",
                self.heads
            );
        }
        let dims = Dims {
            nq,
            nk,
            channels,
            d: channels / self.heads,
        };
        if let (CpuStorage::BF16(q), CpuStorage::BF16(k), CpuStorage::BF16(v)) = (sq, sk, sv) {
            if self.avx512 && dims.d.is_multiple_of(2) && attention_avx512::available_bf16() {
                let (Some(q), Some(k), Some(v)) =
                    (contiguous(q, lq), contiguous(k, lk), contiguous(v, lv))
                else {
                    bail!("attention: the kernel needs contiguous tensors");
                };
                let out = self.forward_bf16(&dims, batch, q, k, v);
                return Ok((CpuStorage::BF16(out), lq.shape().clone()));
            }
        }
        let q = as_f32(sq, lq, "attention q")?;
        let k = as_f32(sk, lk, "attention k")?;
        let v = as_f32(sv, lv, "attention v")?;
        if self.int8 && self.avx512 && dims.d > 0 {
            let out = self.forward_int8(&dims, batch, &q, &k, &v);
            return Ok((from_f32(out, sq.dtype())?, lq.shape().clone()));
        }
        let out = if self.avx512 {
            self.forward_avx512(&dims, batch, &q, &k, &v)
        } else {
            let mut out = filled(batch * nq * channels, 0f32);
            if nq > 0 {
                out.par_chunks_mut(nq * channels)
                    .enumerate()
                    .try_for_each(|(b, out_batch)| {
                        out_batch
                            .par_chunks_mut(Q_BLOCK * channels)
                            .enumerate()
                            .try_for_each(|(i, out_block)| {
                                self.block(&dims, &q, &k, &v, b, i * Q_BLOCK, out_block)
                            })
                    })?;
            }
            out
        };
        Ok((from_f32(out, sq.dtype())?, lq.shape().clone()))
    }
}

/// One (batch item, head, query block) of [`query_blocks`].
struct Block<'a, Q, T> {
    /// The batch item.
    item: usize,
    /// The head.
    head: usize,
    /// Query rows in the block (up to [`Q_BLOCK`]).
    rows: usize,
    /// The block's query rows, all channels.
    q: &'a [Q],
    /// The block's output rows, all channels (the kernel writes the head's).
    out: &'a mut [T],
}

/// Runs `block` for every head of every block of up to [`Q_BLOCK`] query rows of every batch item, in parallel:
/// `q` is `[batch, dims.nq, dims.channels]` and so is `out`; `block` gets the task's working memory too. A task
/// takes a group of consecutive blocks (up to [`GROUP_BLOCKS`], fewer when that would leave under four tasks per
/// thread) and runs all of them for one head before the next head, so that the head's keys and values are reused
/// from the core's caches across the group.
fn query_blocks<Q: Sync, T: Send>(
    dims: &Dims,
    heads: usize,
    q: &[Q],
    out: &mut [T],
    block: impl Fn(Block<'_, Q, T>, &mut attention_avx512::Scratch) + Sync,
) {
    let c = dims.channels;
    if dims.nq == 0 || c == 0 {
        return;
    }
    let batch = out.len() / (dims.nq * c);
    let wanted_tasks = 4 * rayon::current_num_threads();
    let group = (batch * dims.nq.div_ceil(Q_BLOCK) / wanted_tasks).clamp(1, GROUP_BLOCKS);
    let rows_per_group = group * Q_BLOCK * c;
    out.par_chunks_mut(dims.nq * c)
        .zip(q.par_chunks(dims.nq * c))
        .enumerate()
        .for_each(|(item, (out_item, q_item))| {
            out_item
                .par_chunks_mut(rows_per_group)
                .zip(q_item.par_chunks(rows_per_group))
                .for_each_init(
                    || attention_avx512::Scratch::new(dims.d),
                    |scratch, (out_group, q_group)| {
                        for head in 0..heads {
                            let blocks = out_group
                                .chunks_mut(Q_BLOCK * c)
                                .zip(q_group.chunks(Q_BLOCK * c));
                            for (out, q) in blocks {
                                let rows = out.len() / c;
                                let block_of = Block {
                                    item,
                                    head,
                                    rows,
                                    q,
                                    out,
                                };
                                block(block_of, scratch);
                            }
                        }
                    },
                );
        });
}

thread_local! {
    /// The f32 path's head-major keys and values ([`head_major`]), kept by the calling thread between calls (they
    /// only grow), so that each call does not fault in fresh pages for them.
    static HEAD_MAJOR: RefCell<(Vec<f32>, Vec<f32>)> = RefCell::default();
}

/// `x` (`[batch, tokens, heads · d]`, token-major) as `[batch, heads, tokens, d]`, written into `buffer`: each
/// head's rows one after another, so that a head's keys and values stream from consecutive cache lines and
/// pages rather than from `d`-wide pieces of rows `heads · d` wide. One head is already in that order.
fn head_major<'a>(
    x: &'a [f32],
    (tokens, heads, d): (usize, usize, usize),
    buffer: &'a mut Vec<f32>,
) -> &'a [f32] {
    if heads == 1 {
        return x;
    }
    let c = heads * d;
    if buffer.len() < x.len() {
        buffer.resize(x.len(), 0.0);
    }
    let out = &mut buffer[..x.len()];
    out.par_chunks_mut(tokens * d)
        .enumerate()
        .for_each(|(bh, dst)| {
            let (b, h) = (bh / heads, bh % heads);
            for (t, row) in dst.chunks_exact_mut(d).enumerate() {
                row.copy_from_slice(&x[(b * tokens + t) * c + h * d..][..d]);
            }
        });
    out
}

/// The elements of a contiguous layout.
fn contiguous<'a, T>(values: &'a [T], layout: &Layout) -> Option<&'a [T]> {
    layout
        .contiguous_offsets()
        .and_then(|(start, end)| values.get(start..end))
}

impl FlashAttention {
    /// The int8 path: the keys quantized once, then [`attention_int8::head_block_int8`] for every head of every
    /// query block ([`query_blocks`]).
    fn forward_int8(&self, dims: &Dims, batch: usize, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let (c, d, nk) = (dims.channels, dims.d, dims.nk);
        let keys = KeysInt8::quantize(k, batch, nk, self.heads, d);
        let mut out = filled(batch * dims.nq * c, 0f32);
        query_blocks(dims, self.heads, q, &mut out, |block, scratch| {
            let head = (block.item * self.heads + block.head) * nk;
            let kv = attention_int8::HeadKvInt8 {
                k: &keys.quads[head * keys.dq..(head + nk) * keys.dq],
                k_scale: &keys.scale[head..head + nk],
                k_shift: &keys.shift[head..head + nk],
                dq: keys.dq,
                v: &v[block.item * nk * c..(block.item + 1) * nk * c],
                stride: c,
                offset: block.head * d,
                d,
                tokens: nk,
            };
            attention_int8::head_block_int8(
                block.q, block.rows, &kv, self.scale, scratch, block.out,
            );
        });
        out
    }

    /// The f32 path on AVX-512: keys and values rearranged head by head ([`head_major`]), then
    /// [`attention_avx512::head_block`] for every head of every query block ([`query_blocks`]).
    fn forward_avx512(
        &self,
        dims: &Dims,
        batch: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Vec<f32> {
        let shape = (dims.nk, self.heads, dims.d);
        HEAD_MAJOR.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buffers) => {
                let (kb, vb) = &mut *buffers;
                self.heads_avx512(
                    dims,
                    batch,
                    q,
                    head_major(k, shape, kb),
                    head_major(v, shape, vb),
                )
            }
            Err(_) => {
                let (mut kb, mut vb) = (Vec::new(), Vec::new());
                let (k, v) = (head_major(k, shape, &mut kb), head_major(v, shape, &mut vb));
                self.heads_avx512(dims, batch, q, k, v)
            }
        })
    }

    /// [`FlashAttention::forward_avx512`] once the keys and values are head-major.
    fn heads_avx512(&self, dims: &Dims, batch: usize, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let (c, d, nk) = (dims.channels, dims.d, dims.nk);
        let mut out = filled(batch * dims.nq * c, 0f32);
        query_blocks(dims, self.heads, q, &mut out, |block, scratch| {
            let head = (block.item * self.heads + block.head) * nk * d;
            let kv = attention_avx512::HeadKv {
                k: &k[head..head + nk * d],
                v: &v[head..head + nk * d],
                stride: c,
                offset: block.head * d,
                d,
                tokens: nk,
            };
            attention_avx512::head_block(block.q, block.rows, &kv, self.scale, scratch, block.out);
        });
        out
    }

    /// The bf16 path: values paired by consecutive tokens once, then [`attention_avx512::head_block_bf16`] for
    /// every head of every query block ([`query_blocks`]).
    fn forward_bf16(
        &self,
        dims: &Dims,
        batch: usize,
        q: &[bf16],
        k: &[bf16],
        v: &[bf16],
    ) -> Vec<bf16> {
        let c = dims.channels;
        let pairs = dims.nk.div_ceil(2);
        let mut v_pairs = filled(batch * pairs * c, 0u32);
        v_pairs
            .par_chunks_mut(c)
            .enumerate()
            .for_each(|(row, dst)| {
                let (b, jp) = (row / pairs, row % pairs);
                let lo = &v[(b * dims.nk + 2 * jp) * c..][..c];
                if 2 * jp + 1 < dims.nk {
                    let hi = &v[(b * dims.nk + 2 * jp + 1) * c..][..c];
                    for ((d, &l), &h) in dst.iter_mut().zip(lo).zip(hi) {
                        *d = pair(l, h);
                    }
                } else {
                    for (d, &l) in dst.iter_mut().zip(lo) {
                        *d = pair(l, bf16::ZERO);
                    }
                }
            });
        let mut out = filled(batch * dims.nq * c, bf16::ZERO);
        query_blocks(dims, self.heads, q, &mut out, |block, scratch| {
            let b = block.item;
            let kv = attention_avx512::HeadKvBf16 {
                k: &k[b * dims.nk * c..(b + 1) * dims.nk * c],
                v_pairs: &v_pairs[b * pairs * c..(b + 1) * pairs * c],
                stride: c,
                offset: block.head * dims.d,
                d: dims.d,
                tokens: dims.nk,
            };
            let (q, rows, out) = (block.q, block.rows, block.out);
            attention_avx512::head_block_bf16(q, rows, &kv, self.scale, scratch, out);
        });
        out
    }

    /// The portable path for the query rows `q0..` of batch item `b` (`out` holds them): two `gemm` products per
    /// block of keys.
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        dims: &Dims,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        b: usize,
        q0: usize,
        out: &mut [f32],
    ) -> Result<()> {
        let c = dims.channels;
        let d = dims.d;
        let rows = out.len() / c;
        let q_batch = &q[b * dims.nq * c..(b + 1) * dims.nq * c];
        let k_batch = &k[b * dims.nk * c..(b + 1) * dims.nk * c];
        let v_batch = &v[b * dims.nk * c..(b + 1) * dims.nk * c];
        let kb_max = K_BLOCK.min(dims.nk);
        let mut qbuf = vec![0f32; rows * d];
        let mut scores = vec![0f32; rows * kb_max];
        let mut acc = vec![0f32; rows * d];
        let mut row_max = vec![0f32; rows];
        let mut row_sum = vec![0f32; rows];
        for h in 0..self.heads {
            for (r, dst) in qbuf.chunks_exact_mut(d).enumerate() {
                let src = &q_batch[(q0 + r) * c + h * d..][..d];
                dst.iter_mut()
                    .zip(src)
                    .for_each(|(o, &x)| *o = x * self.scale);
            }
            row_max.fill(f32::NEG_INFINITY);
            row_sum.fill(0.0);
            acc.fill(0.0);
            let mut j0 = 0;
            while j0 < dims.nk {
                let kb = kb_max.min(dims.nk - j0);
                let s = &mut scores[..rows * kb];
                matmul(
                    MatMut {
                        data: s,
                        rows,
                        cols: kb,
                        rs: kb,
                        cs: 1,
                    },
                    MatRef {
                        data: &qbuf,
                        rows,
                        cols: d,
                        rs: d,
                        cs: 1,
                    },
                    MatRef {
                        data: &k_batch[j0 * c + h * d..],
                        rows: d,
                        cols: kb,
                        rs: 1,
                        cs: c,
                    },
                    false,
                    1,
                )?;
                for r in 0..rows {
                    let row = &mut s[r * kb..(r + 1) * kb];
                    let (new_max, sum) = softmax_update(row, row_max[r]);
                    let correction = vmath::exp(row_max[r] - new_max);
                    row_sum[r] = row_sum[r] * correction + sum;
                    row_max[r] = new_max;
                    if correction != 1.0 {
                        acc[r * d..(r + 1) * d]
                            .iter_mut()
                            .for_each(|a| *a *= correction);
                    }
                }
                matmul(
                    MatMut {
                        data: &mut acc,
                        rows,
                        cols: d,
                        rs: d,
                        cs: 1,
                    },
                    MatRef {
                        data: s,
                        rows,
                        cols: kb,
                        rs: kb,
                        cs: 1,
                    },
                    MatRef {
                        data: &v_batch[j0 * c + h * d..],
                        rows: kb,
                        cols: d,
                        rs: c,
                        cs: 1,
                    },
                    true,
                    1,
                )?;
                j0 += kb;
            }
            for r in 0..rows {
                let inv = 1.0 / row_sum[r];
                let dst = &mut out[r * c + h * d..][..d];
                dst.iter_mut()
                    .zip(&acc[r * d..(r + 1) * d])
                    .for_each(|(o, &a)| *o = a * inv);
            }
        }
        Ok(())
    }
}

multiversion! {
    /// Replaces `row` by exp(row − m) with m = max(`prev_max`, max(row)); returns (m, Σ exp(row − m)).
    fn softmax_update(row: &mut [f32], prev_max: f32) -> (f32, f32) {
        let mut lanes = [prev_max; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for chunk in &mut chunks {
            for (l, &x) in lanes.iter_mut().zip(chunk) {
                *l = l.max(x);
            }
        }
        let m = chunks
            .remainder()
            .iter()
            .fold(lanes.iter().fold(prev_max, |m, &x| m.max(x)), |m, &x| m.max(x));
        let mut sums = [0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for chunk in &mut chunks {
            for (s, x) in sums.iter_mut().zip(chunk.iter_mut()) {
                *x = vmath::exp(*x - m);
                *s += *x;
            }
        }
        let mut sum = 0f32;
        for x in chunks.into_remainder() {
            *x = vmath::exp(*x - m);
            sum += *x;
        }
        (m, sum + sums.iter().sum::<f32>())
    }
}
