//! The bounded queue between request handlers and worker threads.
//!
//! Handlers push without blocking (a full queue is the caller's 429); workers block until a job arrives or the
//! queue is closed. A queued job can be taken out again when it is cancelled before it starts.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

use super::job::Job;

/// Why a push failed.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds `capacity` jobs.
    Full,
    /// The server is shutting down.
    Closed,
}

struct Inner {
    jobs: VecDeque<Arc<Job>>,
    closed: bool,
}

/// A bounded FIFO of jobs.
pub struct JobQueue {
    inner: Mutex<Inner>,
    ready: Condvar,
    capacity: usize,
}

impl JobQueue {
    /// An empty queue holding at most `capacity` jobs.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                jobs: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `job` unless the queue is full or closed.
    pub fn push(&self, job: Arc<Job>) -> Result<(), PushError> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(PushError::Closed);
        }
        if inner.jobs.len() >= self.capacity {
            return Err(PushError::Full);
        }
        inner.jobs.push_back(job);
        drop(inner);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job, waiting for one; `None` once the queue is closed.
    pub fn pop(&self) -> Option<Arc<Job>> {
        let mut inner = self.lock();
        loop {
            if inner.closed {
                return None;
            }
            if let Some(job) = inner.jobs.pop_front() {
                return Some(job);
            }
            inner = self.ready.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Takes job `id` out if it is still waiting; returns whether it was.
    pub fn remove(&self, id: &str) -> bool {
        let mut inner = self.lock();
        let before = inner.jobs.len();
        inner.jobs.retain(|job| job.id != id);
        inner.jobs.len() != before
    }

    /// Job `id`'s place in line (0 = next), if it is waiting.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.lock().jobs.iter().position(|job| job.id == id)
    }

    /// Jobs waiting.
    pub fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    /// Whether no job is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most jobs it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Refuses further pushes, wakes every worker, and returns the jobs that were waiting.
    pub fn close(&self) -> Vec<Arc<Job>> {
        let mut inner = self.lock();
        inner.closed = true;
        let waiting = inner.jobs.drain(..).collect();
        drop(inner);
        self.ready.notify_all();
        waiting
    }
}
