//! One generation job: its immutable description, its cancel flag, and its status, which clients watch.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use super::spec::JobSpec;
use crate::error::ApiError;

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// Being generated.
    Running,
    /// Done: images are ready.
    Succeeded,
    /// The request or the server failed.
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

impl JobState {
    /// The state as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether the job has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// Why a job was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CancelReason {
    /// `DELETE /v1/jobs/{id}`.
    Requested = 1,
    /// The client waiting for the answer went away.
    ClientGone = 2,
    /// The server is shutting down.
    Shutdown = 3,
}

impl CancelReason {
    fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(CancelReason::Requested),
            2 => Some(CancelReason::ClientGone),
            3 => Some(CancelReason::Shutdown),
            _ => None,
        }
    }

    /// The error a client waiting on a job cancelled for this reason receives.
    pub fn error(self) -> ApiError {
        match self {
            CancelReason::Shutdown => ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down; the job was cancelled",
            )
            .with_retry_after(5),
            _ => ApiError::new(axum::http::StatusCode::CONFLICT, "the job was cancelled"),
        }
    }
}

/// How a job ends a generation early with the image as it stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EarlyEnd {
    /// A1111's skip: this generation ends, later ones run.
    Skip = 1,
    /// A1111's interrupt: this generation ends and no later one runs.
    Interrupt = 2,
}

/// One generated image.
#[derive(Debug)]
pub struct ImageOutput {
    /// The PNG file, with A1111's `parameters` text (for audio: the mel spectrogram's picture).
    pub png: Vec<u8>,
    /// For audio: the WAV file, with the parameters in its comment.
    pub wav: Option<Vec<u8>>,
    /// The seed its noise was drawn with.
    pub seed: u64,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// A1111's parameters text ("infotext").
    pub infotext: String,
}

/// A job's status: what `GET /v1/jobs/{id}`, the events stream and waiting handlers see.
#[derive(Clone, Debug)]
pub struct JobStatus {
    /// Where it stands.
    pub state: JobState,
    /// Steps done, over all its generations.
    pub step: usize,
    /// Steps in all, over all its generations.
    pub total_steps: usize,
    /// The latest preview, a PNG.
    pub preview: Option<Arc<Vec<u8>>>,
    /// The images, once it succeeded.
    pub outputs: Arc<Vec<ImageOutput>>,
    /// Why it failed or was cancelled.
    pub error: Option<ApiError>,
    /// Unix seconds when it was submitted.
    pub created_at: f64,
    /// Unix seconds when a worker started it.
    pub started_at: Option<f64>,
    /// Unix seconds when it ended.
    pub finished_at: Option<f64>,
}

impl JobStatus {
    /// A job just submitted, of `total_steps` steps.
    pub fn queued(total_steps: usize) -> Self {
        Self {
            state: JobState::Queued,
            step: 0,
            total_steps,
            preview: None,
            outputs: Arc::new(Vec::new()),
            error: None,
            created_at: crate::clock::unix_seconds(),
            started_at: None,
            finished_at: None,
        }
    }

    /// The fraction done, in [0, 1].
    pub fn fraction(&self) -> f64 {
        match self.state {
            JobState::Succeeded => 1.0,
            _ if self.total_steps == 0 => 0.0,
            _ => (self.step as f64 / self.total_steps as f64).min(1.0),
        }
    }
}

/// A job: what to generate, a cancel flag, and a watched status.
pub struct Job {
    /// The job's id.
    pub id: String,
    /// The model's name.
    pub model: String,
    /// The prompt (for listings).
    pub prompt: String,
    /// What to run; the worker takes it.
    spec: Mutex<Option<JobSpec>>,
    cancel: AtomicU8,
    early: AtomicU8,
    status: watch::Sender<JobStatus>,
    submitted: Instant,
    /// For a job mirrored from the broker: the number of the preview last fetched.
    pub(crate) preview_seq: AtomicU64,
}

