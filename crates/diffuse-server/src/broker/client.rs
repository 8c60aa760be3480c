//! The API side of the broker: queue a job, read its status and outputs, cancel it, and hear about changes.
//! Every call that cannot reach Redis is the client's 503 (the connection is re-made with backoff).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;

use super::keys;
use super::scripts::{CANCEL, SUBMIT};
use super::stored::{error_json, png_field, wav_field, OutputMeta, StoredJob, STATUS_FIELDS};
use super::wire::WireJob;
use super::{describe, unreachable, BrokerConfig};
use crate::error::{ApiError, ServerError};
use crate::jobs::job::{CancelReason, ImageOutput};
use crate::jobs::spec::JobSpec;

/// What happened to a submission.
pub enum Submitted {
    /// Queued.
    Queued,
    /// The model's stream holds `capacity` waiting jobs.
    Full,
    /// The id is taken (draw another).
    IdTaken,
}

/// One model's stream, as `/health` and `/metrics` report it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamStats {
    /// The model.
    pub model: String,
    /// Entries in the stream: jobs waiting or running.
    pub length: u64,
    /// Jobs delivered to a worker and not yet acknowledged.
    pub pending: u64,
    /// Jobs waiting for a worker.
    pub waiting: u64,
}

/// The broker's state for `/health` and `/metrics`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BrokerStats {
    /// Each served model's stream.
    pub streams: Vec<StreamStats>,
    /// Deliveries taken over from workers that stopped, since the broker's data began.
    pub claimed_total: u64,
    /// Workers that sent a heartbeat in the last minute.
    pub workers_seen: u64,
}

/// Whether the broker answers, and what it holds.
#[derive(Debug, Clone)]
pub enum BrokerHealth {
    /// It answered.
    Reachable(BrokerStats),
    /// It did not: why.
    Unreachable(String),
}

/// A connection to the broker for the API's handlers.
pub struct BrokerClient {
    config: BrokerConfig,
    client: redis::Client,
    manager: ConnectionManager,
}

impl BrokerClient {
    /// A client that connects on first use (and again, with backoff, whenever the connection drops). Must be
    /// called on a Tokio runtime.
    pub fn connect(config: BrokerConfig) -> Result<Self, ServerError> {
        config.validate()?;
        let bad = |e: redis::RedisError| {
            ServerError::Config(format!(
                "--broker {}: {}",
                config.redacted_url(),
                describe(&e)
            ))
        };
        let client = config.client().map_err(bad)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let manager =
            ConnectionManager::new_lazy_with_config(client.clone(), manager_config).map_err(bad)?;
        Ok(Self {
            config,
            client,
            manager,
        })
    }

