//! Times each CPU kernel against the candle ops it replaces, at SD 1.5 shapes (batch 2), and prints GFLOP/s.
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p diffuse --example kernel_bench [f32|bf16|int8]
//!
//! `int8` times the VNNI products (weights and activations in int8) and attention's int8 scores against diffuse's
//! own f32 kernels.

#[path = "support/allocator.rs"]
mod allocator;

use std::time::Instant;

use candle_core::Module;
use candle_core::{DType, Device, Tensor};
use diffuse::device::Quantization;
use diffuse::internals::kernels::winograd_bf16::TransformedKernel;
use diffuse::internals::kernels::{attention, causal_attention, conv, group_norm, int8, linear};

fn median_secs(reps: usize, mut f: impl FnMut() -> candle_core::Result<Tensor>) -> f64 {
    f().expect("warm-up");
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f().expect("run");
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn row(name: &str, flop: f64, ours: f64, candle: f64) {
    println!(
        "| {name} | {:.1} ms ({:.0} GFLOP/s) | {:.1} ms ({:.0} GFLOP/s) | {:.2}× |",
        ours * 1e3,
        flop / ours / 1e9,
        candle * 1e3,
        flop / candle / 1e9,
        candle / ours
    );
}

fn main() -> candle_core::Result<()> {
    allocator::keep_freed_memory();
    let dtype = match std::env::args().nth(1).as_deref() {
        Some("bf16") => DType::BF16,
        Some("int8") => return int8_rows(),
        _ => DType::F32,
    };
    let dev = Device::Cpu;
    let reps = 5;
    let randn = |shape: &[usize]| -> candle_core::Result<Tensor> {
        Tensor::randn(0f32, 1f32, shape, &dev)?.to_dtype(dtype)
    };
    println!("| op ({dtype:?}) | diffuse kernel | candle ops | speed-up |\n|---|---|---|---|");
    let n = 4096 * 4096;
    let a = randn(&[1, 4096, 4096])?;
    let b = randn(&[1, 4096, 4096])?;
    let t = median_secs(3, || a.matmul(&b));
    println!(
        "| matmul 4096³ (candle, gemm x86-v4) | {:.0} ms ({:.0} GFLOP/s) | | |",
        t * 1e3,
        2.0 * n as f64 * 4096.0 / t / 1e9
    );
    let weights = std::collections::HashMap::from([("weight".to_string(), randn(&[4096, 4096])?)]);
    let layer = linear::linear_no_bias(
        4096,
        4096,
        candle_nn::VarBuilder::from_tensors(weights, dtype, &dev),
    )?;
    let x = randn(&[4096, 4096])?;
    let t = median_secs(3, || layer.forward(&x));
    println!(
        "| matmul 4096³ (diffuse `Linear`: the bf16 kernel on AVX512-BF16, candle's matmul otherwise) | {:.0} ms ({:.0} GFLOP/s) | | |",
        t * 1e3,
        2.0 * n as f64 * 4096.0 / t / 1e9
    );
    // (rows, in, out): the text encoder's products for a prompt and its negative (CLIP ViT-L/14).
    for (m, k, n) in [(154, 768, 768), (154, 768, 3072), (154, 3072, 768)] {
        let w = randn(&[n, k])?;
        let bias = randn(&[n])?;
        let weights = std::collections::HashMap::from([
            ("weight".to_string(), w.clone()),
            ("bias".to_string(), bias.clone()),
        ]);
        let layer = linear::linear(
            k,
            n,
            candle_nn::VarBuilder::from_tensors(weights, dtype, &dev),
        )?;
        let x = randn(&[m, k])?;
        let flop = 2.0 * (m * k * n) as f64;
        let ours = median_secs(reps * 4, || layer.forward(&x));
        let theirs = median_secs(reps * 4, || x.matmul(&w.t()?)?.broadcast_add(&bias));
        row(&format!("linear {m}×{k} → {n}"), flop, ours, theirs);
    }
    // (in, out, side): the UNet's levels, and the widest inputs of its up blocks (skip connections concatenated).
    for (cin, c, side) in [
        (320, 320, 64),
        (640, 640, 32),
        (1920, 640, 32),
        (1280, 1280, 16),
        (2560, 1280, 16),
    ] {
        let x = randn(&[2, cin, side, side])?;
        let w = (randn(&[c, cin, 3, 3])? * 0.02)?;
        let bias = randn(&[c])?;
        let flop = 2.0 * 2.0 * (cin * c * 9 * side * side) as f64;
        // As a model's layer runs it: what the kernel prepares from the weight once is kept between calls.
        let kept = std::sync::Arc::new(TransformedKernel::default());
        let ours = median_secs(reps, || {
            conv::conv2d_keeping(&x, &w, &bias, 1, 1, Some(kept.clone()))
        });
        let theirs = median_secs(reps, || conv::conv2d_reference(&x, &w, &bias, 1, 1));
        let name = if cin == c {
            format!("conv 3×3, {c} ch, {side}×{side}")
        } else {
            format!("conv 3×3, {cin} → {c} ch, {side}×{side}")
        };
        row(&name, flop, ours, theirs);
    }
    // (batch, heads per item, tokens, head dim): the UNet's first and second levels, the VAE's mid block. Queries,
    // keys and values are separate tensors, as in a model: one tensor passed three times would keep half the
    // memory traffic in cache.
    for (batch, heads, tokens, d) in [(2, 8, 4096, 40), (2, 8, 1024, 80), (1, 1, 4096, 512)] {
        let shape = [batch, tokens, heads * d];
        let (q, k, v) = (randn(&shape)?, randn(&shape)?, randn(&shape)?);
        let scale = (d as f64).powf(-0.5);
        let flop = 4.0 * (batch * heads * tokens * tokens * d) as f64;
        let ours = median_secs(3, || attention::attention(&q, &k, &v, heads, scale));
        let theirs = median_secs(1, || {
            attention::attention_reference(&q, &k, &v, heads, scale)
        });
        let name = format!(
            "self-attention {} heads × {tokens} tokens, d {d}",
            batch * heads
        );
        row(&name, flop, ours, theirs);
    }
    if dtype == DType::F32 && causal_attention::suits(768, 12) {
        // The text encoder's self-attention: a prompt and its negative, 77 tokens, 12 heads of 64.
        let q = randn(&[2, 77, 768])?;
        let flop = 4.0 * (2 * 12 * 77 * 78 / 2 * 64) as f64;
        let ours = median_secs(reps * 20, || {
            causal_attention::causal_attention(&q, &q, &q, 12, 0.125)
        });
        let theirs = median_secs(reps * 20, || {
            causal_attention::causal_attention_reference(&q, &q, &q, 12, 0.125)?.contiguous()
        });
        row(
            "causal self-attention 2 × 12 heads × 77 tokens, d 64 (text encoder)",
            flop,
            ours,
            theirs,
        );
    }
    let x = randn(&[2, 320, 64, 64])?;
    let g = randn(&[320])?;
    let ours = median_secs(reps, || {
        group_norm::group_norm_silu(&x, &g, &g, 32, 1e-5, true)
    });
    let theirs = median_secs(reps, || {
        candle_nn::ops::silu(&group_norm::group_norm_reference(&x, &g, &g, 32, 1e-5)?)
    });
    row("GroupNorm+SiLU 2×320×64×64", 1.0, ours, theirs);
    Ok(())
}

/// int8 products against diffuse's f32 kernels: linear layers at the UNet's shapes, 3×3 convolutions.
fn int8_rows() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let reps = 5;
    let randn = |shape: &[usize]| Tensor::randn(0f32, 1f32, shape, &dev);
    println!("| op | int8 (VNNI) | f32 (diffuse) | speed-up |\n|---|---|---|---|");
    // (rows, in, out): a square 4096 product, then SD 1.5's attention projection and feed-forward at 64×64.
    for (m, k, n) in [
        (4096, 4096, 4096),
        (8192, 320, 320),
        (8192, 320, 2560),
        (8192, 1280, 320),
    ] {
        let weights = std::collections::HashMap::from([
            ("weight".to_string(), (randn(&[n, k])? * 0.05)?),
            ("bias".to_string(), randn(&[n])?),
        ]);
        let vb = || candle_nn::VarBuilder::from_tensors(weights.clone(), DType::F32, &dev);
        let f32_layer = linear::linear(k, n, vb())?;
        let int8_layer = int8::building(Some(Quantization::Int8), || linear::linear(k, n, vb()))?;
        let x = randn(&[m, k])?;
        let flop = 2.0 * (m * k * n) as f64;
        let ours = median_secs(reps, || int8_layer.forward(&x));
        let theirs = median_secs(reps, || f32_layer.forward(&x));
        row(&format!("linear {m}×{k} → {n}"), flop, ours, theirs);
    }
    for (c, side) in [(320, 64), (640, 32), (1280, 16), (1280, 8)] {
        let x = randn(&[2, c, side, side])?;
        let w = (randn(&[c, c, 3, 3])? * 0.02)?;
        let bias = randn(&[c])?;
        let flop = 2.0 * 2.0 * (c * c * 9 * side * side) as f64;
        let state = int8::Int8Weights::default();
        let ours = median_secs(reps, || {
            int8::conv2d(&state, &x, &w, &bias, 1, 1)?
                .ok_or_else(|| candle_core::Error::Msg("no int8".into()))
        });
        let theirs = median_secs(reps, || conv::conv2d(&x, &w, &bias, 1, 1));
        row(
            &format!("conv 3×3, {c} ch, {side}×{side}"),
            flop,
            ours,
            theirs,
        );
    }
    // The UNet's self-attention at 64×64 latents (batch 2, 8 heads of 40): int8 scores against f32.
    let (q, k, v) = (
        randn(&[2, 4096, 320])?,
        randn(&[2, 4096, 320])?,
        randn(&[2, 4096, 320])?,
    );
    let flop = 4.0 * 16.0 * 4096.0 * 4096.0 * 40.0;
    let scale = 40f64.powf(-0.5);
    let ours = median_secs(reps, || attention::attention_int8(&q, &k, &v, 8, scale));
    let theirs = median_secs(reps, || attention::attention(&q, &k, &v, 8, scale));
    row(
        "self-attention 16 heads × 4096 tokens, d 40 (int8 scores)",
        flop,
        ours,
        theirs,
    );
    Ok(())
}
