//! `diffuse serve`: the HTTP server (crates/diffuse-server), configured from flags.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use diffuse_server::ServerConfig;

use super::serving::{DeliveryArgs, LimitArgs, ModelArgs};

/// Arguments of `diffuse serve`.
#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    models: ModelArgs,
    /// Answer an OpenAI model name with a served model, `ALIAS=NAME` (e.g. `dall-e-3=sd15`; `*=NAME` for
    /// every unknown name); repeatable. Without it, unknown model names are refused.
    #[arg(long = "openai-model-alias", value_name = "ALIAS=NAME")]
    openai_aliases: Vec<String>,
    /// Address to listen on; anything but loopback needs --api-key.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 7860)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every API request.
    #[arg(long, env = "DIFFUSE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Send jobs through a Redis broker shared with other servers and `diffuse worker` processes:
    /// `redis://[:PASSWORD@]HOST:PORT[/DB]` (the password is never logged). Without it, jobs stay in this
    /// process.
    #[arg(
        long,
        env = "DIFFUSE_BROKER",
        hide_env_values = true,
        value_name = "URL"
    )]
    broker: Option<String>,
    /// Generation threads; with --broker, 0 serves the API only (workers run elsewhere).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Jobs that may wait (with --broker: per model, in the broker); beyond that requests get 429.
    #[arg(long, default_value_t = 64)]
    queue_capacity: usize,
    /// Finished jobs kept in memory for their status and image URLs (with --broker they are also kept in
    /// the broker for --result-ttl).
    #[arg(long, default_value_t = 100)]
    retained_jobs: usize,
    /// Seconds running jobs may take to finish at shutdown before they are cancelled (with --broker: before
    /// they are left to another worker).
    #[arg(long, default_value_t = 30)]
    shutdown_grace: u64,
    #[command(flatten)]
    delivery: DeliveryArgs,
    /// Largest request body, in MiB.
    #[arg(long, default_value_t = 32)]
    max_body_mib: usize,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Starts the server and serves until Ctrl-C or SIGTERM.
pub fn run(args: ServeArgs) -> Result<()> {
    let mut config = ServerConfig::new(args.models.specs()?);
    config.addr = SocketAddr::new(args.host, args.port);
    config.api_key = args.api_key;
    config.workers = args.workers;
    config.queue_capacity = args.queue_capacity;
    config.retained_jobs = args.retained_jobs;
    config.shutdown_grace = Duration::from_secs(args.shutdown_grace);
    config.openai_aliases = args
        .openai_aliases
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(alias, name)| (alias.trim().to_string(), name.trim().to_string()))
                .with_context(|| format!("--openai-model-alias {pair:?}: expected ALIAS=NAME"))
        })
        .collect::<Result<_>>()?;
    config.load = args.models.load_options()?;
    config.lora_dir = args.models.lora_dir;
    config.embeddings_dir = args.models.embeddings_dir;
    config.preview_decoder = args.models.preview_decoder;
    config.limits = diffuse_server::Limits {
        max_body_bytes: args.max_body_mib.saturating_mul(1 << 20),
        ..args.limits.limits()
    };
    config.broker = args.broker.map(|url| args.delivery.config(url));
    diffuse_server::run_until_signal(config, |addr| {
        println!("diffuse serve: listening on http://{addr}");
        let _ = std::io::stdout().flush();
    })
    .context("diffuse serve")
}
