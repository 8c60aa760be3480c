//! Times a training step's convolutions and linear layers (forward and backward) at the shapes of the tiny
//! designs' share of a batch of 32 on one data-parallel worker (16 images), with f32 and with bf16 products, on
//! one thread as each worker runs, and prints a Markdown table.
//!
//!     cargo run --release -p diffuse --example train_kernel_bench

#[path = "support/allocator.rs"]
mod allocator;

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use diffuse::internals::kernels::train_conv::conv2d_tracked;
use diffuse::internals::kernels::train_linear::linear_tracked;
use diffuse::internals::kernels::train_products::with_mixed_precision;

/// The median of `reps` timed runs of a forward and backward pass, in milliseconds, after one warm-up.
fn median_ms(reps: usize, bf16: bool, step: &dyn Fn() -> candle_core::Result<()>) -> f64 {
    let run = || with_mixed_precision(bf16, step);
    run().expect("warm-up");
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            run().expect("run");
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn var(shape: &[usize]) -> candle_core::Result<Var> {
    Var::from_tensor(&Tensor::randn(0f32, 1f32, shape, &Device::Cpu)?)
}

/// Forward, then backward through a sum, for every gradient.
fn step(y: Tensor) -> candle_core::Result<()> {
    y.sum_all()?.backward()?;
    Ok(())
}

fn row(name: &str, flop: f64, f32_ms: f64, bf16_ms: f64) {
    println!(
        "| {name} | {f32_ms:.2} ms ({:.0} GFLOP/s) | {bf16_ms:.2} ms ({:.0} GFLOP/s) | {:.2}× |",
        flop / f32_ms / 1e6,
        flop / bf16_ms / 1e6,
        f32_ms / bf16_ms
    );
}

fn bench() -> candle_core::Result<()> {
    let reps = 7;
    println!("| forward + backward, batch 16 | f32 products | bf16 products | bf16 speed-up |\n|---|---|---|---|");
    for (batch, cin, cout, side) in [
        (16, 32, 32, 16),
        (16, 64, 32, 16),
        (16, 4, 32, 16),
        (16, 64, 64, 8),
        (16, 128, 128, 4),
    ] {
        let (x, w, b) = (
            var(&[batch, cin, side, side])?,
            var(&[cout, cin, 3, 3])?,
            var(&[cout])?,
        );
        let f = || step(conv2d_tracked(&x, &w, &b, 1, 1)?);
        // Three products of 2·batch·side²·cout·cin·9 flop: the output, the input's and the weight's gradients.
        let flop = 3.0 * 2.0 * (batch * side * side * cout * cin * 9) as f64;
        let name = format!("conv 3×3 {cin}→{cout} at {side}×{side}");
        row(
            &name,
            flop,
            median_ms(reps, false, &f),
            median_ms(reps, true, &f),
        );
    }
    for (rows, din, dout) in [
        (1024, 64, 512),
        (1024, 256, 64),
        (1024, 64, 64),
        (256, 128, 1024),
    ] {
        let (x, w, b) = (var(&[rows, din])?, var(&[dout, din])?, var(&[dout])?);
        let f = || step(linear_tracked(&x, &w, Some(&b))?);
        let flop = 3.0 * 2.0 * (rows * din * dout) as f64;
        let name = format!("linear {rows} rows, {din}→{dout}");
        row(
            &name,
            flop,
            median_ms(reps, false, &f),
            median_ms(reps, true, &f),
        );
    }
    Ok(())
}

fn main() -> candle_core::Result<()> {
    allocator::keep_freed_memory();
    // One thread, as each data-parallel worker of `diffuse train` runs its share: single-threaded products
    // (candle reads the variable) inside a one-thread pool.
    std::env::set_var("RAYON_NUM_THREADS", "1");
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(candle_core::Error::wrap)?
        .install(bench)
}
