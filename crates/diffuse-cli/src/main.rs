//! `diffuse`: the command line over the diffuse library.

mod bundled;
mod commands;
mod progress;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

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
    /// Run jobs from a Redis broker that `diffuse serve --broker` servers feed (scale-out).
    Worker(commands::worker::WorkerArgs),
    /// Train a pipeline from scratch (shapes or a captioned image folder) or fine-tune a pipeline's UNet.
    Train(Box<commands::train::TrainArgs>),
}

/// The ids of the arguments of `subcommand` given on the command line or by environment variable (not
/// defaulted), so that `--replay` knows which settings the user chose over the PNG's.
fn given(subcommand: &str, matches: &ArgMatches) -> Vec<String> {
    let Some(sub) = matches.subcommand_matches(subcommand) else {
        return Vec::new();
    };
    sub.ids()
        .filter(|id| {
            matches!(
                sub.value_source(id.as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
        .map(|id| id.to_string())
        .collect()
}

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    resolve_thread_count();
    let matches = Cli::command().get_matches();
    // DIFFUSE_LOG takes tracing's filter syntax ("info", "diffuse=debug"); the server logs each request and
    // job at info by default (a worker each job), the other commands only warnings.
    let default_level = if matches!(matches.subcommand_name(), Some("serve" | "worker")) {
        "info"
    } else {
        "warn"
    };
    let stderr_is_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DIFFUSE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(stderr_is_terminal)
        .with_target(false);
    // A server's lines carry the time; a command's warnings do not need it.
    if default_level == "info" {
        subscriber.init();
    } else {
        subscriber.without_time().init();
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Generate(args) => commands::generate::run(*args, &given("generate", &matches)),
        Command::Info(args) => commands::info::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Worker(args) => commands::worker::run(args),
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
