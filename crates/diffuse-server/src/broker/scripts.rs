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

#[cfg(test)]
mod tests {
    //! The scripts against a real redis-server (skipped when none is installed, unless `DIFFUSE_REQUIRE_REDIS`).

    use super::*;
    use crate::broker::keys;

    struct Server(std::process::Child);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn connect() -> Option<(Server, redis::Connection)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .stdout(std::process::Stdio::null())
            .spawn();
        let Ok(child) = child else {
            assert!(
                std::env::var_os("DIFFUSE_REQUIRE_REDIS").is_none(),
                "redis-server is not installed"
            );
            eprintln!("skipped: redis-server is not installed");
            return None;
        };
        let server = Server(child);
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
        for _ in 0..200 {
            if let Ok(con) = client.get_connection() {
                return Some((server, con));
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("redis-server did not answer");
    }

    fn submit(con: &mut redis::Connection, id: &str, capacity: usize) -> i64 {
        SUBMIT
            .key(keys::stream("m"))
            .key(keys::job(id))
            .arg(capacity)
            .arg(60)
            .arg(id)
            .arg("state")
            .arg("queued")
            .arg("spec")
            .arg("{}")
            .invoke(con)
            .unwrap()
    }

    fn finish(con: &mut redis::Connection, id: &str, entry: &str, png: &[u8]) -> i64 {
        FINISH
            .key(keys::job(id))
            .key(keys::result(id))
            .key(keys::stream("m"))
            .key(keys::control(id))
            .key(keys::preview(id))
            .arg(60)
            .arg("succeeded")
            .arg(1.0)
            .arg("")
            .arg("[]")
            .arg(keys::GROUP)
            .arg(entry)
            .arg(id)
            .arg("png:0")
            .arg(png)
            .invoke(con)
            .unwrap()
    }

    #[test]
    fn each_change_of_a_job_happens_once() {
        let Some((_server, mut con)) = connect() else {
            return;
        };
        use redis::Commands;
        assert_eq!(submit(&mut con, "a", 2), 0);
        assert_eq!(submit(&mut con, "a", 2), -2, "an id is used once");
        assert_eq!(submit(&mut con, "b", 2), 1);
        assert_eq!(submit(&mut con, "c", 2), -1, "two wait: full");
        // A worker takes `a`; a second start of it (a re-delivery) runs it again; the first result stays.
        let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(keys::GROUP)
            .arg("w1")
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(keys::stream("m"))
            .arg(">")
            .query(&mut con)
            .unwrap();
        let entry = read.keys[0].ids[0].id.clone();
        let start = |con: &mut redis::Connection, id: &str| -> (String, String) {
            START
                .key(keys::job(id))
                .key(keys::control(id))
                .arg(1.0)
                .arg("w1")
                .arg(1)
                .arg(60)
                .arg(id)
                .invoke(con)
                .unwrap()
        };
        assert_eq!(start(&mut con, "a"), ("run".to_string(), "{}".to_string()));
        assert_eq!(start(&mut con, "a").0, "run");
        let heartbeat = |con: &mut redis::Connection, consumer: &str| -> i64 {
            HEARTBEAT
                .key(keys::stream("m"))
                .arg(keys::GROUP)
                .arg(&entry)
                .arg(consumer)
                .invoke(con)
                .unwrap()
        };
        assert_eq!(heartbeat(&mut con, "w1"), 1);
        assert_eq!(heartbeat(&mut con, "w2"), 0, "only the holder renews");
        assert_eq!(finish(&mut con, "a", &entry, b"first"), 1);
        assert_eq!(finish(&mut con, "a", &entry, b"second"), 0);
        let png: Vec<u8> = con.hget(keys::result("a"), "png:0").unwrap();
        assert_eq!(png, b"first");
        assert_eq!(start(&mut con, "a").0, "ended");
        assert_eq!(heartbeat(&mut con, "w1"), 0, "acknowledged");
        // Cancelling a waiting job ends it and takes it out of the stream; a running one is flagged.
        let cancel = |con: &mut redis::Connection, id: &str| -> i64 {
            CANCEL
                .key(keys::job(id))
                .key(keys::control(id))
                .key(keys::stream("m"))
                .arg("requested")
                .arg(2.0)
                .arg("{}")
                .arg(60)
                .arg(id)
                .invoke(con)
                .unwrap()
        };
        assert_eq!(cancel(&mut con, "b"), 2);
        let length: usize = con.xlen(keys::stream("m")).unwrap();
        assert_eq!(length, 0);
        assert_eq!(start(&mut con, "b").0, "ended");
        assert_eq!(cancel(&mut con, "a"), 3, "had ended");
        assert_eq!(cancel(&mut con, "nope"), 0);
        assert_eq!(submit(&mut con, "d", 2), 0);
        assert_eq!(start(&mut con, "d").0, "run");
        assert_eq!(cancel(&mut con, "d"), 1);
        assert_eq!(
            start(&mut con, "d"),
            ("cancelled".to_string(), "requested".to_string())
        );
    }
}
