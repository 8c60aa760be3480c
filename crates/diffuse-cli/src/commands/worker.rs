//! `diffuse worker`: runs jobs from a Redis broker that `diffuse serve --broker` servers feed.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;
use diffuse_server::WorkerConfig;

use super::serving::{DeliveryArgs, LimitArgs, ModelArgs};

/// Arguments of `diffuse worker`.
#[derive(Args)]
pub struct WorkerArgs {
    /// The broker: `redis://[:PASSWORD@]HOST:PORT[/DB]` (the password is never logged).
    #[arg(
        long,
        env = "DIFFUSE_BROKER",
        hide_env_values = true,
        value_name = "URL"
    )]
    broker: String,
    #[command(flatten)]
    models: ModelArgs,
    /// Generation threads (each runs one job at a time).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    #[command(flatten)]
    delivery: DeliveryArgs,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Loads the models and runs jobs until Ctrl-C or SIGTERM (the current job is finished first).
pub fn run(args: WorkerArgs) -> Result<()> {
    let config = WorkerConfig {
        broker: args.delivery.config(args.broker),
        models: args.models.specs()?,
        load: args.models.load_options()?,
        threads: args.workers,
        limits: args.limits.limits(),
        lora_dir: args.models.lora_dir,
        embeddings_dir: args.models.embeddings_dir,
        preview_decoder: args.models.preview_decoder,
    };
    let broker = config.broker.redacted_url();
    diffuse_server::run_worker_until_signal(config, |threads| {
        println!("diffuse worker: {threads} worker(s) taking jobs from {broker}");
        let _ = std::io::stdout().flush();
    })
    .context("diffuse worker")
}
