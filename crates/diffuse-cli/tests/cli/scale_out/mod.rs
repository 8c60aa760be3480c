//! Scale-out through Redis (`diffuse serve --broker`, `diffuse worker`) against a real redis-server: the same
//! images as in-process, no job lost when a worker, a server or Redis goes away, one stored result per job,
//! cancellation and events across servers, a bounded number of attempts, and a password that never shows.

mod cluster;

use std::time::Duration;

use cluster::{
    http, images, job, redis_available, submit, wait_for_end, wait_until, Process, Redis,
};
use serde_json::json;

const MINUTE: Duration = Duration::from_secs(60);

/// A native job: one 64×64 image of `prompt` in `steps` steps, seeded.
fn body(prompt: &str, seed: u64, steps: usize) -> serde_json::Value {
    json!({"prompt": prompt, "seed": seed, "steps": steps})
}

/// A job that runs for seconds (150 steps at 128×128), long enough to be interrupted.
fn long_body(prompt: &str, seed: u64) -> serde_json::Value {
    json!({"prompt": prompt, "seed": seed, "steps": 150, "width": 128, "height": 128})
}

/// Waits until job `id` runs and has made `steps` steps.
fn wait_running(addr: &str, id: &str, steps: u64) {
    wait_until(&format!("job {id} runs"), MINUTE, || {
        let j = job(addr, id);
        j["state"] == "running" && j["progress"]["step"].as_u64().unwrap_or(0) >= steps
    });
}

/// The images of `bodies` run one after another by an in-process server.
fn in_process_images(bodies: &[serde_json::Value]) -> Vec<Vec<Vec<u8>>> {
    let server = Process::serve(&[]);
    let ids: Vec<String> = bodies
        .iter()
        .map(|b| submit(&server.addr, b.clone()))
        .collect();
    ids.iter()
        .map(|id| {
            assert_eq!(wait_for_end(&server.addr, id, MINUTE)["state"], "succeeded");
            images(&server.addr, id)
        })
        .collect()
}

#[test]
fn brokered_jobs_give_the_in_process_images() {
    if !redis_available("brokered_jobs_give_the_in_process_images") {
        return;
    }
    let bodies = [
        body("a red cube", 1, 4),
        json!({"prompt": "a blue ball", "seed": 2, "steps": 3, "n": 2}),
        json!({"prompt": "a green cone", "seed": 3, "steps": 3, "scheduler": "Euler a"}),
    ];
    let expected = in_process_images(&bodies);
    let redis = Redis::start(None);
    let url = redis.url();
    let server = Process::serve(&["--broker", &url, "--workers", "0"]);
    let _workers = [
        Process::worker(&["--broker", &url]),
        Process::worker(&["--broker", &url]),
    ];
    let ids: Vec<String> = bodies
        .iter()
        .map(|b| submit(&server.addr, b.clone()))
        .collect();
    for (id, expected) in ids.iter().zip(&expected) {
        let ended = wait_for_end(&server.addr, id, MINUTE);
        assert_eq!(ended["state"], "succeeded", "{ended}");
        assert_eq!(&images(&server.addr, id), expected, "job {id}");
    }
    // A1111's synchronous endpoint through the broker: per-image seeds, images in the answer.
    let answer = http(
        &server.addr,
        "POST",
        "/sdapi/v1/txt2img",
        Some(
            &json!({"prompt": "a cat", "seed": 9, "steps": 3, "batch_size": 2, "width": 64, "height": 64}),
        ),
    );
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.json()["images"].as_array().unwrap().len(), 2);
    // Jobs written into Redis by anyone but the API are validated again by the worker, and fail naming why.
    for (id, spec, why) in [
        (
            "job-forged-path",
            r#"{"model":"sd1","path":"/etc/passwd"}"#,
            "unknown field `path`",
        ),
        (
            "job-forged-steps",
            r#"{"model":"sd1","model_hash":null,"work":{"kind":"image","prompt":"x","negative_prompt":"","steps":100000,"guidance_scale":7.5,"guidance_rescale":0.0,"clip_skip":null,"width":64,"height":64,"eta":0.0,"scheduler":null,"init":null,"plain_prompt":false,"loras":[]},"images":1,"seed":1,"seed_mode":"batch","rng":"cpu"}"#,
            "100000: must be from 1 to 150",
        ),
    ] {
        let key = format!("diffuse:job:{id}");
        redis.cli(&[
            "HSET", &key, "model", "sd1", "prompt", "x", "state", "queued", "spec", spec,
        ]);
        redis.cli(&["XADD", "diffuse:stream:sd1", "*", "job", id]);
        let ended = wait_for_end(&server.addr, id, MINUTE);
        assert_eq!(ended["state"], "failed", "{ended}");
        let message = ended["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{message}");
    }
    let health = http(&server.addr, "GET", "/health", None).json();
    assert_eq!(health["broker"]["state"], "ok", "{health}");
    assert_eq!(health["broker"]["workers_seen"], 2, "{health}");
    let metrics = String::from_utf8(http(&server.addr, "GET", "/metrics", None).body).unwrap();
    for line in [
        "diffuse_broker_up 1",
        "diffuse_broker_stream_length{model=\"sd1\"} 0",
        "diffuse_broker_pending{model=\"sd1\"} 0",
        "diffuse_broker_claimed_total 0",
        "diffuse_broker_workers_seen 2",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in:\n{metrics}"
        );
    }
}