impl Job {
    /// A queued job.
    pub fn new(id: String, spec: JobSpec) -> Self {
        let status = JobStatus::queued(spec.expected_steps());
        Self {
            id,
            model: spec.model.name.clone(),
            prompt: spec.prompt().to_string(),
            spec: Mutex::new(Some(spec)),
            cancel: AtomicU8::new(0),
            early: AtomicU8::new(0),
            status: watch::channel(status).0,
            submitted: Instant::now(),
            preview_seq: AtomicU64::new(0),
        }
    }

    /// A job another process runs, seen through the broker: no spec, and a status the broker's changes update.
    pub(crate) fn mirror(id: String, model: String, prompt: String, status: JobStatus) -> Self {
        Self {
            id,
            model,
            prompt,
            spec: Mutex::new(None),
            cancel: AtomicU8::new(0),
            early: AtomicU8::new(0),
            status: watch::channel(status).0,
            submitted: Instant::now(),
            preview_seq: AtomicU64::new(0),
        }
    }

    /// The current status.
    pub fn status(&self) -> JobStatus {
        self.status.borrow().clone()
    }

    /// A receiver that wakes on every status change.
    pub fn subscribe(&self) -> watch::Receiver<JobStatus> {
        self.status.subscribe()
    }

    /// Asks the job to stop; the first reason given is kept.
    pub fn request_cancel(&self, reason: CancelReason) {
        let _ = self
            .cancel
            .compare_exchange(0, reason as u8, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Why the job was asked to stop, if it was.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        CancelReason::from_u8(self.cancel.load(Ordering::SeqCst))
    }

    /// Asks the job to end its current generation now with the image as it stands (A1111's skip, or with
    /// `then_stop` its interrupt: no later generation runs). An interrupt is not downgraded to a skip.
    pub fn request_early_end(&self, then_stop: bool) {
        let wanted = if then_stop {
            EarlyEnd::Interrupt
        } else {
            EarlyEnd::Skip
        };
        self.early.fetch_max(wanted as u8, Ordering::SeqCst);
    }

    /// Whether the current generation should end early, and whether the job stops after it.
    pub fn early_end(&self) -> Option<EarlyEnd> {
        match self.early.load(Ordering::SeqCst) {
            1 => Some(EarlyEnd::Skip),
            2 => Some(EarlyEnd::Interrupt),
            _ => None,
        }
    }

    /// Clears a skip once its generation has ended (an interrupt stays).
    pub(crate) fn clear_skip(&self) {
        let _ = self.early.compare_exchange(
            EarlyEnd::Skip as u8,
            0,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// Time since submission.
    pub fn age(&self) -> std::time::Duration {
        self.submitted.elapsed()
    }

    /// Takes the spec to run it (once).
    pub(crate) fn take_spec(&self) -> Option<JobSpec> {
        self.spec.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Changes the status and wakes the watchers.
    pub(crate) fn update(&self, change: impl FnOnce(&mut JobStatus)) {
        self.status.send_modify(change);
    }

    /// Changes the status unless the job has ended (a mirror's late news never reopens it).
    pub(crate) fn update_unless_ended(&self, change: impl FnOnce(&mut JobStatus)) {
        self.status.send_if_modified(|status| {
            if status.state.is_terminal() {
                return false;
            }
            change(status);
            true
        });
    }

    /// Ends the job unless it already ended; returns whether this call ended it.
    pub(crate) fn finish(
        &self,
        state: JobState,
        outputs: Vec<ImageOutput>,
        error: Option<ApiError>,
    ) -> bool {
        self.finish_at(state, outputs, error, crate::clock::unix_seconds())
    }

    /// [`Job::finish`] with the time it ended (Unix seconds).
    pub(crate) fn finish_at(
        &self,
        state: JobState,
        outputs: Vec<ImageOutput>,
        error: Option<ApiError>,
        finished_at: f64,
    ) -> bool {
        let mut ended = false;
        self.status.send_if_modified(|status| {
            if status.state.is_terminal() {
                return false;
            }
            status.state = state;
            status.outputs = Arc::new(outputs);
            status.error = error;
            status.finished_at = Some(finished_at);
            if state == JobState::Succeeded {
                status.step = status.total_steps;
            }
            ended = true;
            true
        });
        if ended {
            self.take_spec();
        }
        ended
    }
}
