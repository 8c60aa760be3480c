//! A broker worker: a thread that takes jobs from its models' streams, runs them, publishes their progress,
//! stores their results and acknowledges them. Used by `diffuse worker` and by `diffuse serve --broker
//! --workers N`.
//!
//! Delivery: a job whose worker stopped (no acknowledgement and no heartbeat for `claim_after`) is claimed by
//! another worker (`XAUTOCLAIM`) and runs again from the start with the same seed; after `max_attempts`
//! deliveries it fails instead. Redis being away never fails a job: the worker waits for it, with backoff, and
//! then goes on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::streams::{StreamAutoClaimReply, StreamPendingCountReply, StreamReadReply};
use redis::{Commands, Connection, RedisResult};

use super::client::reason_of;
use super::keys;
use super::scripts::{FINISH, HEARTBEAT, START};
use super::stored::{error_json, outputs_json, png_field, wav_field};
use super::wire::WireJob;
use super::{describe, BrokerConfig};
use crate::config::Limits;
use crate::error::ApiError;
use crate::jobs::job::{CancelReason, EarlyEnd, Job, JobState};
use crate::jobs::log_ended;
use crate::jobs::worker::{execute, Ending};
use crate::metrics::Metrics;
use crate::registry::Registry;

/// How long one read waits for a job before the worker checks whether it should stop.
const READ_BLOCK: Duration = Duration::from_secs(1);

/// What every worker thread of a process shares.
pub struct WorkerContext {
    /// The broker.
    pub broker: BrokerConfig,
    /// The models served (their streams are read).
    pub registry: Arc<Registry>,
    /// The limits jobs are validated against again.
    pub limits: Limits,
    /// Step and job counters.
    pub metrics: Arc<Metrics>,
    /// Set to stop: each worker finishes its current job, then exits.
    pub stop: Arc<AtomicBool>,
}

/// Starts `count` worker threads named after this host and process.
pub fn spawn(context: Arc<WorkerContext>, count: usize) -> std::io::Result<Vec<JoinHandle<()>>> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    (0..count)
        .map(|i| {
            let context = context.clone();
            let name = format!("{host}-{}-{i}", std::process::id());
            std::thread::Builder::new()
                .name(format!("diffuse-worker-{i}"))
                .spawn(move || Worker::new(context, name).run())
        })
        .collect()
}

/// A connection that is made on first use and made again after an error.
struct Link {
    client: redis::Client,
    con: Option<Connection>,
    broker: String,
}

impl Link {
    fn new(broker: &BrokerConfig) -> RedisResult<Self> {
        Ok(Self {
            client: broker.client()?,
            con: None,
            broker: broker.redacted_url(),
        })
    }

    /// Runs `f` on the connection, dropping it on an error so that the next call reconnects.
    fn call<T>(&mut self, f: impl FnOnce(&mut Connection) -> RedisResult<T>) -> RedisResult<T> {
        if self.con.is_none() {
            let con = self
                .client
                .get_connection_with_timeout(Duration::from_secs(2))?;
            con.set_read_timeout(Some(READ_BLOCK + Duration::from_secs(5)))?;
            con.set_write_timeout(Some(Duration::from_secs(5)))?;
            self.con = Some(con);
        }
        let Some(con) = self.con.as_mut() else {
            unreachable!("connected above")
        };
        let result = f(con);
        if result.is_err() {
            self.con = None;
        }
        result
    }