    /// The settings.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    fn ttl(&self) -> u64 {
        self.config.result_ttl.as_secs().max(1)
    }

    fn fail(&self, error: redis::RedisError) -> ApiError {
        unreachable(&self.config, &error)
    }

    /// Queues job `id` running `spec`, unless `capacity` jobs of its model wait already.
    pub async fn submit(
        &self,
        id: &str,
        spec: &JobSpec,
        total_steps: usize,
        capacity: usize,
    ) -> Result<Submitted, ApiError> {
        let wire = WireJob::of(spec)?;
        let now = crate::clock::unix_seconds().to_string();
        let mut invocation = SUBMIT.prepare_invoke();
        invocation
            .key(keys::stream(&spec.model.name))
            .key(keys::job(id))
            .arg(capacity)
            .arg(self.ttl())
            .arg(id);
        for (field, value) in [
            ("model", spec.model.name.clone()),
            ("prompt", spec.prompt().to_string()),
            ("spec", wire.to_json()),
            ("state", "queued".to_string()),
            ("step", "0".to_string()),
            ("total_steps", total_steps.to_string()),
            ("created_at", now),
        ] {
            invocation.arg(field).arg(value);
        }
        let mut con = self.manager.clone();
        let answer: i64 = invocation
            .invoke_async(&mut con)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(match answer {
            -1 => Submitted::Full,
            -2 => Submitted::IdTaken,
            _ => Submitted::Queued,
        })
    }

    /// Job `id`'s status; `None` when Redis holds no such job (never submitted, or expired).
    pub async fn load(&self, id: &str) -> Result<Option<StoredJob>, ApiError> {
        let mut con = self.manager.clone();
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(keys::job(id))
            .arg(&STATUS_FIELDS[..])
            .query_async(&mut con)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(StoredJob::from_fields(values))
    }

    /// The outputs `meta` describes, with their bytes.
    pub async fn outputs(
        &self,
        id: &str,
        meta: &[OutputMeta],
    ) -> Result<Vec<ImageOutput>, ApiError> {
        let mut con = self.manager.clone();
        let mut fields = Vec::new();
        for (i, m) in meta.iter().enumerate() {
            fields.push(png_field(i));
            if m.wav {
                fields.push(wav_field(i));
            }
        }
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        let mut bytes: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(keys::result(id))
            .arg(&fields)
            .query_async(&mut con)
            .await
            .map_err(|e| self.fail(e))?;
        bytes.reverse();
        let mut outputs = Vec::with_capacity(meta.len());
        for (i, m) in meta.iter().enumerate() {
            let missing =
                || ApiError::internal(format!("job {id}: output {i} is missing from the broker"));
            let png = bytes.pop().flatten().ok_or_else(missing)?;
            let wav = if m.wav {
                Some(bytes.pop().flatten().ok_or_else(missing)?)
            } else {
                None
            };
            outputs.push(ImageOutput {
                png,
                wav,
                seed: m.seed,
                width: m.width,
                height: m.height,
                infotext: m.infotext.clone(),
            });
        }
        Ok(outputs)
    }

    /// Job `id`'s latest preview.
    pub async fn preview(&self, id: &str) -> Result<Option<Vec<u8>>, ApiError> {
        let mut con = self.manager.clone();
        con.get(keys::preview(id)).await.map_err(|e| self.fail(e))
    }

    /// Cancels job `id` for `reason`: a waiting job ends now, a running one at its worker's next step.
    pub async fn cancel(
        &self,
        id: &str,
        model: &str,
        reason: CancelReason,
    ) -> Result<(), ApiError> {
        let mut con = self.manager.clone();
        let _: i64 = CANCEL
            .key(keys::job(id))
            .key(keys::control(id))
            .key(keys::stream(model))
            .arg(reason_name(reason))
            .arg(crate::clock::unix_seconds())
            .arg(error_json(&reason.error()))
            .arg(self.ttl())
            .arg(id)
            .invoke_async(&mut con)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Asks job `id`'s worker to end its current generation now (A1111's skip), or with `then_stop` to end the
    /// job after it (A1111's interrupt).
    pub async fn end_early(&self, id: &str, then_stop: bool) -> Result<(), ApiError> {
        let mut con = self.manager.clone();
        let key = keys::control(id);
        let mut pipe = redis::pipe();
        if then_stop {
            pipe.hset(&key, "interrupt", 1);
        } else {
            pipe.hincr(&key, "skip", 1);
        }
        pipe.expire(&key, self.ttl() as i64);
        let _: () = pipe.query_async(&mut con).await.map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Deletes an ended job and its outputs.
    pub async fn forget(&self, id: &str) -> Result<(), ApiError> {
        let mut con = self.manager.clone();
        let _: () = con
            .del(&[
                keys::job(id),
                keys::result(id),
                keys::preview(id),
                keys::control(id),
            ])
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// The streams of `models`, the claim counter and the workers seen.
    pub async fn stats(&self, models: &[&str]) -> Result<BrokerStats, ApiError> {
        let mut con = self.manager.clone();
        let mut pipe = redis::pipe();
        for model in models {
            let stream = keys::stream(model);
            pipe.cmd("XLEN").arg(&stream);
            // An absent stream or group has nothing pending: `XPENDING` would fail, so its error is read as 0.
            pipe.cmd("EVAL")
                .arg(PENDING)
                .arg(1)
                .arg(&stream)
                .arg(keys::GROUP);
        }
        pipe.cmd("HGET").arg(keys::STATS).arg("claimed");
        let since = crate::clock::unix_seconds() - keys::WORKER_SEEN_SECONDS;
        pipe.cmd("ZCOUNT").arg(keys::WORKERS).arg(since).arg("+inf");
        let values: Vec<redis::Value> =
            pipe.query_async(&mut con).await.map_err(|e| self.fail(e))?;
        let number = |i: usize| {
            values
                .get(i)
                .and_then(|v| redis::from_redis_value::<Option<u64>>(v.clone()).ok())
                .flatten()
                .unwrap_or(0)
        };
        let mut streams = Vec::with_capacity(models.len());
        for (i, model) in models.iter().enumerate() {
            let length = number(2 * i);
            let pending = number(2 * i + 1);
            streams.push(StreamStats {
                model: model.to_string(),
                length,
                pending,
                waiting: length.saturating_sub(pending),
            });
        }
        let tail = 2 * models.len();
        Ok(BrokerStats {
            streams,
            claimed_total: number(tail),
            workers_seen: number(tail + 1),
        })
    }

    /// The broker's state for `/health` and `/metrics`.
    pub async fn health(&self, models: &[&str]) -> BrokerHealth {
        match self.stats(models).await {
            Ok(stats) => BrokerHealth::Reachable(stats),
            Err(e) => BrokerHealth::Unreachable(e.message),
        }
    }

    /// Calls `changed` with the id of every job whose state changes, for as long as the returned task runs;
    /// reconnects with backoff (changes announced while disconnected are caught by the engine's periodic
    /// refresh).
    pub fn listen(
        self: &Arc<Self>,
        changed: impl Fn(String) + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match this.client.get_async_pubsub().await {
                    Ok(mut pubsub) => {
                        if pubsub.subscribe(keys::EVENTS).await.is_ok() {
                            backoff = Duration::from_millis(100);
                            let mut messages = pubsub.on_message();
                            while let Some(message) = messages.next().await {
                                if let Ok(id) = message.get_payload::<String>() {
                                    changed(id);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(
                            "broker {}: cannot listen for job events: {}",
                            this.config.redacted_url(),
                            describe(&e)
                        );
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
    }
}

/// `XPENDING`'s count, or 0 when the stream or group does not exist yet.
const PENDING: &str = r#"
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(p) == 'table' and p.err then return 0 end
return p[1]
"#;

/// How a cancellation reason is stored.
fn reason_name(reason: CancelReason) -> &'static str {
    match reason {
        CancelReason::Requested => "requested",
        CancelReason::ClientGone => "client_gone",
        CancelReason::Shutdown => "shutdown",
    }
}

/// A stored cancellation reason.
pub(crate) fn reason_of(name: &str) -> CancelReason {
    match name {
        "client_gone" => CancelReason::ClientGone,
        "shutdown" => CancelReason::Shutdown,
        _ => CancelReason::Requested,
    }
}
