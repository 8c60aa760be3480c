//! The jobs the server knows by id: every active job, and the most recent finished ones.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::job::Job;

#[derive(Default)]
struct Inner {
    jobs: HashMap<String, Arc<Job>>,
    finished: VecDeque<String>,
}

/// Jobs by id, forgetting the oldest finished ones beyond `retained`.
pub struct JobStore {
    inner: Mutex<Inner>,
    retained: usize,
    salt: u64,
    counter: AtomicU64,
}

impl JobStore {
    /// An empty store keeping at most `retained` finished jobs.
    pub fn new(retained: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            retained,
            salt: random_u64(),
            counter: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new unique job id.
    pub fn next_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("job-{:08x}{n:08x}", self.salt as u32)
    }

    /// Adds a job.
    pub fn insert(&self, job: Arc<Job>) {
        self.lock().jobs.insert(job.id.clone(), job);
    }

    /// The job with `id`.
    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.lock().jobs.get(id).cloned()
    }

    /// Forgets job `id`.
    pub fn remove(&self, id: &str) {
        let mut inner = self.lock();
        inner.jobs.remove(id);
        inner.finished.retain(|f| f != id);
    }

    /// Records that job `id` ended, forgetting the oldest finished jobs beyond the limit.
    pub fn finished(&self, id: &str) {
        let mut inner = self.lock();
        if !inner.jobs.contains_key(id) {
            return;
        }
        inner.finished.push_back(id.to_string());
        while inner.finished.len() > self.retained {
            if let Some(old) = inner.finished.pop_front() {
                inner.jobs.remove(&old);
            }
        }
    }

    /// Every job not yet ended.
    pub fn active(&self) -> Vec<Arc<Job>> {
        self.lock()
            .jobs
            .values()
            .filter(|job| !job.status().state.is_terminal())
            .cloned()
            .collect()
    }
}

/// 64 random bits from the standard library's randomly keyed hasher.
pub fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    hasher.finish()
}
