//! `diffuse`: the command line over the diffuse library.

mod commands;

use clap::{Parser, Subcommand};

/// mimalloc keeps freed pages for reuse: glibc's malloc returns every large tensor to the OS and faults it in
/// again on the next step (the difference is seconds per UNet step), and no environment variable is needed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h: the milliseconds freed memory waits before it goes back to the OS.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory in mimalloc for good (the process's footprint stays at its high-water mark, as with
/// PyTorch's caching allocator): with the default delay, buffers freed early in a UNet step or VAE decode
/// went back to the OS and were faulted in (zeroed) again later in the same step; 9 % of a UNet step's time
/// was the kernel clearing pages (BENCHMARKS.md, "The allocator caveat").
fn keep_freed_memory() {
    // SAFETY: mi_option_set only stores an integer in mimalloc's option table; it is called before any
    // other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// Resolves candle's default thread count once and stores it in `RAYON_NUM_THREADS`. Without the variable,
/// candle works the default out again on every matrix product, reading `/proc/cpuinfo` each time: a fifth
/// of a training step's wall time (UNet stage 2.29 → 2.86 steps/s). rayon reads the same variable, so
/// candle's matrix products and the process's thread pool keep one size. `--threads` overrides it later.
fn resolve_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}

/// Stable Diffusion in Rust: text-to-image, image-to-image and inpainting, equal to diffusers.
#[derive(Parser)]
#[command(name = "diffuse", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images: text-to-image, image-to-image (--image) or inpainting (--image --mask).
    Generate(Box<commands::generate::GenerateArgs>),
    /// Describe a pipeline folder (components, configs, parameter counts, stored dtypes) or print a PNG's
    /// generation parameters.
    Info(commands::info::InfoArgs),
    /// Time the text encoder, a UNet step, a VAE decode or a whole generation (see tools/bench/bench.py).
    Bench(commands::bench::BenchArgs),
    /// Serve models over HTTP: OpenAI Images, AUTOMATIC1111 and a job API, and a web page at `/`.
    Serve(commands::serve::ServeArgs),
    /// Train a pipeline from scratch (shapes or a captioned image folder) or fine-tune a pipeline's UNet.
    Train(Box<commands::train::TrainArgs>),
}

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    resolve_thread_count();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DIFFUSE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => commands::generate::run(*args),
        Command::Info(args) => commands::info::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Train(args) => commands::train::run(*args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
