//! Starting and stopping the server: load the models, start the workers, bind, serve, shut down gracefully.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{router, AppState};
use crate::broker::client::BrokerClient;
use crate::broker::worker::WorkerContext;
use crate::broker::BrokerConfig;
use crate::config::{Limits, ModelSpec, ServerConfig};
use crate::error::ServerError;
use crate::jobs::Engine;
use crate::metrics::Metrics;
use crate::registry::{ModelExtras, Registry};

/// A running server.
pub struct Server {
    addr: SocketAddr,
    engine: Arc<Engine>,
    stop: watch::Sender<bool>,
    serving: JoinHandle<std::io::Result<()>>,
    grace: Duration,
}

impl Server {
    /// Loads the models (off the runtime), starts the workers, binds and starts serving.
    pub async fn start(config: ServerConfig) -> Result<Self, ServerError> {
        config.validate()?;
        let specs = config.models.clone();
        let load = config.load.clone();
        let extras = ModelExtras {
            lora_dir: config.lora_dir.clone(),
            embeddings_dir: config.embeddings_dir.clone(),
            preview_decoder: config.preview_decoder.clone(),
        };
        let registry = tokio::task::spawn_blocking(move || Registry::load(&specs, &load, &extras))
            .await
            .map_err(|e| ServerError::Config(format!("loading the models failed: {e}")))??;
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|source| ServerError::Io {
                addr: config.addr.to_string(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Io {
            addr: config.addr.to_string(),
            source,
        })?;
        let metrics = Arc::new(Metrics::default());
        let registry = Arc::new(registry);
        let engine = match &config.broker {
            Some(broker) => {
                let client = BrokerClient::connect(broker.clone())?;
                tracing::info!("jobs go through the broker at {}", broker.redacted_url());
                let context = Arc::new(WorkerContext {
                    broker: broker.clone(),
                    registry: registry.clone(),
                    limits: config.limits.clone(),
                    metrics: metrics.clone(),
                    stop: Arc::new(AtomicBool::new(false)),
                });
                Engine::start_brokered(
                    client,
                    context,
                    config.workers,
                    config.queue_capacity,
                    config.retained_jobs,
                )
            }
            None => Engine::start(
                config.workers,
                config.queue_capacity,
                config.retained_jobs,
                metrics.clone(),
            ),
        }
        .map_err(|source| ServerError::Io {
            addr: addr.to_string(),
            source,
        })?;
        let state = Arc::new(AppState {
            registry,
            engine: engine.clone(),
            metrics,
            limits: config.limits.clone(),
            api_key: config.api_key.clone(),
            a1111: Default::default(),
            openai_aliases: config.openai_aliases.clone(),
            lora_dir: config.lora_dir.clone(),
            embeddings_dir: config.embeddings_dir.clone(),
        });
        let (stop, mut stopped) = watch::channel(false);
        let app = router(state);
        let serving = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        });
        Ok(Self {
            addr,
            engine,
            stop,
            serving,
            grace: config.shutdown_grace,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, cancels waiting jobs, lets running ones finish within the grace period
    /// (then cancels them), joins the workers and waits for open connections to finish.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let _ = self.stop.send(true);
        self.engine.shutdown(self.grace).await;
        let io = |source| ServerError::Io {
            addr: self.addr.to_string(),
            source,
        };
        match self.serving.await {
            Ok(result) => result.map_err(io),
            Err(e) => Err(io(std::io::Error::other(e))),
        }
    }
}

/// Runs a server until Ctrl-C or SIGTERM, then shuts it down gracefully. `on_listening` is told the address
/// once the server accepts connections.
pub fn run_until_signal(
    config: ServerConfig,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| ServerError::Io {
            addr: config.addr.to_string(),
            source,
        })?;
    runtime.block_on(async move {
        // The handlers are in place before anyone is told the address, so that a signal sent as soon as the
        // server answers stops it gracefully instead of killing it.
        let signal = shutdown_signal();
        let server = Server::start(config).await?;
        on_listening(server.local_addr());
        signal.await;
        tracing::info!("shutting down");
        server.shutdown().await
    })
}

/// A future that completes on Ctrl-C or SIGTERM; the handlers are registered when it is made.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let interrupt = signal(SignalKind::interrupt()).ok();
        async move {
            let wait = |stream: Option<tokio::signal::unix::Signal>| async move {
                match stream {
                    Some(mut stream) => {
                        stream.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(term) => {}
                _ = wait(interrupt) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Everything `diffuse worker` is started with.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The broker to take jobs from.
    pub broker: BrokerConfig,
    /// The models whose streams this worker reads, named as the servers name them.
    pub models: Vec<ModelSpec>,
    /// How models are loaded.
    pub load: diffuse::loaders::LoadOptions,
    /// Generation threads.
    pub threads: usize,
    /// The limits jobs are validated against again (as the servers' are).
    pub limits: Limits,
    /// The folder LoRAs are named from.
    pub lora_dir: Option<std::path::PathBuf>,
    /// The folder of textual-inversion embeddings.
    pub embeddings_dir: Option<std::path::PathBuf>,
    /// TAESD for previews (see [`ServerConfig::preview_decoder`]).
    pub preview_decoder: Option<String>,
}

/// Runs broker workers until Ctrl-C or SIGTERM, then lets each finish its current job and returns. `on_ready`
/// is told the worker count once the models are loaded and the workers read their streams.
pub fn run_worker_until_signal(
    config: WorkerConfig,
    on_ready: impl FnOnce(usize),
) -> Result<(), ServerError> {
    config.broker.validate()?;
    if config.threads == 0 {
        return Err(ServerError::Config("--workers: must be at least 1".into()));
    }
    crate::config::validate_models(&config.models)?;
    let extras = ModelExtras {
        lora_dir: config.lora_dir.clone(),
        embeddings_dir: config.embeddings_dir.clone(),
        preview_decoder: config.preview_decoder.clone(),
    };
    let registry = Registry::load(&config.models, &config.load, &extras)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ServerError::Io {
            addr: config.broker.redacted_url(),
            source,
        })?;
    runtime.block_on(async move {
        let signal = shutdown_signal();
        let stop = Arc::new(AtomicBool::new(false));
        let context = Arc::new(WorkerContext {
            broker: config.broker.clone(),
            registry: Arc::new(registry),
            limits: config.limits.clone(),
            metrics: Arc::new(Metrics::default()),
            stop: stop.clone(),
        });
        let handles = crate::broker::worker::spawn(context, config.threads).map_err(|source| {
            ServerError::Io {
                addr: config.broker.redacted_url(),
                source,
            }
        })?;
        on_ready(handles.len());
        signal.await;
        tracing::info!("stopping: each worker finishes its current job");
        stop.store(true, Ordering::SeqCst);
        tokio::task::spawn_blocking(move || {
            for handle in handles {
                let _ = handle.join();
            }
        })
        .await
        .map_err(|e| ServerError::Config(format!("a worker thread failed: {e}")))
    })
}
