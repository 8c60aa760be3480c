//! A bounded load test of a running `diffuse serve` on loopback: N requests at concurrency C, counting statuses,
//! timing them, checking every accepted request produced its image, and sampling the server's memory.
//!
//! ```text
//! cargo run --release -p diffuse-server --example load -- \
//!     --url http://127.0.0.1:7860 --requests 200 --concurrency 16 --pid SERVER_PID
//! ```
//! Requests rotate over the OpenAI, A1111 and native job endpoints. It stops by itself and exits non-zero on
//! any 5xx, any accepted request without its image, or a transport error. With `--digests FILE` it writes one
//! line per request, `INDEX DIGEST` (a hash of the PNG's bytes, parameters included), so that two runs (e.g.
//! in-process and through a broker) can be compared image for image.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Options {
    url: String,
    requests: usize,
    concurrency: usize,
    steps: usize,
    size: usize,
    pid: Option<u32>,
    digests: Option<String>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        url: "http://127.0.0.1:7860".into(),
        requests: 200,
        concurrency: 16,
        steps: 4,
        size: 64,
        pid: None,
        digests: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).ok_or(format!("{} needs a value", pair[0]))?;
        let number = || {
            value
                .parse::<usize>()
                .map_err(|_| format!("{}: {value:?}", pair[0]))
        };
        match pair[0].as_str() {
            "--url" => o.url = value.clone(),
            "--requests" => o.requests = number()?,
            "--concurrency" => o.concurrency = number()?.max(1),
            "--steps" => o.steps = number()?,
            "--size" => o.size = number()?,
            "--pid" => o.pid = Some(number()? as u32),
            "--digests" => o.digests = Some(value.clone()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

/// The resident memory of `pid` in MiB, from /proc.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// A digest of an image's bytes (the standard hasher with its fixed keys: equal bytes, equal digests, within one
/// build of this tool).
fn digest(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(bytes);
    hasher.finish()
}

fn base64_digest(text: &Value) -> Option<u64> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.as_str()?)
        .ok()?;
    Some(digest(&bytes))
}

/// One request; returns its status and the digest of the image an accepted request yielded.
async fn one(
    client: &reqwest::Client,
    o: &Options,
    i: usize,
) -> Result<(u16, Option<u64>), String> {
    let size = o.size;
    let (path, body) = match i % 3 {
        0 => (
            "/v1/images/generations",
            json!({"prompt": format!("load test {i}"), "size": format!("{size}x{size}"), "steps": o.steps,
                   "seed": i, "response_format": "b64_json"}),
        ),
        1 => (
            "/sdapi/v1/txt2img",
            json!({"prompt": format!("load test {i}"), "width": size, "height": size, "steps": o.steps,
                   "seed": i, "sampler_name": "Euler a"}),
        ),
        _ => (
            "/v1/jobs",
            json!({"prompt": format!("load test {i}"), "width": size, "height": size, "steps": o.steps,
                   "seed": i}),
        ),
    };
    let response = client
        .post(format!("{}{path}", o.url))
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let answer: Value = response.json().await.map_err(|e| e.to_string())?;
    let image = match status {
        200 => base64_digest(&answer["data"][0]["b64_json"])
            .or_else(|| base64_digest(&answer["images"][0])),
        202 => {
            let id = answer["id"].as_str().unwrap_or_default().to_string();
            loop {
                let job: Value = client
                    .get(format!("{}/v1/jobs/{id}", o.url))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                match job["state"].as_str() {
                    Some("queued") | Some("running") => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Some("succeeded") => {
                        let Some(url) = job["images"][0]["url"].as_str() else {
                            break None;
                        };
                        let bytes = client
                            .get(format!("{}{url}", o.url))
                            .send()
                            .await
                            .map_err(|e| e.to_string())?
                            .bytes()
                            .await
                            .map_err(|e| e.to_string())?;
                        break Some(digest(&bytes));
                    }
                    _ => break None,
                }
            }
        }
        _ => None,
    };
    Ok((status, image))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let o = match options() {
        Ok(o) => Arc::new(o),
        Err(e) => {
            eprintln!("load: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("a client");
    let memory = Arc::new(Mutex::new(Vec::<(f64, f64)>::new()));
    let started = Instant::now();
    let sampler = o.pid.map(|pid| {
        let memory = memory.clone();
        tokio::spawn(async move {
            while let Some(mib) = rss_mib(pid) {
                memory
                    .lock()
                    .unwrap()
                    .push((started.elapsed().as_secs_f64(), mib));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..o.concurrency)
        .map(|_| {
            let (o, client, next, results) =
                (o.clone(), client.clone(), next.clone(), results.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= o.requests {
                        break;
                    }
                    let t0 = Instant::now();
                    let outcome = one(&client, &o, i).await;
                    results
                        .lock()
                        .unwrap()
                        .push((i, outcome, t0.elapsed().as_secs_f64()));
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    let results = results.lock().unwrap();
    let mut statuses = BTreeMap::new();
    let (mut errors, mut incomplete) = (0, 0);
    let mut latencies: Vec<f64> = Vec::new();
    let mut digests = Vec::new();
    for (i, outcome, seconds) in results.iter() {
        match outcome {
            Ok((status, image)) => {
                *statuses.entry(*status).or_insert(0usize) += 1;
                if matches!(status, 200 | 202) {
                    latencies.push(*seconds);
                    match image {
                        Some(d) => digests.push(format!("{i} {d:016x}")),
                        None => incomplete += 1,
                    }
                }
            }
            Err(e) => {
                errors += 1;
                eprintln!("transport error: {e}");
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let server_errors: usize = statuses.range(500..600).map(|(_, n)| n).sum();
    println!(
        "requests {} concurrency {} in {elapsed:.1} s ({:.2} req/s)",
        o.requests,
        o.concurrency,
        o.requests as f64 / elapsed
    );
    println!("statuses {statuses:?}; 5xx {server_errors}; transport errors {errors}; accepted without image {incomplete}");
    println!(
        "latency of accepted requests: p50 {:.2} s, p90 {:.2} s, p99 {:.2} s, max {:.2} s",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    let memory = memory.lock().unwrap();
    if !memory.is_empty() {
        let values: Vec<f64> = memory.iter().map(|(_, m)| *m).collect();
        let quarter = values.len() / 4;
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
        println!(
            "server RSS MiB: first {:.1}, max {:.1}, last {:.1}; mean by quarter {:.1} / {:.1} / {:.1} / {:.1} ({} samples)",
            values[0],
            values.iter().cloned().fold(0.0, f64::max),
            values[values.len() - 1],
            mean(&values[..quarter.max(1).min(values.len())]),
            mean(&values[quarter..(2 * quarter).max(quarter)]),
            mean(&values[2 * quarter..(3 * quarter).max(2 * quarter)]),
            mean(&values[3 * quarter..]),
            values.len()
        );
    }
    if let Some(path) = &o.digests {
        digests.sort_by_key(|line| line.split(' ').next().and_then(|i| i.parse::<usize>().ok()));
        if let Err(e) = std::fs::write(path, digests.join("\n") + "\n") {
            eprintln!("load: --digests {path}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    if server_errors > 0 || errors > 0 || incomplete > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