#[test]
fn a_worker_with_another_checkpoint_under_the_name_refuses_the_job() {
    if !redis_available("a_worker_with_another_checkpoint_under_the_name_refuses_the_job") {
        return;
    }
    let redis = Redis::start(None);
    let url = redis.url();
    let server = Process::serve(&["--broker", &url, "--workers", "0"]);
    // `Process` names its model sd1=…/sd1; this worker's first --model takes the name for the SD 2 fixture.
    let other = cluster::sd1().with_file_name("sd2");
    let other = format!("sd1={}", other.display());
    let _worker = Process::worker_with_model(&other, &["--broker", &url]);
    let id = submit(&server.addr, body("a lamp", 90, 3));
    let ended = wait_for_end(&server.addr, &id, MINUTE);
    assert_eq!(ended["state"], "failed", "{ended}");
    let message = ended["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("give servers and workers the same checkpoint"),
        "{message}"
    );
}

#[test]
fn finished_jobs_expire_after_the_result_ttl() {
    if !redis_available("finished_jobs_expire_after_the_result_ttl") {
        return;
    }
    let redis = Redis::start(None);
    let url = redis.url();
    let server = Process::serve(&["--broker", &url, "--workers", "1", "--result-ttl", "2"]);
    let id = submit(&server.addr, body("a moth", 80, 3));
    assert_eq!(
        wait_for_end(&server.addr, &id, MINUTE)["state"],
        "succeeded"
    );
    let key = format!("diffuse:job:{id}");
    let ttl: i64 = redis.cli(&["TTL", &key]).parse().unwrap();
    assert!((1..=2).contains(&ttl), "TTL {ttl}");
    wait_until("the job expires", MINUTE, || {
        redis.cli(&["EXISTS", &key]) == "0"
            && redis.cli(&["EXISTS", &format!("{key}:result")]) == "0"
    });
    let other = Process::serve(&["--broker", &url, "--workers", "0"]);
    let answer = http(&other.addr, "GET", &format!("/v1/jobs/{id}"), None);
    assert_eq!(answer.status, 404);
}

#[test]
fn a_killed_worker_s_job_completes_once_on_another() {
    if !redis_available("a_killed_worker_s_job_completes_once_on_another") {
        return;
    }
    let request = long_body("a lighthouse", 21);
    let expected = in_process_images(std::slice::from_ref(&request));
    let redis = Redis::start(None);
    let url = redis.url();
    let server = Process::serve(&["--broker", &url, "--workers", "0"]);
    let mut first = Process::worker(&["--broker", &url, "--claim-after", "1"]);
    let id = submit(&server.addr, request);
    wait_running(&server.addr, &id, 3);
    first.kill();
    let second = Process::worker(&["--broker", &url, "--claim-after", "1"]);
    let ended = wait_for_end(&server.addr, &id, 2 * MINUTE);
    assert_eq!(ended["state"], "succeeded", "{ended}");
    assert_eq!(
        images(&server.addr, &id),
        expected[0],
        "the re-run gives the same image"
    );
    assert!(
        second.log().contains(&format!("took over job {id}")),
        "{}",
        second.log()
    );
    let job_key = format!("diffuse:job:{id}");
    assert_eq!(redis.cli(&["HGET", &job_key, "attempt"]), "2");
    assert_eq!(redis.cli(&["HLEN", &format!("{job_key}:result")]), "1");
    let health = http(&server.addr, "GET", "/health", None).json();
    assert_eq!(health["broker"]["claimed_total"], 1, "{health}");
    assert_eq!(
        health["broker"]["streams"][0]["length"], 0,
        "acknowledged: {health}"
    );
}

