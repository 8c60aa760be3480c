//! Scaled dot-product attention over `[batch, heads, tokens, head_dim]` tensors.

use candle_core::{DType, Tensor};

/// softmax(q·kᵀ · scale + mask) · v, the way PyTorch's `scaled_dot_product_attention` computes it.
///
/// `mask` is added to the scores (e.g. a causal mask of -inf above the diagonal). With `upcast`, scores and
/// softmax are computed in f32 whatever the inputs' dtype (diffusers' `upcast_attention` / `upcast_softmax`).
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
    upcast: bool,
) -> candle_core::Result<Tensor> {
    let in_dtype = q.dtype();
    let compute = if upcast { DType::F32 } else { in_dtype };
    let q = q.to_dtype(compute)?;
    let k = k.to_dtype(compute)?;
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = match mask {
        Some(mask) => scores.broadcast_add(&mask.to_dtype(compute)?)?,
        None => scores,
    };
    // candle's fused softmax has no backward pass: when a gradient is tracked, the CPU uses the training
    // kernel and other devices the composed softmax.
    let probs = if !scores.track_op() {
        candle_nn::ops::softmax_last_dim(&scores)?
    } else if scores.device().is_cpu() && scores.dtype() == DType::F32 {
        crate::kernels::train_softmax::softmax_last_dim_tracked(&scores.contiguous()?)?
    } else {
        candle_nn::ops::softmax(&scores, candle_core::D::Minus1)?
    }
    .to_dtype(in_dtype)?;
    probs.matmul(&v.contiguous()?)
}

/// Attention on token-major tensors: `q` `[batch, q_tokens, heads · d]`, `k`/`v` `[batch, kv_tokens, heads · d]`
/// → `[batch, q_tokens, heads · d]`. On the CPU this is the flash-style kernel (f32 arithmetic whatever the
/// dtype, memory bounded); elsewhere [`scaled_dot_product_attention`] on split heads.
pub fn multi_head_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    upcast: bool,
) -> candle_core::Result<Tensor> {
    if q.device().is_cpu() && !crate::kernels::tracked(&[q, k, v]) {
        return crate::kernels::attention(q, k, v, heads, scale);
    }
    let (q, k, v) = (
        split_heads(q, heads)?,
        split_heads(k, heads)?,
        split_heads(v, heads)?,
    );
    merge_heads(&scaled_dot_product_attention(
        &q, &k, &v, scale, None, upcast,
    )?)
}

/// Splits `[batch, tokens, heads · head_dim]` into `[batch, heads, tokens, head_dim]`.
pub fn split_heads(x: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (b, n, c) = x.dims3()?;
    x.reshape((b, n, heads, c / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// Merges `[batch, heads, tokens, head_dim]` back into `[batch, tokens, heads · head_dim]`.
pub fn merge_heads(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, n, d) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, n, h * d))
}

/// A `[tokens, tokens]` additive causal mask: 0 on and below the diagonal, -inf above.
pub fn causal_mask(tokens: usize, device: &candle_core::Device) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> = (0..tokens)
        .flat_map(|i| (0..tokens).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (tokens, tokens), device)
}
