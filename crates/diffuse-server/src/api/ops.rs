//! Operations: `GET /health` and `GET /metrics`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::SharedState;
use crate::metrics::Gauges;

/// `GET /health`: up, the models, and the queue (no key needed).
pub async fn health(State(state): State<SharedState>) -> Json<Value> {
    let engine = &state.engine;
    Json(json!({
        "status": if engine.is_closing() { "shutting_down" } else { "ok" },
        "models": state.registry.names(),
        "queue": {"depth": engine.queue.len(), "capacity": engine.queue.capacity()},
        "running": engine.running(),
        "workers": engine.worker_count(),
    }))
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(state): State<SharedState>) -> impl IntoResponse {
    let engine = &state.engine;
    let text = state.metrics.render(&Gauges {
        queue_depth: engine.queue.len(),
        queue_capacity: engine.queue.capacity(),
        running: engine.running(),
        workers: engine.worker_count(),
        models: state.registry.all().len(),
    });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
