//! `diffuse serve`: the HTTP server (crates/diffuse-server), configured from flags.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use diffuse_server::{Limits, ModelSpec, ServerConfig};

/// Arguments of `diffuse serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// A model to serve, `MODEL` or `NAME=MODEL`: a diffusers folder, a Hub id (from the local cache) or a
    /// single `.safetensors` checkpoint; repeat for several, the first is the default. Without it: the
    /// bundled model.
    #[arg(long = "model", value_name = "[NAME=]MODEL")]
    models: Vec<String>,
    /// Answer an OpenAI model name with a served model, `ALIAS=NAME` (e.g. `dall-e-3=sd15`; `*=NAME` for
    /// every unknown name); repeatable. Without it, unknown model names are refused.
    #[arg(long = "openai-model-alias", value_name = "ALIAS=NAME")]
    openai_aliases: Vec<String>,
    /// The folder LoRAs are named from: `<lora:NAME:W>` prompt tags and the native API's `loras` field
    /// resolve NAME to NAME.safetensors there (subfolders included); requests never give paths.
    #[arg(long, value_name = "DIR")]
    lora_dir: Option<std::path::PathBuf>,
    /// The folder of textual-inversion embeddings (`.safetensors`), each used where a prompt names its file's
    /// stem, on every API.
    #[arg(long, value_name = "DIR")]
    embeddings_dir: Option<std::path::PathBuf>,
    /// Draw live previews with TAESD (diffusers' `AutoencoderTiny`) instead of the cheap latent projection: a
    /// folder, a Hub id, or `taesd` for madebyollin/taesd (taesdxl on SDXL models). Final images still come
    /// from each model's VAE.
    #[arg(long, id = "preview decoder", value_name = "FOLDER|HUB_ID|taesd")]
    preview_decoder: Option<String>,
    /// Address to listen on; anything but loopback needs --api-key.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 7860)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every API request.
    #[arg(long, env = "DIFFUSE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Generation threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Jobs that may wait; beyond that requests get 429.
    #[arg(long, default_value_t = 64)]
    queue_capacity: usize,
    /// Finished jobs kept for their status and image URLs.
    #[arg(long, default_value_t = 100)]
    retained_jobs: usize,
    /// Seconds running jobs may take to finish at shutdown before they are cancelled.
    #[arg(long, default_value_t = 30)]
    shutdown_grace: u64,
    /// Largest request body, in MiB.
    #[arg(long, default_value_t = 32)]
    max_body_mib: usize,
    /// Most images per request.
    #[arg(long, default_value_t = Limits::default().max_images)]
    max_images: usize,
    /// Most denoising steps per request.
    #[arg(long, default_value_t = Limits::default().max_steps)]
    max_steps: usize,
    /// Largest output width or height.
    #[arg(long, default_value_t = Limits::default().max_side)]
    max_side: usize,
    /// Largest output width × height.
    #[arg(long, default_value_t = Limits::default().max_pixels)]
    max_pixels: usize,
}

/// Starts the server and serves until Ctrl-C or SIGTERM.
pub fn run(args: ServeArgs) -> Result<()> {
    let models = if args.models.is_empty() {
        let path = super::default_model()?;
        vec![ModelSpec::parse(&path.to_string_lossy())?]
    } else {
        args.models
            .iter()
            .map(|m| ModelSpec::parse(m))
            .collect::<Result<_, _>>()?
    };
    let mut config = ServerConfig::new(models);
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
    if let Some(dir) = &args.lora_dir {
        if !dir.is_dir() {
            anyhow::bail!("invalid --lora-dir: {} is not a folder", dir.display());
        }
    }
    config.lora_dir = args.lora_dir;
    if let Some(dir) = &args.embeddings_dir {
        if !dir.is_dir() {
            anyhow::bail!(
                "invalid --embeddings-dir: {} is not a folder",
                dir.display()
            );
        }
    }
    config.embeddings_dir = args.embeddings_dir;
    // A folder or Hub id is checked now, so that its error names the flag (`taesd` depends on each model).
    if let Some(spec) = args.preview_decoder.as_deref().filter(|s| *s != "taesd") {
        diffuse::loaders::hub::resolve_model_folder(spec, "preview decoder")
            .with_context(|| format!("--preview-decoder {spec}"))?;
    }
    config.preview_decoder = args.preview_decoder;
    config.limits = Limits {
        max_body_bytes: args.max_body_mib.saturating_mul(1 << 20),
        max_images: args.max_images,
        max_steps: args.max_steps,
        max_side: args.max_side,
        max_pixels: args.max_pixels,
        ..Limits::default()
    };
    diffuse_server::run_until_signal(config, |addr| {
        println!("diffuse serve: listening on http://{addr}");
        let _ = std::io::stdout().flush();
    })
    .context("diffuse serve")
}
