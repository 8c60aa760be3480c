//! Data parallelism across CPU threads: a batch is cut into one contiguous share per worker, each worker runs
//! the forward and backward pass of its share on its own thread, and the shares' gradients are averaged,
//! weighted by their sizes, into the gradients of the whole batch's mean loss.
//!
//! The small networks trained here keep candle's multi-threaded ops waiting on each other: on 2 cores, one
//! thread with half the batch runs 1.7× as many samples per second per core as two threads sharing every op.
//! Workers should therefore run with single-threaded ops (`RAYON_NUM_THREADS=1`, which `diffuse train` sets).

use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use rayon::{ThreadPool, ThreadPoolBuilder};

use diffuse::internals::kernels::train_products::with_mixed_precision;
use diffuse::{Error, Result};

/// `0..n` cut into at most `workers` contiguous ranges whose lengths differ by at most one (non-empty when
/// `n` > 0; one empty range when `n` = 0).
pub(crate) fn shares(n: usize, workers: usize) -> Vec<Range<usize>> {
    let workers = workers.clamp(1, n.max(1));
    let (base, extra) = (n / workers, n % workers);
    let mut start = 0;
    (0..workers)
        .map(|w| {
            let len = base + usize::from(w < extra);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

/// The thread pool that runs `workers` workers, one thread each, made once per process and worker count: each
/// worker keeps its thread (and its allocator's cached pages) from step to step, and the kernels' parallel loops
/// inside a worker run in this pool (an idle worker helps the other), not in the global pool that
/// `RAYON_NUM_THREADS=1` leaves with a single thread for all of them.
fn pool(workers: usize) -> Result<Arc<ThreadPool>> {
    static POOLS: Mutex<Vec<(usize, Arc<ThreadPool>)>> = Mutex::new(Vec::new());
    let mut pools = POOLS
        .lock()
        .map_err(|_| Error::invalid("training", "the worker pools' registry is poisoned"))?;
    if let Some((_, pool)) = pools.iter().find(|(size, _)| *size == workers) {
        return Ok(pool.clone());
    }
    let pool = ThreadPoolBuilder::new()
        .num_threads(workers)
        .thread_name(|i| format!("diffuse-train-{i}"))
        // candle's backward pass sorts the graph recursively; give workers the main thread's stack size.
        .stack_size(8 << 20)
        .build()
        .map_err(|e| Error::invalid("workers", format!("{workers} threads: {e}")))?;
    let pool = Arc::new(pool);
    pools.push((workers, pool.clone()));
    Ok(pool)
}

/// Runs `loss_of(share)` for each share of a batch of `n` on its own thread of a pool kept for the process,
/// back-propagates each share's mean loss, and returns the batch's mean loss with the gradients of `vars` for
/// it, with the products in bf16 when `mixed_precision_bf16` ([`with_mixed_precision`]). With one worker this
/// is `loss_of(0..n)` and its backward pass, unchanged.
pub(crate) fn mean_loss_gradients<F>(
    n: usize,
    workers: usize,
    mixed_precision_bf16: bool,
    vars: &[(String, Var)],
    loss_of: F,
) -> Result<(f32, GradStore)>
where
    F: Fn(Range<usize>) -> Result<Tensor> + Sync,
{
    let run = |share: Range<usize>| -> Result<(f32, GradStore)> {
        with_mixed_precision(mixed_precision_bf16, || {
            let loss = loss_of(share)?;
            Ok((loss.to_scalar::<f32>()?, loss.backward()?))
        })
    };
    let parts = shares(n, workers);
    if parts.len() == 1 {
        return run(0..n);
    }
    let results = pool(parts.len())?.broadcast(|worker| {
        let share = parts[worker.index()].clone();
        std::panic::catch_unwind(AssertUnwindSafe(|| run(share))).unwrap_or_else(|_| {
            Err(Error::invalid(
                "training",
                "a data-parallel worker panicked",
            ))
        })
    });
    let mut weighted = Vec::with_capacity(parts.len());
    for (share, result) in parts.iter().zip(results) {
        let (loss, grads) = result?;
        weighted.push((share.len() as f64 / n as f64, loss, grads));
    }
    let loss = weighted
        .iter()
        .map(|(w, loss, _)| *w * f64::from(*loss))
        .sum::<f64>() as f32;
    let mut combined = Vec::with_capacity(vars.len());
    for (_, var) in vars {
        let mut sum: Option<Tensor> = None;
        for (w, _, grads) in &weighted {
            if let Some(g) = grads.get(var.as_tensor()) {
                let g = g.affine(*w, 0.0)?;
                sum = Some(match sum {
                    Some(s) => (s + g)?,
                    None => g,
                });
            }
        }
        combined.push(sum);
    }
    let (_, _, mut grads) = weighted.swap_remove(0);
    for ((_, var), sum) in vars.iter().zip(combined) {
        match sum {
            Some(g) => grads.insert(var.as_tensor(), g),
            None => grads.remove(var.as_tensor()),
        };
    }
    Ok((loss, grads))
}
