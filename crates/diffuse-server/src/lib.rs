//! `diffuse serve`: an HTTP server that keeps Stable Diffusion models loaded and speaks the APIs clients
//! already use — OpenAI Images, AUTOMATIC1111's `/sdapi/v1`, a native job API with live events — plus a web
//! page at `/`.
//!
//! Generation runs on worker threads fed by a bounded queue (429 with Retry-After when full), never on the
//! async runtime. Jobs are cancelled when their client disconnects, on `DELETE /v1/jobs/{id}`, on A1111's
//! interrupt, and at shutdown after a grace period.

pub mod api;
pub mod broker;
pub mod clock;
pub mod config;
pub mod error;
pub mod jobs;
pub mod metrics;
pub mod registry;
mod server;

pub use broker::BrokerConfig;
pub use config::{Limits, ModelSpec, ServerConfig};
pub use error::{ApiError, ServerError};
pub use server::{run_until_signal, run_worker_until_signal, Server, WorkerConfig};
