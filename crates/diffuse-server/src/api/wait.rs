//! Synchronous endpoints: submit a job and wait for it, cancelling it if the client goes away.

use std::sync::Arc;

use crate::error::ApiError;
use crate::jobs::job::{CancelReason, Job, JobState, JobStatus};
use crate::jobs::spec::JobSpec;
use crate::jobs::Engine;

/// Cancels its job when dropped before [`CancelOnDrop::disarm`]: axum drops a handler's future when the client
/// disconnects, and with it this guard.
struct CancelOnDrop {
    engine: Arc<Engine>,
    job: Arc<Job>,
    armed: bool,
}

impl CancelOnDrop {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed && !self.job.status().state.is_terminal() {
            let engine = self.engine.clone();
            let job = self.job.clone();
            // A broker may be away: the cancel is retried by no one, and the job then simply runs to its end.
            tokio::spawn(async move {
                let _ = engine.cancel(&job, CancelReason::ClientGone).await;
            });
        }
    }
}

/// Queues `spec`, waits for the job to end, and returns it with its final status; a failed or cancelled job
/// becomes its error.
pub async fn run_to_end(
    engine: &Arc<Engine>,
    spec: JobSpec,
) -> Result<(Arc<Job>, JobStatus), ApiError> {
    let job = engine.submit(spec).await?;
    let guard = CancelOnDrop {
        engine: engine.clone(),
        job: job.clone(),
        armed: true,
    };
    let mut updates = job.subscribe();
    let mut detached = engine.detached();
    let status = tokio::select! {
        status = updates.wait_for(|s| s.state.is_terminal()) => match status {
            Ok(status) => status.clone(),
            Err(_) => job.status(),
        },
        _ = detached.wait_for(|d| *d) => {
            guard.disarm();
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the server is shutting down; job {} goes on through the broker (GET /v1/jobs/{} on \
                     another server)",
                    job.id, job.id
                ),
            )
            .with_retry_after(5));
        }
    };
    guard.disarm();
    match status.state {
        JobState::Succeeded => Ok((job, status)),
        _ => Err(status
            .error
            .clone()
            .unwrap_or_else(|| ApiError::internal("the job ended without images"))),
    }
}
