//! What the server is started with: its models, address, key, workers, queue and request limits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use diffuse::loaders::LoadOptions;

use crate::broker::BrokerConfig;
use crate::error::ServerError;

/// One model to serve: the name requests use, and its diffusers folder (never shown to clients).
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// The name requests give as `model` (letters, digits, `.`, `_`, `-`; at most 64 characters).
    pub name: String,
    /// The pipeline folder.
    pub path: PathBuf,
}

impl ModelSpec {
    /// Reads `NAME=PATH`, or a bare `PATH` named after its last component.
    pub fn parse(arg: &str) -> Result<Self, ServerError> {
        let (name, path) = match arg.split_once('=') {
            Some((name, path)) => (name.to_string(), PathBuf::from(path)),
            None => {
                let path = PathBuf::from(arg);
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (name, path)
            }
        };
        let spec = Self { name, path };
        spec.check_name()?;
        Ok(spec)
    }

    fn check_name(&self) -> Result<(), ServerError> {
        let valid = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if valid {
            Ok(())
        } else {
            Err(ServerError::Config(format!(
                "--model {}: the name {:?} must be 1-64 letters, digits, '.', '_' or '-' (give NAME=PATH)",
                self.path.display(),
                self.name
            )))
        }
    }
}

/// Limits on what one request may ask for; requests beyond them get a 400 naming the field.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest request body, in bytes (413 beyond it).
    pub max_body_bytes: usize,
    /// Images one request may ask for (OpenAI `n`, A1111 `batch_size × n_iter`).
    pub max_images: usize,
    /// Denoising steps.
    pub max_steps: usize,
    /// Output width or height, in pixels.
    pub max_side: usize,
    /// Output width × height, in pixels.
    pub max_pixels: usize,
    /// Width or height of an uploaded image, checked before it is decoded.
    pub max_input_side: usize,
    /// Characters in a prompt or negative prompt.
    pub max_prompt_chars: usize,
}

impl Default for Limits {
    /// 32 MiB bodies, 10 images, 150 steps, 1024-pixel sides and 768×768 pixels (self-attention over larger
    /// latents needs many GiB), 4096-pixel uploads, 10,000-character prompts.
    fn default() -> Self {
        Self {
            max_body_bytes: 32 << 20,
            max_images: 10,
            max_steps: 150,
            max_side: 1024,
            max_pixels: 768 * 768,
            max_input_side: 4096,
            max_prompt_chars: 10_000,
        }
    }
}

/// Everything `diffuse serve` is started with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The models, loaded once at start; the first is the default.
    pub models: Vec<ModelSpec>,
    /// Where to listen (port 0 picks a free port).
    pub addr: SocketAddr,
    /// The Bearer key every API request must carry; required to listen on a non-loopback address.
    pub api_key: Option<String>,
    /// Generation threads (each runs one job at a time); with a broker, 0 serves the API only.
    pub workers: usize,
    /// Jobs that may wait for a worker (with a broker: per model); beyond that requests get 429 with
    /// Retry-After.
    pub queue_capacity: usize,
    /// Finished jobs kept for `GET /v1/jobs/{id}` and image URLs; the oldest are forgotten first.
    pub retained_jobs: usize,
    /// At shutdown, how long running jobs may take to finish before they are cancelled.
    pub shutdown_grace: Duration,
    /// Request limits.
    pub limits: Limits,
    /// How models are loaded (dtype, device, variant).
    pub load: LoadOptions,
    /// OpenAI model names (e.g. "dall-e-3") answered by a served model, as `(alias, model)`; the alias `*`
    /// stands for every name no model or other alias has.
    pub openai_aliases: Vec<(String, String)>,
    /// The folder LoRAs are named from (prompt tags and the `loras` field), as `NAME.safetensors`; requests
    /// give names only, never paths.
    pub lora_dir: Option<PathBuf>,
    /// The folder of textual-inversion embeddings, each used where a prompt names its file's stem.
    pub embeddings_dir: Option<PathBuf>,
    /// TAESD (a folder, a Hub id, or `taesd` for the published one matching each model) to draw live previews
    /// with instead of the linear latent projection; final images still come from each model's VAE.
    pub preview_decoder: Option<String>,
    /// The broker jobs go through (shared with other servers and `diffuse worker` processes); `None` keeps
    /// them in this process.
    pub broker: Option<BrokerConfig>,
}

impl ServerConfig {
    /// A configuration serving `models` on 127.0.0.1:7860 with the defaults.
    pub fn new(models: Vec<ModelSpec>) -> Self {
        Self {
            models,
            addr: SocketAddr::from(([127, 0, 0, 1], 7860)),
            api_key: None,
            workers: 1,
            queue_capacity: 64,
            retained_jobs: 100,
            shutdown_grace: Duration::from_secs(30),
            limits: Limits::default(),
            load: LoadOptions::default(),
            openai_aliases: Vec::new(),
            lora_dir: None,
            embeddings_dir: None,
            preview_decoder: None,
            broker: None,
        }
    }

    /// Checks the options against each other; the message names the option to change.
    pub fn validate(&self) -> Result<(), ServerError> {
        validate_models(&self.models)?;
        for (alias, model) in &self.openai_aliases {
            if !self.models.iter().any(|m| &m.name == model) {
                return Err(ServerError::Config(format!(
                    "--openai-model-alias {alias}={model}: no served model is named {model:?}"
                )));
            }
        }
        if !self.addr.ip().is_loopback() && self.api_key.is_none() {
            return Err(ServerError::Config(format!(
                "--host {}: listening beyond this machine needs --api-key",
                self.addr.ip()
            )));
        }
        if matches!(&self.api_key, Some(key) if key.trim().is_empty()) {
            return Err(ServerError::Config("--api-key: must not be empty".into()));
        }
        if let Some(broker) = &self.broker {
            broker.validate()?;
        } else if self.workers == 0 {
            return Err(ServerError::Config(
                "--workers: must be at least 1 (0, an API-only server, needs --broker)".into(),
            ));
        }
        let positive = [
            ("--queue-capacity", self.queue_capacity),
            ("--max-images", self.limits.max_images),
            ("--max-steps", self.limits.max_steps),
            ("--max-side", self.limits.max_side),
            ("--max-pixels", self.limits.max_pixels),
        ];
        for (flag, value) in positive {
            if value == 0 {
                return Err(ServerError::Config(format!("{flag}: must be at least 1")));
            }
        }
        Ok(())
    }
}

/// Checks that there is a model, that each name is valid, and that no two share one.
pub fn validate_models(models: &[ModelSpec]) -> Result<(), ServerError> {
    if models.is_empty() {
        return Err(ServerError::Config(
            "no model to serve: give --model".into(),
        ));
    }
    for (i, model) in models.iter().enumerate() {
        model.check_name()?;
        if models[..i].iter().any(|m| m.name == model.name) {
            return Err(ServerError::Config(format!(
                "--model: two models are named {:?}; name them with NAME=PATH",
                model.name
            )));
        }
    }
    Ok(())
}
