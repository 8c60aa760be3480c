//! Operations: `GET /health` and `GET /metrics`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::SharedState;
use crate::broker::client::BrokerHealth;
use crate::metrics::Gauges;

/// The broker's state, when jobs go through one.
async fn broker_health(state: &SharedState) -> Option<BrokerHealth> {
    let broker = state.engine.broker()?;
    Some(broker.health(&state.registry.names()).await)
}

/// `GET /health`: up, the models, the queue, and the broker when there is one (no key needed). With a broker the
/// queue is the cluster's: jobs waiting in the served models' streams, and those delivered to a worker.
pub async fn health(State(state): State<SharedState>) -> Json<Value> {
    let engine = &state.engine;
    let broker = broker_health(&state).await;
    let mut body = json!({
        "status": if engine.is_closing() { "shutting_down" } else { "ok" },
        "models": state.registry.names(),
        "queue": {"depth": engine.queue.len(), "capacity": engine.queue.capacity()},
        "running": engine.running(),
        "workers": engine.worker_count(),
    });
    if let (Some(health), Some(client)) = (&broker, engine.broker()) {
        let mut entry = json!({"url": client.config().redacted_url()});
        match health {
            BrokerHealth::Reachable(stats) => {
                let waiting: u64 = stats.streams.iter().map(|s| s.waiting).sum();
                let pending: u64 = stats.streams.iter().map(|s| s.pending).sum();
                body["queue"]["depth"] = json!(waiting);
                body["running"] = json!(pending);
                entry["state"] = json!("ok");
                entry["streams"] = json!(stats.streams);
                entry["claimed_total"] = json!(stats.claimed_total);
                entry["workers_seen"] = json!(stats.workers_seen);
            }
            BrokerHealth::Unreachable(message) => {
                if !engine.is_closing() {
                    body["status"] = json!("degraded");
                }
                entry["state"] = json!("unreachable");
                entry["error"] = json!(message);
            }
        }
        body["broker"] = entry;
    }
    Json(body)
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(state): State<SharedState>) -> impl IntoResponse {
    let engine = &state.engine;
    let broker = broker_health(&state).await;
    // With a broker the queue and the running jobs are the cluster's.
    let (queue_depth, running) = match &broker {
        Some(BrokerHealth::Reachable(stats)) => (
            stats.streams.iter().map(|s| s.waiting as usize).sum(),
            stats.streams.iter().map(|s| s.pending as usize).sum(),
        ),
        _ => (engine.queue.len(), engine.running()),
    };
    let text = state.metrics.render(&Gauges {
        queue_depth,
        queue_capacity: engine.queue.capacity(),
        running,
        workers: engine.worker_count(),
        models: state.registry.all().len(),
        broker,
    });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