#[test]
fn a_job_that_runs_twice_keeps_one_result() {
    if !redis_available("a_job_that_runs_twice_keeps_one_result") {
        return;
    }
    let request = long_body("a windmill", 22);
    let expected = in_process_images(std::slice::from_ref(&request));
    let redis = Redis::start(None);
    let url = redis.url();
    let server = Process::serve(&["--broker", &url, "--workers", "0"]);
    let stalled = Process::worker(&["--broker", &url, "--claim-after", "1"]);
    let id = submit(&server.addr, request);
    wait_running(&server.addr, &id, 3);
    // The first worker stalls (no heartbeats); the second takes the job over and finishes it.
    stalled.pause();
    let _second = Process::worker(&["--broker", &url, "--claim-after", "1"]);
    let ended = wait_for_end(&server.addr, &id, 2 * MINUTE);
    assert_eq!(ended["state"], "succeeded", "{ended}");
    let finished_at = redis.cli(&["HGET", &format!("diffuse:job:{id}"), "finished_at"]);
    // The first wakes up, finds the job is another's (or already ended) and stores nothing.
    stalled.resume();
    wait_until("the stalled worker gives the job up", MINUTE, || {
        let log = stalled.log();
        log.contains(&format!("job {id} was taken over")) || log.contains("result is discarded")
    });
    assert_eq!(images(&server.addr, &id), expected[0]);
    let job_key = format!("diffuse:job:{id}");
    assert_eq!(redis.cli(&["HGET", &job_key, "finished_at"]), finished_at);
    assert_eq!(redis.cli(&["HLEN", &format!("{job_key}:result")]), "1");
}

#[test]
fn queued_and_finished_jobs_outlive_a_server_restart() {
    if !redis_available("queued_and_finished_jobs_outlive_a_server_restart") {
        return;
    }
    let redis = Redis::start(None);
    let url = redis.url();
    let mut server = Process::serve(&["--broker", &url, "--workers", "0"]);
    let mut worker = Process::worker(&["--broker", &url]);
    let done = submit(&server.addr, body("a boat", 5, 3));
    assert_eq!(
        wait_for_end(&server.addr, &done, MINUTE)["state"],
        "succeeded"
    );
    let done_images = images(&server.addr, &done);
    assert!(worker.terminate().success());
    let queued: Vec<String> = (0..3)
        .map(|i| submit(&server.addr, body("a tree", 30 + i, 3)))
        .collect();
    server.kill();
    let restarted = Process::serve(&["--broker", &url, "--workers", "0"]);
    assert_eq!(job(&restarted.addr, &queued[0])["state"], "queued");
    assert_eq!(images(&restarted.addr, &done), done_images);
    let _worker = Process::worker(&["--broker", &url]);
    for id in &queued {
        assert_eq!(
            wait_for_end(&restarted.addr, id, MINUTE)["state"],
            "succeeded"
        );
        assert_eq!(images(&restarted.addr, id).len(), 1);
    }
}

