//! The Redis layout, in one place.
//!
//! - `diffuse:stream:{model}`: a stream of `job` ids; the consumer group [`GROUP`] delivers each to one worker.
//! - `diffuse:job:{id}`: the job's hash (fields in [`super::stored`]): its wire request, state, progress, error
//!   and the outputs' metadata.
//! - `diffuse:job:{id}:result`: the outputs' bytes (`png:{i}`, `wav:{i}`), written once.
//! - `diffuse:job:{id}:preview`: the latest preview PNG.
//! - `diffuse:job:{id}:control`: what clients asked of a running job (`cancel` reason, `early` end).
//! - [`EVENTS`]: a channel where every change of a job is announced by its id.
//! - [`WORKERS`]: a sorted set of worker names scored by their last heartbeat (Unix seconds).
//! - [`STATS`]: counters (`claimed`: deliveries taken over from a stopped worker).

/// The consumer group of workers on every stream.
pub const GROUP: &str = "diffuse-workers";
/// The channel announcing job changes.
pub const EVENTS: &str = "diffuse:events";
/// Workers by last heartbeat.
pub const WORKERS: &str = "diffuse:workers";
/// Cluster-wide counters.
pub const STATS: &str = "diffuse:stats";
/// A worker not heard from for this many seconds is no longer counted as seen.
pub const WORKER_SEEN_SECONDS: f64 = 60.0;
/// A worker not heard from for this many seconds is dropped from [`WORKERS`].
pub const WORKER_FORGOTTEN_SECONDS: f64 = 86_400.0;

/// The stream of `model`'s jobs.
pub fn stream(model: &str) -> String {
    format!("diffuse:stream:{model}")
}

/// Job `id`'s hash.
pub fn job(id: &str) -> String {
    format!("diffuse:job:{id}")
}

/// Job `id`'s output bytes.
pub fn result(id: &str) -> String {
    format!("diffuse:job:{id}:result")
}

/// Job `id`'s latest preview.
pub fn preview(id: &str) -> String {
    format!("diffuse:job:{id}:preview")
}

/// Job `id`'s requests to its worker.
pub fn control(id: &str) -> String {
    format!("diffuse:job:{id}:control")
}
