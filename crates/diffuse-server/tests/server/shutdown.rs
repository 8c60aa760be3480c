//! Graceful shutdown: running jobs finish within the grace period; past it they are cancelled, waiting jobs
//! are cancelled at once, and waiting clients get 503.

use std::time::{Duration, Instant};

use crate::common::{config, start_with};
use serde_json::{json, Value};

/// Waits until the second request is queued behind the first.
async fn wait_queued(t: &crate::common::TestServer) {
    for _ in 0..3000 {
        let (_, health) = t.get("/health").await;
        if health["queue"]["depth"] == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the second job was not queued");
}

async fn wait_running(t: &crate::common::TestServer) {
    for _ in 0..3000 {
        let (_, progress) = t.get("/sdapi/v1/progress").await;
        if progress["state"]["sampling_step"].as_u64() > Some(0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no job started");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_job_finishes_within_the_grace_period() {
    let mut cfg = config();
    cfg.limits.max_steps = 999;
    cfg.shutdown_grace = Duration::from_secs(60);
    let t = start_with(cfg).await;
    let client = t.client.clone();
    let url = t.url("/v1/images/generations");
    let waiting = tokio::spawn(async move {
        let response = client
            .post(url)
            .json(&json!({"prompt": "x", "steps": 200, "seed": 1}))
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        )
    });
    wait_running(&t).await;
    let base = t.base.clone();
    t.stop().await;
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert!(
        reqwest::get(format!("{base}/health")).await.is_err(),
        "the server no longer accepts connections"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_grace_period_jobs_are_cancelled_and_clients_told_503() {
    let mut cfg = config();
    cfg.limits.max_steps = 999;
    cfg.shutdown_grace = Duration::from_millis(300);
    let t = start_with(cfg).await;
    let long = json!({"prompt": "x", "steps": 999, "width": 256, "height": 256});
    let mut clients = Vec::new();
    for i in 0..2 {
        let client = t.client.clone();
        let url = t.url("/sdapi/v1/txt2img");
        let body = long.clone();
        clients.push(tokio::spawn(async move {
            let response = client.post(url).json(&body).send().await.unwrap();
            let status = response.status().as_u16();
            let retry = response.headers().get("retry-after").cloned();
            (status, retry, response.json::<Value>().await.unwrap())
        }));
        if i == 0 {
            wait_running(&t).await;
        } else {
            wait_queued(&t).await;
        }
    }
    let started = Instant::now();
    t.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    for client in clients {
        let (status, retry, body) = client.await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(retry.is_some());
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shutting down"));
    }
}