#[test]
fn a_brokered_server_stops_without_its_jobs() {
    if !redis_available("a_brokered_server_stops_without_its_jobs") {
        return;
    }
    let redis = Redis::start(None);
    let url = redis.url();
    let mut server = Process::serve(&["--broker", &url, "--workers", "0"]);
    let queued = submit(&server.addr, body("a bell", 100, 3));
    let addr = server.addr.clone();
    let events =
        std::thread::spawn(move || http(&addr, "GET", &format!("/v1/jobs/{queued}/events"), None));
    let addr = server.addr.clone();
    let waiting = std::thread::spawn(move || {
        let request =
            json!({"prompt": "a drum", "seed": 101, "steps": 3, "response_format": "b64_json"});
        http(&addr, "POST", "/v1/images/generations", Some(&request))
    });
    wait_until("the synchronous job is queued", MINUTE, || {
        http(&server.addr, "GET", "/health", None).json()["broker"]["streams"][0]["length"] == 2
    });
    // No worker runs them: the server stops at once all the same, and nothing is cancelled.
    assert!(server.terminate().success(), "{}", server.log());
    let refused = waiting.join().unwrap();
    assert_eq!(
        refused.status,
        503,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert!(String::from_utf8_lossy(&refused.body).contains("goes on through the broker"));
    assert_eq!(events.join().unwrap().status, 200);
    let other = Process::serve(&["--broker", &url, "--workers", "1"]);
    let health = http(&other.addr, "GET", "/health", None).json();
    assert_eq!(health["broker"]["streams"][0]["length"], 2, "{health}");
    let ids = redis.cli(&["--scan", "--pattern", "diffuse:job:*"]);
    for key in ids.lines().filter(|k| k.matches(':').count() == 2) {
        let id = key.trim_start_matches("diffuse:job:");
        assert_eq!(wait_for_end(&other.addr, id, MINUTE)["state"], "succeeded");
    }
}

#[test]
fn two_servers_share_their_jobs() {
    if !redis_available("two_servers_share_their_jobs") {
        return;
    }
    let redis = Redis::start(None);
    let url = redis.url();
    // B runs the jobs itself (`--workers 1`), whichever server took them.
    let a = Process::serve(&["--broker", &url, "--workers", "0"]);
    let b = Process::serve(&["--broker", &url, "--workers", "1"]);
    let short = submit(&a.addr, body("a house", 8, 3));
    assert_eq!(wait_for_end(&b.addr, &short, MINUTE)["state"], "succeeded");
    assert_eq!(images(&b.addr, &short), images(&a.addr, &short));
    // A long job submitted to A, streamed and cancelled through B.
    let long = submit(&a.addr, long_body("a castle", 9));
    let events = {
        let addr = b.addr.clone();
        let path = format!("/v1/jobs/{long}/events");
        std::thread::spawn(move || http(&addr, "GET", &path, None))
    };
    wait_running(&b.addr, &long, 2);
    wait_until("a preview reaches the other server", MINUTE, || {
        job(&a.addr, &long)["preview"]
            .as_str()
            .is_some_and(|p| p.starts_with("data:image/png;base64,"))
    });
    let answer = http(&b.addr, "DELETE", &format!("/v1/jobs/{long}"), None);
    assert_eq!(
        answer.status,
        202,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let events = events.join().unwrap();
    let text = String::from_utf8_lossy(&events.body);
    assert!(text.contains(r#""state":"running""#), "{text}");
    assert!(text.contains(r#""state":"cancelled""#), "{text}");
    let ended = wait_for_end(&a.addr, &long, MINUTE);
    assert_eq!(ended["state"], "cancelled", "{ended}");
    assert!(
        ended["progress"]["step"].as_u64().unwrap() < 150,
        "stopped early: {ended}"
    );
}

#[test]
fn interrupts_and_disconnects_reach_the_worker() {
    if !redis_available("interrupts_and_disconnects_reach_the_worker") {
        return;
    }
    let redis = Redis::start(None);
    let url = redis.url();
    let server = Process::serve(&["--broker", &url, "--workers", "0"]);
    let _worker = Process::worker(&["--broker", &url]);
    let running = || {
        redis
            .cli(&["--scan", "--pattern", "diffuse:job:*"])
            .lines()
            .filter(|key| key.matches(':').count() == 2)
            .find(|key| redis.cli(&["HGET", key, "state"]) == "running")
            .map(String::from)
    };
    // A1111's interrupt: the image as it stands comes back, unlike the whole run's.
    let request =
        json!({"prompt": "a comet", "seed": 70, "steps": 150, "width": 128, "height": 128});
    let txt2img = |interrupt: bool| {
        let addr = server.addr.clone();
        let request = request.clone();
        let call =
            std::thread::spawn(move || http(&addr, "POST", "/sdapi/v1/txt2img", Some(&request)));
        if interrupt {
            wait_until("the txt2img job runs", MINUTE, || running().is_some());
            let answer = http(&server.addr, "POST", "/sdapi/v1/interrupt", None);
            assert_eq!(answer.json()["interrupted"], 1);
        }
        let answer = call.join().unwrap();
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        answer.json()["images"][0].as_str().unwrap().to_string()
    };
    assert_ne!(
        txt2img(true),
        txt2img(false),
        "the interrupt ended the image early"
    );
    // A synchronous client that goes away cancels its job on the worker.
    let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
    let body =
        json!({"prompt": "a comet", "seed": 71, "steps": 150, "size": "128x128"}).to_string();
    std::io::Write::write_all(
        &mut stream,
        format!(
            "POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut key = None;
    wait_until("the generation job runs", MINUTE, || {
        key = running();
        key.is_some()
    });
    drop(stream);
    let key = key.unwrap();
    wait_until("the job is cancelled", MINUTE, || {
        redis.cli(&["HGET", &key, "state"]) == "cancelled"
    });
    let step: u64 = redis.cli(&["HGET", &key, "step"]).parse().unwrap();
    assert!(step < 150, "stopped at step {step}");
}

#[test]
fn a_redis_outage_answers_503_and_loses_nothing() {
    if !redis_available("a_redis_outage_answers_503_and_loses_nothing") {
        return;
    }
    let mut redis = Redis::start(None);
    let url = redis.url();
    let server = Process::serve(&["--broker", &url, "--workers", "0"]);
    let _worker = Process::worker(&["--broker", &url]);
    let ids: Vec<String> = (0..2)
        .map(|i| submit(&server.addr, long_body("a bridge", 40 + i)))
        .collect();
    wait_running(&server.addr, &ids[0], 2);
    redis.stop();
    let refused = http(
        &server.addr,
        "POST",
        "/v1/jobs",
        Some(&body("a kite", 1, 3)),
    );
    assert_eq!(
        refused.status,
        503,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert!(
        refused.head.to_lowercase().contains("retry-after"),
        "{}",
        refused.head
    );
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("job broker") && message.contains(&url),
        "{message}"
    );
    let health = http(&server.addr, "GET", "/health", None).json();
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["broker"]["state"], "unreachable", "{health}");
    std::thread::sleep(Duration::from_secs(2));
    redis.start_again();
    for id in &ids {
        let ended = wait_for_end(&server.addr, id, 2 * MINUTE);
        assert_eq!(ended["state"], "succeeded", "{ended}");
    }
    let after = submit(&server.addr, body("a kite", 1, 3));
    assert_eq!(
        wait_for_end(&server.addr, &after, MINUTE)["state"],
        "succeeded"
    );
    assert_eq!(
        http(&server.addr, "GET", "/health", None).json()["status"],
        "ok"
    );
}

#[test]
fn a_job_that_kills_every_worker_fails_after_max_attempts() {
    if !redis_available("a_job_that_kills_every_worker_fails_after_max_attempts") {
        return;
    }
    let redis = Redis::start(None);
    let url = redis.url();
    let server = Process::serve(&["--broker", &url, "--workers", "0"]);
    let args = [
        "--broker",
        url.as_str(),
        "--claim-after",
        "1",
        "--max-attempts",
        "2",
    ];
    let id = submit(&server.addr, long_body("a volcano", 50));
    let job_key = format!("diffuse:job:{id}");
    for attempt in 1..=2 {
        let mut worker = Process::worker(&args);
        wait_until(&format!("attempt {attempt} runs"), MINUTE, || {
            redis.cli(&["HGET", &job_key, "attempt"]) == attempt.to_string()
                && job(&server.addr, &id)["state"] == "running"
        });
        worker.kill();
    }
    let _last = Process::worker(&args);
    let ended = wait_for_end(&server.addr, &id, MINUTE);
    assert_eq!(ended["state"], "failed", "{ended}");
    let message = ended["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("started 2 times") && message.contains("max attempts is 2"),
        "{message}"
    );
}

#[test]
fn sigterm_lets_a_worker_finish_its_job() {
    if !redis_available("sigterm_lets_a_worker_finish_its_job") {
        return;
    }
    let redis = Redis::start(None);
    let url = redis.url();
    let server = Process::serve(&["--broker", &url, "--workers", "0"]);
    let mut worker = Process::worker(&["--broker", &url]);
    let id = submit(&server.addr, long_body("a garden", 60));
    wait_running(&server.addr, &id, 1);
    assert!(worker.terminate().success(), "{}", worker.log());
    assert_eq!(
        job(&server.addr, &id)["state"],
        "succeeded",
        "{}",
        worker.log()
    );
}

#[test]
fn a_job_read_right_after_the_broker_changes_shows_the_change() {
    if !redis_available("a_job_read_right_after_the_broker_changes_shows_the_change") {
        return;
    }
    let redis = Redis::start(None);
    let url = redis.url();
    let server = Process::serve(&["--broker", &url, "--workers", "0"]);
    let id = submit(&server.addr, body("a lantern", 1, 3));
    assert_eq!(job(&server.addr, &id)["state"], "queued");
    // As a worker on another machine ends it, but without the announcement (lost, or not yet heard): the
    // next read must still answer what the broker holds, not wait for the periodic sweep.
    let job_key = format!("diffuse:job:{id}");
    redis.cli(&["HSET", &job_key, "state", "cancelled", "finished_at", "1"]);
    assert_eq!(job(&server.addr, &id)["state"], "cancelled");
}

#[test]
fn the_broker_password_never_shows_and_full_streams_answer_429() {
    if !redis_available("the_broker_password_never_shows_and_full_streams_answer_429") {
        return;
    }
    let redis = Redis::start(Some("s3cret-pass"));
    let url = redis.url();
    let server = Process::serve(&["--broker", &url, "--workers", "0", "--queue-capacity", "2"]);
    let queued: Vec<String> = (0..2)
        .map(|i| submit(&server.addr, body("a fox", i, 3)))
        .collect();
    let full = http(&server.addr, "POST", "/v1/jobs", Some(&body("a fox", 9, 3)));
    assert_eq!(full.status, 429, "{}", String::from_utf8_lossy(&full.body));
    assert!(
        full.head.to_lowercase().contains("retry-after"),
        "{}",
        full.head
    );
    // A cancelled waiting job leaves the stream at once, freeing its place.
    let answer = http(
        &server.addr,
        "DELETE",
        &format!("/v1/jobs/{}", queued[0]),
        None,
    );
    assert_eq!(answer.status, 202);
    assert_eq!(job(&server.addr, &queued[0])["state"], "cancelled");
    let worker = Process::worker(&["--broker", &url]);
    let id = submit(&server.addr, body("a fox", 9, 3));
    assert_eq!(
        wait_for_end(&server.addr, &id, MINUTE)["state"],
        "succeeded"
    );
    let health = http(&server.addr, "GET", "/health", None);
    let wrong = Process::serve(&[
        "--broker",
        "redis://:not-the-pass@127.0.0.1:1",
        "--workers",
        "0",
    ]);
    let refused = http(&wrong.addr, "POST", "/v1/jobs", Some(&body("a fox", 1, 3)));
    assert_eq!(refused.status, 503);
    let texts = [
        server.log(),
        worker.log(),
        String::from_utf8_lossy(&health.body).to_string(),
        String::from_utf8_lossy(&refused.body).to_string(),
    ];
    for text in texts {
        assert!(
            !text.contains("s3cret-pass") && !text.contains("not-the-pass"),
            "{text}"
        );
    }
    assert!(String::from_utf8_lossy(&refused.body).contains("redis://:***@127.0.0.1:1"));
}

#[test]
fn bad_broker_setups_are_refused_naming_the_flag() {
    let cases: [(&[&str], &str); 3] = [
        (&["serve", "--workers", "0"], "--workers"),
        (&["serve", "--broker", "http://cache:6379"], "--broker"),
        (
            &[
                "worker",
                "--broker",
                "redis://127.0.0.1:1",
                "--max-attempts",
                "0",
            ],
            "--max-attempts",
        ),
    ];
    for (args, flag) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_diffuse"))
            .args(args)
            .env_remove("DIFFUSE_BROKER")
            .env_remove("DIFFUSE_MODEL")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}
