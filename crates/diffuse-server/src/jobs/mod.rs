//! Jobs: submission with back-pressure, worker threads, cancellation, and shutdown — in this process (a bounded
//! queue and worker threads), or through a broker shared with other servers and worker processes.

pub mod job;
pub mod queue;
mod remote;
pub mod spec;
pub mod store;
pub(crate) mod worker;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use crate::broker::client::BrokerClient;
use crate::broker::worker::WorkerContext;
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
    /// The broker jobs go through, if any (else the in-process queue).
    broker: Option<Broker>,
    /// Set when a brokered server stops following its jobs (they go on elsewhere).
    detached: tokio::sync::watch::Sender<bool>,
}

/// An engine's link to the broker.
struct Broker {
    client: Arc<BrokerClient>,
    /// Stops this process's broker workers.
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// The tasks that keep mirrored jobs current.
    tasks: Vec<tokio::task::JoinHandle<()>>,
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
            detached: tokio::sync::watch::channel(false).0,
            workers: Mutex::new(Vec::new()),
            worker_count: workers,
            broker: None,
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

    /// Starts the engine on a broker: `workers` broker workers of `context` in this process (0 for an API-only
    /// server), and the tasks that keep the jobs this server shows current. Must be called on a Tokio runtime.
    pub fn start_brokered(
        client: BrokerClient,
        context: Arc<WorkerContext>,
        workers: usize,
        capacity: usize,
        retained: usize,
    ) -> std::io::Result<Arc<Self>> {
        let client = Arc::new(client);
        let stop = context.stop.clone();
        let handles = crate::broker::worker::spawn(context.clone(), workers)?;
        let engine = Arc::new_cyclic(|weak: &std::sync::Weak<Self>| {
            let tasks = remote::start_tasks(&client, weak.clone());
            Self {
                queue: JobQueue::new(capacity),
                store: JobStore::new(retained),
                metrics: context.metrics.clone(),
                running: AtomicUsize::new(0),
                closing: AtomicBool::new(false),
                detached: tokio::sync::watch::channel(false).0,
                workers: Mutex::new(handles),
                worker_count: workers,
                broker: Some(Broker {
                    client,
                    stop,
                    tasks,
                }),
            }
        });
        Ok(engine)
    }

    /// The broker's client, when jobs go through one.
    pub fn broker(&self) -> Option<&Arc<BrokerClient>> {
        self.broker.as_ref().map(|b| &b.client)
    }

