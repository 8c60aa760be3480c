//! Jobs: submission with back-pressure, worker threads, cancellation, and shutdown.

pub mod job;
pub mod queue;
pub mod spec;
pub mod store;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use crate::error::ApiError;
use crate::metrics::Metrics;
use job::{CancelReason, ImageOutput, Job, JobState};
use queue::{JobQueue, PushError};
use spec::JobSpec;
use store::JobStore;

/// The job machinery shared by every handler and worker.
pub struct Engine {
    /// Jobs waiting for a worker.
    pub queue: JobQueue,
    /// Jobs by id.
    pub store: JobStore,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    running: AtomicUsize,
    closing: AtomicBool,
    workers: Mutex<Vec<JoinHandle<()>>>,
    worker_count: usize,
}

impl Engine {
    /// Starts `workers` threads over a queue of `capacity`, keeping `retained` finished jobs.
    pub fn start(
        workers: usize,
        capacity: usize,
        retained: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Arc<Self>> {
        let engine = Arc::new(Self {
            queue: JobQueue::new(capacity),
            store: JobStore::new(retained),
            metrics,
            running: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            workers: Mutex::new(Vec::new()),
            worker_count: workers,
        });
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let engine = engine.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("diffuse-worker-{i}"))
                    .spawn(move || worker::run(engine))?,
            );
        }
        *engine.workers.lock().unwrap_or_else(|e| e.into_inner()) = handles;
        Ok(engine)
    }

    /// Queues `spec` as a new job: 429 with Retry-After when the queue is full, 503 when shutting down.
    pub fn submit(&self, spec: JobSpec) -> Result<Arc<Job>, ApiError> {
        let job = Arc::new(Job::new(self.store.next_id(), spec));
        self.store.insert(job.clone());
        match self.queue.push(job.clone()) {
            Ok(()) => {
                self.metrics.job_submitted();
                Ok(job)
            }
            Err(e) => {
                self.store.remove(&job.id);
                Err(match e {
                    PushError::Full => {
                        self.metrics.job_rejected();
                        ApiError::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            format!(
                                "the queue is full ({} jobs waiting); retry later",
                                self.queue.capacity()
                            ),
                        )
                        .with_retry_after(self.retry_after_seconds())
                    }
                    PushError::Closed => ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the server is shutting down",
                    ),
                })
            }
        }
    }

    /// A guess at when a queue slot frees: the mean job time so far, from 1 to 60 seconds.
    fn retry_after_seconds(&self) -> u64 {
        let mean = self.metrics.mean_job_seconds().unwrap_or(1.0);
        (mean.ceil() as u64).clamp(1, 60)
    }

    /// Asks `job` to stop: a waiting job ends at once, a running one at its next step.
    pub fn cancel(&self, job: &Job, reason: CancelReason) {
        job.request_cancel(reason);
        if self.queue.remove(&job.id) {
            self.end(job, JobState::Cancelled, Vec::new(), None);
        }
    }

    /// Ends `job` (once), counting it and recording it as finished.
    pub(crate) fn end(
        &self,
        job: &Job,
        state: JobState,
        outputs: Vec<ImageOutput>,
        error: Option<ApiError>,
    ) {
        let images = outputs.len();
        let error = match (state, error) {
            (JobState::Cancelled, None) => job.cancel_reason().map(CancelReason::error),
            (_, e) => e,
        };
        let reason = error.as_ref().map(|e| e.message.clone());
        if job.finish(state, outputs, error) {
            let status = job.status();
            tracing::info!(
                "job {} model {} steps {}/{} images {images} {:.2} s {}{}",
                job.id,
                job.model,
                status.step,
                status.total_steps,
                job.age().as_secs_f64(),
                state.as_str(),
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            );
            self.metrics
                .job_finished(worker::outcome(state), job.age(), images);
            self.store.finished(&job.id);
        }
    }

    /// Jobs being generated.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Worker threads.
    pub fn worker_count(&self) -> usize {
        self.worker_count
    }

    /// Whether shutdown has begun.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Ends the running jobs' current generations with the images as they stand (A1111's interrupt, or with
    /// `then_stop` false its skip); returns how many jobs were asked.
    pub fn end_running_early(&self, then_stop: bool) -> usize {
        let running: Vec<_> = self
            .store
            .active()
            .into_iter()
            .filter(|job| job.status().state == JobState::Running)
            .collect();
        for job in &running {
            job.request_early_end(then_stop);
        }
        running.len()
    }

    /// Shuts down: refuses new jobs, cancels waiting ones, lets running ones finish within `grace`, then
    /// cancels them and joins the workers.
    pub async fn shutdown(&self, grace: Duration) {
        self.closing.store(true, Ordering::SeqCst);
        for job in self.queue.close() {
            job.request_cancel(CancelReason::Shutdown);
            self.end(&job, JobState::Cancelled, Vec::new(), None);
        }
        let deadline = Instant::now() + grace;
        while !self.workers_done() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for job in self.store.active() {
            self.cancel(&job, CancelReason::Shutdown);
        }
        while !self.workers_done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let handles = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in handles {
            let _ = handle.join();
        }
    }

    fn workers_done(&self) -> bool {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .all(JoinHandle::is_finished)
    }
}
