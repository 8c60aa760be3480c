//! Counters and histograms for `GET /metrics`, in the Prometheus text format.

use crate::broker::client::{BrokerHealth, StreamStats};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A histogram with fixed buckets (seconds).
struct Histogram {
    bounds: &'static [f64],
    state: Mutex<HistogramState>,
}

#[derive(Default)]
struct HistogramState {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            state: Mutex::new(HistogramState {
                counts: vec![0; bounds.len()],
                ..Default::default()
            }),
        }
    }

    fn observe(&self, seconds: f64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (bound, count) in self.bounds.iter().zip(state.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        state.sum += seconds;
        state.count += 1;
    }

    fn mean(&self) -> Option<f64> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (state.count > 0).then(|| state.sum / state.count as f64)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in self.bounds.iter().zip(&state.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", state.count);
        let _ = writeln!(out, "{name}_sum {}", state.sum);
        let _ = writeln!(out, "{name}_count {}", state.count);
    }
}

const STEP_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const JOB_BOUNDS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// How a job ended, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Images produced.
    Succeeded,
    /// The request or the server failed.
    Failed,
    /// Cancelled by a client, an interrupt or shutdown.
    Cancelled,
}

/// Everything `/metrics` reports besides the gauges read at render time.
pub struct Metrics {
    submitted: AtomicU64,
    rejected_full: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    images: AtomicU64,
    steps: Histogram,
    jobs: Histogram,
    responses: Mutex<BTreeMap<u16, u64>>,
}

/// Values read at render time.
pub struct Gauges {
    /// Jobs waiting for a worker.
    pub queue_depth: usize,
    /// The queue's capacity.
    pub queue_capacity: usize,
    /// Jobs being generated.
    pub running: usize,
    /// Worker threads.
    pub workers: usize,
    /// Loaded models.
    pub models: usize,
    /// The broker, when jobs go through one.
    pub broker: Option<BrokerHealth>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            submitted: AtomicU64::new(0),
            rejected_full: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            images: AtomicU64::new(0),
            steps: Histogram::new(STEP_BOUNDS),
            jobs: Histogram::new(JOB_BOUNDS),
            responses: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Metrics {
    /// A job was accepted into the queue.
    pub fn job_submitted(&self) {
        self.submitted.fetch_add(1, Ordering::Relaxed);
    }

    /// A job was refused because the queue was full.
    pub fn job_rejected(&self) {
        self.rejected_full.fetch_add(1, Ordering::Relaxed);
    }

    /// A job ended after `elapsed` (from submission) with `images` images.
    pub fn job_finished(&self, outcome: Outcome, elapsed: Duration, images: usize) {
        let counter = match outcome {
            Outcome::Succeeded => &self.succeeded,
            Outcome::Failed => &self.failed,
            Outcome::Cancelled => &self.cancelled,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.images.fetch_add(images as u64, Ordering::Relaxed);
        self.jobs.observe(elapsed.as_secs_f64());
    }

    /// One denoising step took `elapsed`.
    pub fn step(&self, elapsed: Duration) {
        self.steps.observe(elapsed.as_secs_f64());
    }

    /// A response with `status` was sent.
    pub fn response(&self, status: u16) {
        let mut map = self.responses.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(status).or_default() += 1;
    }

    /// The mean time of the jobs ended so far, if any.
    pub fn mean_job_seconds(&self) -> Option<f64> {
        self.jobs.mean()
    }

    /// The Prometheus text exposition.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let gauge_rows = [
            (
                "diffuse_queue_depth",
                "Jobs waiting for a worker.",
                gauges.queue_depth,
            ),
            (
                "diffuse_queue_capacity",
                "Jobs the queue holds before answering 429.",
                gauges.queue_capacity,
            ),
            (
                "diffuse_jobs_running",
                "Jobs being generated.",
                gauges.running,
            ),
            ("diffuse_workers", "Generation threads.", gauges.workers),
            ("diffuse_models_loaded", "Models loaded.", gauges.models),
        ];
        for (name, help, value) in gauge_rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP diffuse_jobs_submitted_total Jobs accepted into the queue.\n\
             # TYPE diffuse_jobs_submitted_total counter\n\
             diffuse_jobs_submitted_total {}",
            load(&self.submitted)
        );
        let _ = writeln!(
            out,
            "# HELP diffuse_jobs_rejected_total Jobs refused with 429 because the queue was full.\n\
             # TYPE diffuse_jobs_rejected_total counter\n\
             diffuse_jobs_rejected_total {}",
            load(&self.rejected_full)
        );
        let _ = writeln!(
            out,
            "# HELP diffuse_jobs_finished_total Jobs that ended, by outcome.\n\
             # TYPE diffuse_jobs_finished_total counter"
        );
        for (outcome, counter) in [
            ("succeeded", &self.succeeded),
            ("failed", &self.failed),
            ("cancelled", &self.cancelled),
        ] {
            let _ = writeln!(
                out,
                "diffuse_jobs_finished_total{{outcome=\"{outcome}\"}} {}",
                load(counter)
            );
        }
        let _ = writeln!(
            out,
            "# HELP diffuse_images_generated_total Images produced.\n\
             # TYPE diffuse_images_generated_total counter\n\
             diffuse_images_generated_total {}",
            load(&self.images)
        );
        self.steps.render(
            &mut out,
            "diffuse_step_seconds",
            "Time of one denoising step.",
        );
        self.jobs.render(
            &mut out,
            "diffuse_job_seconds",
            "Time from submission to the end of a job.",
        );
        if let Some(broker) = &gauges.broker {
            render_broker(&mut out, broker);
        }
        let _ = writeln!(
            out,
            "# HELP diffuse_http_responses_total HTTP responses, by status.\n\
             # TYPE diffuse_http_responses_total counter"
        );
        let responses = self.responses.lock().unwrap_or_else(|e| e.into_inner());
        for (status, count) in responses.iter() {
            let _ = writeln!(
                out,
                "diffuse_http_responses_total{{code=\"{status}\"}} {count}"
            );
        }
        out
    }
}

/// The broker's rows: whether it answers, each model's stream, claims and workers seen.
fn render_broker(out: &mut String, broker: &BrokerHealth) {
    let up = matches!(broker, BrokerHealth::Reachable(_)) as u8;
    let _ = writeln!(
        out,
        "# HELP diffuse_broker_up Whether the job broker answered.\n# TYPE diffuse_broker_up gauge\n\
         diffuse_broker_up {up}"
    );
    let BrokerHealth::Reachable(stats) = broker else {
        return;
    };
    for (name, help, pick) in [
        (
            "diffuse_broker_stream_length",
            "Jobs in a model's stream (waiting or running).",
            (|s: &StreamStats| s.length) as fn(&StreamStats) -> u64,
        ),
        (
            "diffuse_broker_waiting",
            "Jobs of a model waiting for a worker.",
            |s| s.waiting,
        ),
        (
            "diffuse_broker_pending",
            "Jobs of a model delivered to a worker and not yet acknowledged.",
            |s| s.pending,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for stream in &stats.streams {
            let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", stream.model, pick(stream));
        }
    }
    let _ = writeln!(
        out,
        "# HELP diffuse_broker_claimed_total Jobs taken over from workers that stopped.\n\
         # TYPE diffuse_broker_claimed_total counter\ndiffuse_broker_claimed_total {}\n\
         # HELP diffuse_broker_workers_seen Workers that sent a heartbeat in the last minute.\n\
         # TYPE diffuse_broker_workers_seen gauge\ndiffuse_broker_workers_seen {}",
        stats.claimed_total, stats.workers_seen
    );
}
