//! The Lua scripts that make each change of a job atomic in Redis, so that servers and workers racing on one job
//! (a cancel against a start, two workers finishing the same job) leave it in one consistent state.

use std::sync::LazyLock;

use redis::Script;

/// Queues a job unless its model's stream has `capacity` jobs waiting.
/// KEYS: stream, job. ARGV: capacity, ttl seconds, job id, then the hash's field/value pairs.
/// Returns the jobs waiting before it, -1 when full, -2 when the id is taken.
pub static SUBMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return -2 end
local pending = redis.pcall('XPENDING', KEYS[1], 'diffuse-workers')
if type(pending) == 'table' and pending.err then
  redis.call('XGROUP', 'CREATE', KEYS[1], 'diffuse-workers', '0', 'MKSTREAM')
  pending = {0}
end
local waiting = redis.call('XLEN', KEYS[1]) - pending[1]
if waiting >= tonumber(ARGV[1]) then return -1 end
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
local entry = redis.call('XADD', KEYS[1], '*', 'job', ARGV[3])
redis.call('HSET', KEYS[2], 'stream_id', entry)
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('PUBLISH', 'diffuse:events', ARGV[3])
return waiting
"#,
    )
});

/// A worker takes up a delivered job: it runs only if it is still queued or running (a re-delivery) and not
/// cancelled. KEYS: job, control. ARGV: now, worker, attempt, ttl seconds, job id.
/// Returns `{"run", spec}`, `{"cancelled", reason}`, `{"ended", ""}` or `{"gone", ""}`.
pub static START: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'gone', ''} end
if state ~= 'queued' and state ~= 'running' then return {'ended', ''} end
local cancel = redis.call('HGET', KEYS[2], 'cancel')
if cancel then return {'cancelled', cancel} end
redis.call('HSET', KEYS[1], 'state', 'running', 'started_at', ARGV[1], 'worker', ARGV[2],
  'attempt', ARGV[3], 'step', '0')
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', 'diffuse:events', ARGV[5])
return {'run', redis.call('HGET', KEYS[1], 'spec')}
"#,
    )
});

/// Ends a job once and acknowledges its delivery: the outcome is written only while the job has not ended, so a
/// job that ran twice keeps its first result. KEYS: job, result, stream, control, preview. ARGV: ttl seconds,
/// state, finished_at, error JSON, outputs JSON, group, stream entry, job id, then the result's field/value
/// pairs. Returns 1 when this call ended the job.
pub static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('XACK', KEYS[3], ARGV[6], ARGV[7])
redis.call('XDEL', KEYS[3], ARGV[7])
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 0 end
if state ~= 'queued' and state ~= 'running' then return 0 end
if #ARGV > 8 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 9))
  redis.call('EXPIRE', KEYS[2], ARGV[1])
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'finished_at', ARGV[3], 'error', ARGV[4], 'outputs', ARGV[5])
if ARGV[2] == 'succeeded' then
  local total = redis.call('HGET', KEYS[1], 'total_steps')
  if total then redis.call('HSET', KEYS[1], 'step', total) end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[4], ARGV[1])
redis.call('EXPIRE', KEYS[5], ARGV[1])
redis.call('PUBLISH', 'diffuse:events', ARGV[8])
return 1
"#,
    )
});

/// Cancels a job: a queued one ends now (and leaves its stream), a running one is flagged for its worker.
/// KEYS: job, control, stream. ARGV: reason, now, error JSON, ttl seconds, job id.
/// Returns 2 (ended now), 1 (flagged), 3 (had ended) or 0 (no such job).
pub static CANCEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 0 end
if state == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[2], 'error', ARGV[3])
  local entry = redis.call('HGET', KEYS[1], 'stream_id')
  if entry then redis.call('XDEL', KEYS[3], entry) end
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('PUBLISH', 'diffuse:events', ARGV[5])
  return 2
end
if state == 'running' then
  redis.call('HSETNX', KEYS[2], 'cancel', ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
  return 1
end
return 3
"#,
    )
});

/// Renews a worker's claim on the job it runs (resetting the entry's idle time without counting a delivery),
/// if it still holds it. KEYS: stream. ARGV: group, entry, consumer. Returns 1 while it holds it, else 0.
pub static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
"#,
    )
});
