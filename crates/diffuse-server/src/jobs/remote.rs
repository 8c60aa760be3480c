//! Jobs through the broker, as this server shows them: each is a local [`Job`] mirroring the job's state in
//! Redis, brought up to date when the broker announces a change and by a periodic sweep (for announcements
//! missed while disconnected), so that handlers watch it exactly as they watch an in-process job.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::job::{Job, JobStatus};
use super::spec::JobSpec;
use super::worker::outcome;
use super::Engine;
use crate::broker::client::{BrokerClient, Submitted};
use crate::broker::stored::StoredJob;
use crate::error::ApiError;

/// How often every unfinished mirrored job is re-read.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Draws of a fresh id when one is taken (ids are random; a clash is rare, two in a row rarer still).
const ID_TRIES: usize = 4;

impl Engine {
    pub(super) async fn submit_brokered(
        &self,
        client: &BrokerClient,
        spec: JobSpec,
    ) -> Result<Arc<Job>, ApiError> {
        let total_steps = spec.expected_steps();
        for _ in 0..ID_TRIES {
            let id = self.store.next_id();
            match client
                .submit(&id, &spec, total_steps, self.queue.capacity())
                .await?
            {
                Submitted::Queued => {
                    self.metrics.job_submitted();
                    let job = Arc::new(Job::mirror(
                        id,
                        spec.model.name.clone(),
                        spec.prompt().to_string(),
                        JobStatus::queued(total_steps),
                    ));
                    self.store.insert(job.clone());
                    return Ok(job);
                }
                Submitted::Full => return Err(self.queue_full()),
                Submitted::IdTaken => continue,
            }
        }
        Err(ApiError::internal("could not draw an unused job id; retry"))
    }

    /// A mirror of job `id` from the broker, kept in the store; `None` when the broker has no such job.
    pub(super) async fn mirror(
        &self,
        client: &BrokerClient,
        id: &str,
    ) -> Result<Option<Arc<Job>>, ApiError> {
        let Some(stored) = client.load(id).await? else {
            return Ok(None);
        };
        let mut status = JobStatus::queued(stored.total_steps);
        status.created_at = stored.created_at;
        let job = Arc::new(Job::mirror(
            id.to_string(),
            stored.model.clone(),
            stored.prompt.clone(),
            status,
        ));
        self.apply(client, &job, stored).await?;
        // Another request may have mirrored it meanwhile: keep one.
        if let Some(existing) = self.store.get(id) {
            return Ok(Some(existing));
        }
        self.store.insert(job.clone());
        if job.status().state.is_terminal() {
            self.store.finished(id);
        }
        Ok(Some(job))
    }

    /// Re-reads a mirrored job from the broker (nothing to do in-process).
    pub(crate) async fn refresh(&self, job: &Job) -> Result<(), ApiError> {
        let Some(broker) = self.broker() else {
            return Ok(());
        };
        if job.status().state.is_terminal() {
            return Ok(());
        }
        match broker.load(&job.id).await? {
            Some(stored) => self.apply(broker, job, stored).await,
            None => {
                // Deleted or expired while we watched it.
                job.finish(
                    super::job::JobState::Failed,
                    Vec::new(),
                    Some(ApiError::not_found(format!(
                        "job {} is no longer held by the broker",
                        job.id
                    ))),
                );
                self.store.finished(&job.id);
                Ok(())
            }
        }
    }

    async fn apply(
        &self,
        client: &BrokerClient,
        job: &Job,
        stored: StoredJob,
    ) -> Result<(), ApiError> {
        let seq = stored.preview_seq;
        let preview = if seq > job.preview_seq.load(std::sync::atomic::Ordering::SeqCst)
            && !stored.state.is_terminal()
        {
            let preview = client.preview(&job.id).await?;
            job.preview_seq
                .store(seq, std::sync::atomic::Ordering::SeqCst);
            preview.map(Arc::new)
        } else {
            None
        };
        job.update_unless_ended(|s| {
            // The end itself is recorded by `finish_at`, with the outputs.
            if !stored.state.is_terminal() {
                s.state = stored.state;
            }
            s.step = stored.step;
            s.total_steps = stored.total_steps;
            s.started_at = stored.started_at;
            if preview.is_some() {
                s.preview = preview;
            }
        });
        if stored.state.is_terminal() {
            let outputs = client.outputs(&job.id, &stored.outputs).await?;
            let images = outputs.len();
            let finished_at = stored
                .finished_at
                .unwrap_or_else(crate::clock::unix_seconds);
            if job.finish_at(stored.state, outputs, stored.error, finished_at) {
                self.metrics
                    .job_finished(outcome(stored.state), job.age(), images);
                self.store.finished(&job.id);
            }
        }
        Ok(())
    }
}

/// The tasks that keep mirrors current: one acting on the broker's announcements, one sweeping.
pub(super) fn start_tasks(
    client: &Arc<BrokerClient>,
    engine: Weak<Engine>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let announced = {
        let engine = engine.clone();
        client.listen(move |id| {
            let Some(engine) = engine.upgrade() else {
                return;
            };
            if let Some(job) = engine.store.get(&id) {
                tokio::spawn(async move {
                    let _ = engine.refresh(&job).await;
                });
            }
        })
    };
    let sweep = tokio::spawn(async move {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            let Some(engine) = engine.upgrade() else {
                return;
            };
            for job in engine.store.active() {
                if engine.refresh(&job).await.is_err() {
                    break;
                }
            }
        }
    });
    vec![announced, sweep]
}