    /// Queues `spec` as a new job: 429 with Retry-After when the queue (or the model's stream) is full, 503 when
    /// shutting down or when the broker cannot be reached.
    pub async fn submit(&self, spec: JobSpec) -> Result<Arc<Job>, ApiError> {
        if self.is_closing() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            ));
        }
        match &self.broker {
            Some(broker) => self.submit_brokered(&broker.client, spec).await,
            None => self.submit_local(spec),
        }
    }

    /// The 429 of a full queue.
    fn queue_full(&self) -> ApiError {
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

    fn submit_local(&self, spec: JobSpec) -> Result<Arc<Job>, ApiError> {
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
                    PushError::Full => self.queue_full(),
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

    /// Asks `job` to stop: a waiting job ends at once, a running one at its next step (through the broker,
    /// wherever it runs).
    pub async fn cancel(&self, job: &Job, reason: CancelReason) -> Result<(), ApiError> {
        job.request_cancel(reason);
        if let Some(broker) = &self.broker {
            broker.client.cancel(&job.id, &job.model, reason).await?;
            return self.refresh(job).await;
        }
        if self.queue.remove(&job.id) {
            self.end(job, JobState::Cancelled, Vec::new(), None);
        }
        Ok(())
    }

    /// The job with `id`: one this server knows, or (with a broker) one any server submitted. A mirrored job
    /// that has not ended is re-read first, so that an answer never lags what the broker holds (a worker's
    /// result stored a moment ago); with the broker away, the mirror is answered as it last stood.
    pub async fn find(&self, id: &str) -> Result<Option<Arc<Job>>, ApiError> {
        if let Some(job) = self.store.get(id) {
            if let Err(e) = self.refresh(&job).await {
                tracing::debug!("job {id} answered as last mirrored: {}", e.message);
            }
            return Ok(Some(job));
        }
        match &self.broker {
            Some(broker) => self.mirror(&broker.client, id).await,
            None => Ok(None),
        }
    }

    /// Forgets an ended job (and with a broker, deletes its state and outputs there).
    pub async fn forget(&self, id: &str) -> Result<(), ApiError> {
        self.store.remove(id);
        match &self.broker {
            Some(broker) => broker.client.forget(id).await,
            None => Ok(()),
        }
    }

    /// Job `id`'s place in line (0 = next), when it waits in this process's queue.
    pub fn queue_position(&self, id: &str) -> Option<usize> {
        self.queue.position(id)
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
        let logged = error.clone();
        if job.finish(state, outputs, error) {
            log_ended(job, state, images, logged.as_ref());
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

    /// Becomes true when this server stops following its jobs at shutdown, which with a broker go on without
    /// it: event streams end, and waiting clients get 503 instead of waiting for a job this server no longer
    /// watches.
    pub fn detached(&self) -> tokio::sync::watch::Receiver<bool> {
        self.detached.subscribe()
    }

    /// Whether shutdown has begun.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Ends the running jobs' current generations with the images as they stand (A1111's interrupt, or with
    /// `then_stop` false its skip); returns how many jobs were asked.
    pub async fn end_running_early(&self, then_stop: bool) -> Result<usize, ApiError> {
        // A mirror may not have heard yet that its job started on a worker: bring them up to date first.
        for job in self.store.active() {
            self.refresh(&job).await?;
        }
        let running: Vec<_> = self
            .store
            .active()
            .into_iter()
            .filter(|job| job.status().state == JobState::Running)
            .collect();
        for job in &running {
            job.request_early_end(then_stop);
            if let Some(broker) = &self.broker {
                broker.client.end_early(&job.id, then_stop).await?;
            }
        }
        Ok(running.len())
    }

    /// Shuts down: refuses new jobs, cancels waiting ones, lets running ones finish within `grace`, then
    /// cancels them and joins the workers.
    pub async fn shutdown(&self, grace: Duration) {
        self.closing.store(true, Ordering::SeqCst);
        if let Some(broker) = &self.broker {
            return self.shutdown_brokered(broker, grace).await;
        }
        for job in self.queue.close() {
            job.request_cancel(CancelReason::Shutdown);
            self.end(&job, JobState::Cancelled, Vec::new(), None);
        }
        let deadline = Instant::now() + grace;
        while !self.workers_done() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for job in self.store.active() {
            // In-process cancelling cannot fail.
            let _ = self.cancel(&job, CancelReason::Shutdown).await;
        }
        while !self.workers_done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let handles = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in handles {
            let _ = handle.join();
        }
    }

    /// With a broker, the queued jobs belong to the cluster: nothing is cancelled. This process's workers finish
    /// their jobs within `grace`; a job still running then goes back to the broker, which gives it to another
    /// worker once its claim expires.
    async fn shutdown_brokered(&self, broker: &Broker, grace: Duration) {
        broker.stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + grace;
        while !self.workers_done() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for task in &broker.tasks {
            task.abort();
        }
        self.detached.send_replace(true);
        if self.workers_done() {
            let handles =
                std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
            for handle in handles {
                let _ = handle.join();
            }
        } else {
            tracing::warn!(
                "a job still running after the grace period goes back to the broker for another worker"
            );
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

/// Logs how a job ended.
pub(crate) fn log_ended(job: &Job, state: JobState, images: usize, error: Option<&ApiError>) {
    let status = job.status();
    tracing::info!(
        "job {} model {} steps {}/{} images {images} {:.2} s {}{}",
        job.id,
        job.model,
        status.step,
        status.total_steps,
        job.age().as_secs_f64(),
        state.as_str(),
        error
            .map(|e| format!(": {}", e.message))
            .unwrap_or_default()
    );
}
