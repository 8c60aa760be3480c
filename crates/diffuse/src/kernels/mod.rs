//! CPU kernels that replace candle's slowest operations in the diffusion models: flash-style attention,
//! tiled im2col convolution, Winograd F(2×2, 3×3) and F(4×4, 3×3) convolution (f32; F(2×2) in bf16 too), the vocoder's 1-D convolutions (dilated and
//! transposed, with the leaky ReLU before them fused), fused GroupNorm(+SiLU), fused GEGLU,
//! one-pass activations, the text encoder's causal attention, bf16 products on AVX512-BF16 (convolution, linear, attention), f32 linear layers over
//! few rows, int8 products and attention scores on AVX512-VNNI, bf16 residual additions. Each has a reference
//! composed of plain candle ops and a parity test against it (`crates/diffuse/tests/library/kernels.rs`; the `train_*` kernels' values
//! and gradients in `crates/diffuse/tests/library/gradients.rs`); each dispatches on CPU features at run time. Training takes the
//! `train_*` kernels (hand-written backward passes) or the composed references whenever a gradient is tracked.

pub mod activation;
pub mod attention;
pub mod attention_avx512;
pub mod attention_int8;
pub mod bf16_gemm;
pub mod causal_attention;
pub mod conv;
pub mod conv1d;
pub mod few_rows_gemm;
pub mod geglu;
mod gemm;
pub mod group_norm;
pub mod int8;
pub mod int8_gemm;
pub mod linear;
pub mod residual;
pub mod simd;
mod storage;
pub mod train_conv;
pub mod train_geglu;
pub mod train_group_norm;
pub mod train_layer_norm;
pub mod train_linear;
pub mod train_products;
pub mod train_softmax;
pub mod vmath;
pub mod winograd;
pub mod winograd_avx512;
pub mod winograd_bf16;

pub use attention::attention;
pub use conv::{conv2d, conv2d_keeping};
pub use group_norm::{group_norm, group_norm_silu, GroupNorm};

/// Whether any of `tensors` takes part in a tracked computation (training): the inference kernels have no
/// backward pass, so a tracked computation takes the differentiable path instead.
pub fn tracked(tensors: &[&candle_core::Tensor]) -> bool {
    tensors.iter().any(|t| t.track_op())
}