    /// Runs `f` until it succeeds, waiting for Redis with backoff (what it does must not be lost).
    fn call_until_ok<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&mut Connection) -> RedisResult<T>,
    ) -> T {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.call(&mut f) {
                Ok(value) => return value,
                Err(e) => {
                    tracing::warn!(
                        "broker {}: {what}: {}; retrying in {:.1} s",
                        self.broker,
                        describe(&e),
                        backoff.as_secs_f64()
                    );
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// A job delivered to this worker.
struct Delivery {
    stream: String,
    entry: String,
    job: String,
    deliveries: usize,
}

struct Worker {
    context: Arc<WorkerContext>,
    name: String,
    streams: Vec<String>,
    announced: Option<Instant>,
}

impl Worker {
    fn new(context: Arc<WorkerContext>, name: String) -> Self {
        let streams = context
            .registry
            .all()
            .iter()
            .map(|m| keys::stream(&m.name))
            .collect();
        Self {
            context,
            name,
            streams,
            announced: None,
        }
    }

    fn run(mut self) {
        let mut link = match Link::new(&self.context.broker) {
            Ok(link) => link,
            Err(e) => {
                tracing::error!("worker {}: {}", self.name, describe(&e));
                return;
            }
        };
        tracing::info!(
            "worker {} reading {} from {}",
            self.name,
            self.streams.join(", "),
            link.broker
        );
        let mut backoff = Duration::from_millis(100);
        let mut groups_made = false;
        while !self.context.stop.load(Ordering::SeqCst) {
            let step = (|| -> RedisResult<()> {
                if !groups_made {
                    for stream in &self.streams {
                        link.call(|con| make_group(con, stream))?;
                    }
                    groups_made = true;
                }
                self.announce(&mut link)?;
                if let Some(delivery) = self.next_delivery(&mut link)? {
                    self.handle(&mut link, delivery);
                }
                Ok(())
            })();
            match step {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    groups_made = false;
                    tracing::warn!(
                        "worker {}: broker {}: {}; retrying in {:.1} s",
                        self.name,
                        link.broker,
                        describe(&e),
                        backoff.as_secs_f64()
                    );
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::info!("worker {} stopped", self.name);
    }

    /// Records this worker as seen, at most once per heartbeat period.
    fn announce(&mut self, link: &mut Link) -> RedisResult<()> {
        let every = self.context.broker.heartbeat_every();
        if self.announced.is_some_and(|at| at.elapsed() < every) {
            return Ok(());
        }
        let name = self.name.clone();
        link.call(|con| announce(con, &name))?;
        self.announced = Some(Instant::now());
        Ok(())
    }

    /// A job whose worker stopped, else a new one (waiting up to [`READ_BLOCK`]).
    fn next_delivery(&self, link: &mut Link) -> RedisResult<Option<Delivery>> {
        let idle = self.context.broker.claim_after.as_millis() as u64;
        for stream in &self.streams {
            let reply: StreamAutoClaimReply = link.call(|con| {
                redis::cmd("XAUTOCLAIM")
                    .arg(stream)
                    .arg(keys::GROUP)
                    .arg(&self.name)
                    .arg(idle)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(1)
                    .query(con)
            })?;
            if let Some(entry) = reply.claimed.into_iter().next() {
                let job: Option<String> = entry.get("job");
                link.call(|con| con.hincr::<_, _, _, ()>(keys::STATS, "claimed", 1))?;
                tracing::warn!(
                    "worker {}: took over job {} from a worker that stopped",
                    self.name,
                    job.as_deref().unwrap_or("?")
                );
                return self.delivery(link, stream, entry.id, job).map(Some);
            }
        }
        let reply: Option<StreamReadReply> = link.call(|con| {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(keys::GROUP)
                .arg(&self.name)
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(READ_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.streams);
            for _ in &self.streams {
                cmd.arg(">");
            }
            cmd.query(con)
        })?;
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            if let Some(entry) = key.ids.into_iter().next() {
                let job: Option<String> = entry.get("job");
                return self.delivery(link, &key.key, entry.id, job).map(Some);
            }
        }
        Ok(None)
    }

    fn delivery(
        &self,
        link: &mut Link,
        stream: &str,
        entry: String,
        job: Option<String>,
    ) -> RedisResult<Delivery> {
        let pending: StreamPendingCountReply = link.call(|con| {
            redis::cmd("XPENDING")
                .arg(stream)
                .arg(keys::GROUP)
                .arg(&entry)
                .arg(&entry)
                .arg(1)
                .query(con)
        })?;
        let deliveries = pending.ids.first().map(|p| p.times_delivered).unwrap_or(1);
        Ok(Delivery {
            stream: stream.to_string(),
            entry,
            job: job.unwrap_or_default(),
            deliveries,
        })
    }

    /// Runs (or refuses) one delivered job and acknowledges it.
    fn handle(&self, link: &mut Link, delivery: Delivery) {
        let max = self.context.broker.max_attempts as usize;
        if delivery.deliveries > max {
            let error = ApiError::internal(format!(
                "job {} was started {} times and every worker running it stopped before it ended; it is not \
                 retried again (the broker's max attempts is {max})",
                delivery.job,
                delivery.deliveries - 1
            ));
            tracing::error!("{}", error.message);
            self.finish(link, &delivery, (JobState::Failed, Vec::new(), Some(error)));
            return;
        }
        let ttl = self.context.broker.result_ttl.as_secs().max(1);
        let (verdict, detail): (String, String) = link.call_until_ok("starting a job", |con| {
            START
                .key(keys::job(&delivery.job))
                .key(keys::control(&delivery.job))
                .arg(crate::clock::unix_seconds())
                .arg(&self.name)
                .arg(delivery.deliveries)
                .arg(ttl)
                .arg(&delivery.job)
                .invoke(con)
        });
        let ending = match verdict.as_str() {
            "run" => match WireJob::decode(&detail, &self.context.registry, &self.context.limits) {
                Ok(spec) => match self.run_job(&delivery, spec) {
                    Some(ending) => ending,
                    // Another worker holds the job now; its outcome is theirs to store.
                    None => return,
                },
                Err(error) => {
                    tracing::warn!("job {} refused: {}", delivery.job, error.message);
                    (JobState::Failed, Vec::new(), Some(error))
                }
            },
            "cancelled" => (
                JobState::Cancelled,
                Vec::new(),
                Some(reason_of(&detail).error()),
            ),
            // Ended or gone: nothing to run; the delivery is only acknowledged.
            _ => (JobState::Cancelled, Vec::new(), None),
        };
        self.finish(link, &delivery, ending);
    }

    /// Runs a job with a heartbeat beside it; `None` when another worker took it over meanwhile.
    fn run_job(&self, delivery: &Delivery, spec: crate::jobs::spec::JobSpec) -> Option<Ending> {
        let job = Job::new(delivery.job.clone(), spec);
        job.update(|s| {
            s.state = JobState::Running;
            s.started_at = Some(crate::clock::unix_seconds());
        });
        let Some(spec) = job.take_spec() else {
            unreachable!("a new job holds its spec")
        };
        let lost = AtomicBool::new(false);
        let done = AtomicBool::new(false);
        let ending = std::thread::scope(|scope| {
            scope.spawn(|| self.heartbeat(delivery, &lost, &done));
            let mut progress = StepSync::new(&self.context.broker, delivery, &lost);
            let ending = execute(&self.context.metrics, &job, spec, &mut |job| {
                progress.publish(job)
            });
            done.store(true, Ordering::SeqCst);
            ending
        });
        if lost.load(Ordering::SeqCst) {
            tracing::warn!(
                "worker {}: job {} was taken over by another worker; leaving it to them",
                self.name,
                delivery.job
            );
            return None;
        }
        log_ended(&job, ending.0, ending.1.len(), ending.2.as_ref());
        self.context.metrics.job_finished(
            crate::jobs::worker::outcome(ending.0),
            job.age(),
            ending.1.len(),
        );
        Some(ending)
    }

    /// Renews the claim on the running job until `done`; sets `lost` if another worker holds it now.
    fn heartbeat(&self, delivery: &Delivery, lost: &AtomicBool, done: &AtomicBool) {
        let Ok(mut link) = Link::new(&self.context.broker) else {
            return;
        };
        let every = self.context.broker.heartbeat_every();
        let mut last = Instant::now();
        while !done.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
            if last.elapsed() < every {
                continue;
            }
            last = Instant::now();
            let held: RedisResult<i64> = link.call(|con| {
                announce(con, &self.name)?;
                HEARTBEAT
                    .key(&delivery.stream)
                    .arg(keys::GROUP)
                    .arg(&delivery.entry)
                    .arg(&self.name)
                    .invoke(con)
            });
            match held {
                Ok(0) => {
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!("heartbeat of job {}: {}", delivery.job, describe(&e)),
            }
        }
    }

    /// Stores the outcome (once per job) and acknowledges the delivery, waiting for Redis if it is away.
    fn finish(&self, link: &mut Link, delivery: &Delivery, (state, outputs, error): Ending) {
        let ttl = self.context.broker.result_ttl.as_secs().max(1);
        let finished_at = crate::clock::unix_seconds();
        let error_text = error.as_ref().map(error_json).unwrap_or_default();
        let meta = outputs_json(&outputs);
        let stored: i64 = link.call_until_ok("storing a job's result", |con| {
            let mut invocation = FINISH.prepare_invoke();
            invocation
                .key(keys::job(&delivery.job))
                .key(keys::result(&delivery.job))
                .key(&delivery.stream)
                .key(keys::control(&delivery.job))
                .key(keys::preview(&delivery.job))
                .arg(ttl)
                .arg(state.as_str())
                .arg(finished_at)
                .arg(&error_text)
                .arg(&meta)
                .arg(keys::GROUP)
                .arg(&delivery.entry)
                .arg(&delivery.job);
            for (i, output) in outputs.iter().enumerate() {
                invocation.arg(png_field(i)).arg(&output.png);
                if let Some(wav) = &output.wav {
                    invocation.arg(wav_field(i)).arg(wav);
                }
            }
            invocation.invoke::<i64>(con)
        });
        if stored == 0 && state == JobState::Succeeded {
            tracing::warn!(
                "job {} had already ended (another worker stored its result); this run's result is discarded",
                delivery.job
            );
        }
    }
}

/// Publishes a running job's progress and preview, and brings its clients' requests (cancel, skip, interrupt)
/// to it, at every step. Redis being away only delays this: the job runs on.
struct StepSync<'a> {
    link: Option<Link>,
    job: &'a str,
    ttl: u64,
    lost: &'a AtomicBool,
    preview: Option<Arc<Vec<u8>>>,
    skips_seen: u64,
}

impl<'a> StepSync<'a> {
    fn new(broker: &BrokerConfig, delivery: &'a Delivery, lost: &'a AtomicBool) -> Self {
        Self {
            link: Link::new(broker).ok(),
            job: &delivery.job,
            ttl: broker.result_ttl.as_secs().max(1),
            lost,
            preview: None,
            skips_seen: 0,
        }
    }

    fn publish(&mut self, job: &Job) {
        if self.lost.load(Ordering::SeqCst) {
            job.request_cancel(CancelReason::Requested);
            return;
        }
        let status = job.status();
        let new_preview = status
            .preview
            .as_ref()
            .filter(|p| {
                !self
                    .preview
                    .as_ref()
                    .is_some_and(|seen| Arc::ptr_eq(seen, p))
            })
            .cloned();
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let id = self.job;
        let ttl = self.ttl;
        let control: RedisResult<(Option<String>, Option<u64>, Option<u64>)> = link.call(|con| {
            let mut pipe = redis::pipe();
            pipe.hset_multiple(
                keys::job(id),
                &[
                    ("step", status.step.to_string()),
                    ("total_steps", status.total_steps.to_string()),
                ],
            )
            .ignore();
            if let Some(png) = &new_preview {
                pipe.set_ex(keys::preview(id), png.as_slice(), ttl)
                    .ignore()
                    .hincr(keys::job(id), "preview_seq", 1)
                    .ignore();
            }
            pipe.publish(keys::EVENTS, id).ignore();
            pipe.cmd("HMGET")
                .arg(keys::control(id))
                .arg("cancel")
                .arg("skip")
                .arg("interrupt");
            let (control,): ((Option<String>, Option<u64>, Option<u64>),) = pipe.query(con)?;
            Ok(control)
        });
        match control {
            Ok((cancel, skips, interrupt)) => {
                if new_preview.is_some() {
                    self.preview = new_preview;
                }
                if let Some(reason) = cancel {
                    job.request_cancel(reason_of(&reason));
                }
                if interrupt.is_some() {
                    job.request_early_end(true);
                }
                let skips = skips.unwrap_or(0);
                if skips > self.skips_seen {
                    self.skips_seen = skips;
                    if job.early_end() != Some(EarlyEnd::Interrupt) {
                        job.request_early_end(false);
                    }
                }
            }
            Err(e) => tracing::debug!("progress of job {id}: {}", describe(&e)),
        }
    }
}

/// Creates `stream` and its consumer group if they do not exist.
fn make_group(con: &mut Connection, stream: &str) -> RedisResult<()> {
    let made: RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(keys::GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query(con);
    match made {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Records `name` as seen now, and forgets workers not seen for a day (each process has a name of its own).
fn announce(con: &mut Connection, name: &str) -> RedisResult<()> {
    let now = crate::clock::unix_seconds();
    redis::pipe()
        .zadd(keys::WORKERS, name, now)
        .ignore()
        .zrembyscore(keys::WORKERS, "-inf", now - keys::WORKER_FORGOTTEN_SECONDS)
        .ignore()
        .query(con)
}
