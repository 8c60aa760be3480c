//! The HTTP surface: routes, shared state, and the layers around them.

pub mod a1111;
pub mod input;
pub mod middleware;
pub mod native;
pub mod openai;
pub mod ops;
pub mod uploads;
pub mod wait;
pub mod web;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::config::Limits;
use crate::jobs::Engine;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// What every handler can reach.
pub struct AppState {
    /// The served models.
    pub registry: Arc<Registry>,
    /// Jobs and workers.
    pub engine: Arc<Engine>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Request limits.
    pub limits: Limits,
    /// The Bearer key, if one is required.
    pub api_key: Option<String>,
    /// OpenAI model names answered by a served model (see `ServerConfig::openai_aliases`).
    pub openai_aliases: Vec<(String, String)>,
    /// A1111's server-wide settings (`/sdapi/v1/options`).
    pub a1111: std::sync::RwLock<a1111::settings::Settings>,
    /// The folder LoRAs are named from, if the server has one.
    pub lora_dir: Option<std::path::PathBuf>,
    /// The folder embeddings are named from, if the server has one.
    pub embeddings_dir: Option<std::path::PathBuf>,
}

impl AppState {
    /// A copy of A1111's current server-wide settings.
    pub fn a1111_settings(&self) -> a1111::settings::Settings {
        match self.a1111.read() {
            Ok(settings) => settings.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// The state as handlers receive it.
pub type SharedState = Arc<AppState>;

/// Every route. The page, its assets and `/health` are open; everything else needs the key when there is one.
pub fn router(state: SharedState) -> Router {
    let api = Router::new()
        .route("/v1/images/generations", post(openai::generations))
        .route("/v1/images/edits", post(openai::edits))
        .route("/v1/images/variations", post(openai::variations))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{id}", get(openai::model))
        .route("/v1/schedulers", get(native::schedulers))
        .route("/v1/jobs", post(native::create))
        .route("/v1/jobs/{id}", get(native::get).delete(native::delete))
        .route("/v1/jobs/{id}/events", get(native::events))
        .route("/v1/jobs/{id}/preview", get(native::preview))
        .route("/v1/jobs/{id}/images/{file}", get(native::image))
        .route("/v1/jobs/{id}/audio/{file}", get(native::audio))
        .route("/sdapi/v1/txt2img", post(a1111::txt2img))
        .route("/sdapi/v1/img2img", post(a1111::img2img))
        .route("/sdapi/v1/samplers", get(a1111::samplers))
        .route("/sdapi/v1/schedulers", get(a1111::schedulers))
        .route("/sdapi/v1/sd-models", get(a1111::sd_models))
        .route(
            "/sdapi/v1/options",
            get(a1111::options).post(a1111::set_options),
        )
        .route("/sdapi/v1/scripts", get(a1111::scripts))
        .route("/sdapi/v1/progress", get(a1111::progress))
        .route("/sdapi/v1/interrupt", post(a1111::interrupt))
        .route("/sdapi/v1/skip", post(a1111::skip))
        .route("/sdapi/v1/sd-vae", get(a1111::listings::empty_list))
        .route("/sdapi/v1/upscalers", get(a1111::listings::empty_list))
        .route("/sdapi/v1/face-restorers", get(a1111::listings::empty_list))
        .route(
            "/sdapi/v1/realesrgan-models",
            get(a1111::listings::empty_list),
        )
        .route("/sdapi/v1/prompt-styles", get(a1111::listings::empty_list))
        .route("/sdapi/v1/loras", get(a1111::listings::loras))
        .route("/sdapi/v1/embeddings", get(a1111::listings::embeddings))
        .route("/sdapi/v1/memory", get(a1111::listings::memory))
        .route("/sdapi/v1/cmd-flags", get(a1111::listings::cmd_flags))
        .route(
            "/sdapi/v1/refresh-checkpoints",
            post(a1111::listings::refresh),
        )
        .route("/sdapi/v1/refresh-vae", post(a1111::listings::refresh))
        .route(
            "/sdapi/v1/refresh-embeddings",
            post(a1111::listings::refresh),
        )
        .route("/sdapi/v1/refresh-loras", post(a1111::listings::refresh))
        .route("/internal/ping", get(a1111::listings::ping))
        .route("/sdapi/v1/png-info", post(a1111::png_info))
        .route("/metrics", get(ops::metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::require_key,
        ));
    Router::new()
        .route("/", get(web::index))
        .route("/app.js", get(web::script))
        .route("/style.css", get(web::style))
        .route("/favicon.svg", get(web::favicon))
        .route("/health", get(ops::health))
        .merge(api)
        .fallback(middleware::not_found)
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::json_errors,
        ))
        .layer(axum::middleware::from_fn(middleware::log_requests))
        .with_state(state)
}
