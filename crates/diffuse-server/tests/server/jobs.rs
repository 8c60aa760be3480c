//! The native job API: submit, status, previews, events, images, cancellation and deletion.

use crate::common::{assert_error, b64, config, decode_png, start, start_with, test_png};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn a_job_runs_to_completion_with_status_and_images() {
    let t = start().await;
    let response = t
        .client
        .post(t.url("/v1/jobs"))
        .json(&json!({"prompt": "a boat", "steps": 5, "seed": 4, "n": 2, "scheduler": "DDIM"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let job: Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert_eq!(job["seed"], 4);
    assert!(["queued", "running", "succeeded"].contains(&job["state"].as_str().unwrap()));

    let done = t.wait_job(&id, |j| j["state"] == "succeeded").await;
    assert_eq!(done["progress"]["step"], 5);
    assert_eq!(done["progress"]["total"], 5);
    assert_eq!(done["progress"]["fraction"], 1.0);
    assert!(done["preview"]
        .as_str()
        .unwrap()
        .starts_with("data:image/png;base64,"));
    assert!(done["finished_at"].as_f64().unwrap() >= done["created_at"].as_f64().unwrap());
    let images = done["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    for image in images {
        let bytes = t
            .client
            .get(t.url(image["url"].as_str().unwrap()))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let (png, text) = decode_png(&bytes);
        assert_eq!((png.width, png.height), (64, 64));
        assert_eq!(text.as_deref(), image["parameters"].as_str());
        assert!(text
            .unwrap()
            .contains("Sampler: DDIM, CFG scale: 7.5, Seed: 4"));
    }
    // The preview: the 8×8 latents projected to RGB and upsampled by the VAE factor (at most to 256 pixels).
    let preview = t
        .client
        .get(t.url(&format!("/v1/jobs/{id}/preview")))
        .send()
        .await
        .unwrap();
    assert_eq!(preview.headers()["content-type"], "image/png");
    let (png, _) = decode_png(&preview.bytes().await.unwrap());
    assert_eq!((png.width, png.height), (64, 64));

    // Deleting a finished job forgets it.
    let response = t.client.delete(t.url(&location)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let (status, body) = t.get(&location).await;
    assert_error(status, &body, 404, None);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn events_stream_progress_until_the_end() {
    let t = start().await;
    let (status, job) = t
        .post("/v1/jobs", &json!({"prompt": "x", "steps": 12, "seed": 1}))
        .await;
    assert_eq!(status, 202);
    let id = job["id"].as_str().unwrap();
    let mut response = t
        .client
        .get(t.url(&format!("/v1/jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events: Vec<Value> = text
        .split("\n\n")
        .filter_map(|block| {
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            assert!(block.contains("event: status"), "{block}");
            Some(serde_json::from_str(data).unwrap())
        })
        .collect();
    assert!(events.len() >= 2, "{text}");
    let last = events.last().unwrap();
    assert_eq!(last["state"], "succeeded");
    assert_eq!(last["images"].as_array().unwrap().len(), 1);
    let steps: Vec<u64> = events
        .iter()
        .map(|e| e["progress"]["step"].as_u64().unwrap())
        .collect();
    assert!(
        steps.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back: {steps:?}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn image_to_image_and_inpainting_jobs() {
    let t = start().await;
    let image = format!("data:image/png;base64,{}", b64(&test_png(64, 64, None)));
    let mask = b64(&test_png(
        64,
        64,
        Some(&|x, _| if x < 16 { 255 } else { 0 }),
    ));
    for body in [
        json!({"prompt": "x", "steps": 4, "seed": 1, "image": image, "strength": 0.5}),
        json!({"prompt": "x", "steps": 4, "seed": 1, "image": image, "mask": mask}),
    ] {
        let (status, job) = t.post("/v1/jobs", &body).await;
        assert_eq!(status, 202, "{job}");
        let done = t
            .wait_job(job["id"].as_str().unwrap(), |j| {
                j["state"] != "queued" && j["state"] != "running"
            })
            .await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    let cases = [
        (json!({"prompt": "x", "mask": mask}), "mask"),
        (json!({"prompt": "x", "strength": 0.5}), "strength"),
        (json!({"prompt": "x", "image": "nope"}), "image"),
        (
            json!({"prompt": "x", "image": image, "mask": b64(&test_png(5000, 1, None))}),
            "mask",
        ),
        (json!({"prompt": "x", "width": 60}), "width"),
        (
            json!({"prompt": "x", "width": 72, "height": 2048}),
            "height",
        ),
        (
            json!({"prompt": "x", "width": 1024, "height": 1024}),
            "width",
        ),
        (
            json!({"prompt": "x", "guidance_rescale": 2.0}),
            "guidance_rescale",
        ),
        (json!({"prompt": "x", "eta": -1.0}), "eta"),
        (json!({"prompt": "x", "colour": "red"}), "colour"),
    ];
    for (body, param) in cases {
        let (status, answer) = t.post("/v1/jobs", &body).await;
        assert_error(status, &answer, 400, Some(param));
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_cancels_waiting_and_running_jobs_and_a_full_queue_answers_429() {
    let mut cfg = config();
    cfg.queue_capacity = 1;
    cfg.limits.max_steps = 1000;
    let t = start_with(cfg).await;
    let long = json!({"prompt": "x", "steps": 999, "seed": 1, "width": 256, "height": 256});
    let (_, running) = t.post("/v1/jobs", &long).await;
    let running = running["id"].as_str().unwrap().to_string();
    t.wait_job(&running, |j| {
        j["state"] == "running" && j["progress"]["step"].as_u64() > Some(0)
    })
    .await;
    let (status, waiting) = t.post("/v1/jobs", &long).await;
    assert_eq!(status, 202);
    assert_eq!(waiting["queue_position"], 0);
    let waiting = waiting["id"].as_str().unwrap().to_string();

    let response = t
        .client
        .post(t.url("/v1/jobs"))
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let (status, _) = t
        .post(
            "/v1/images/generations",
            &json!({"prompt": "x", "steps": 2}),
        )
        .await;
    assert_eq!(status, 429, "synchronous endpoints share the queue");

    let response = t
        .client
        .delete(t.url(&format!("/v1/jobs/{waiting}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let (_, job) = t.get(&format!("/v1/jobs/{waiting}")).await;
    assert_eq!(job["state"], "cancelled", "a waiting job ends at once");

    let started = std::time::Instant::now();
    t.client
        .delete(t.url(&format!("/v1/jobs/{running}")))
        .send()
        .await
        .unwrap();
    let job = t.wait_job(&running, |j| j["state"] == "cancelled").await;
    assert!(
        started.elapsed().as_secs_f64() < 30.0,
        "cancelled within a step, not after 999"
    );
    assert!(job["progress"]["step"].as_u64().unwrap() < 999);
    assert_eq!(job["error"]["status"], 409);

    let (status, body) = t.get("/v1/jobs/job-unknown").await;
    assert_error(status, &body, 404, None);
    let response = t
        .client
        .delete(t.url("/v1/jobs/job-unknown"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let metrics = t
        .client
        .get(t.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("diffuse_jobs_rejected_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("diffuse_jobs_finished_total{outcome=\"cancelled\"} 2"),
        "{metrics}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_goes_away_cancels_its_job() {
    let mut cfg = config();
    cfg.limits.max_steps = 1000;
    let t = start_with(cfg).await;
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(700))
        .build()
        .unwrap();
    let result = impatient
        .post(t.url("/sdapi/v1/txt2img"))
        .json(&json!({"prompt": "x", "steps": 999, "width": 256, "height": 256}))
        .send()
        .await;
    assert!(result.is_err(), "the client timed out");
    // The job stops within a step or two, long before its 999 steps.
    for _ in 0..3000 {
        let metrics = t
            .client
            .get(t.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("diffuse_jobs_finished_total{outcome=\"cancelled\"} 1") {
            let (_, health) = t.get("/health").await;
            assert_eq!(health["running"], 0);
            t.stop().await;
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the abandoned job was not cancelled");
}

#[tokio::test(flavor = "multi_thread")]
async fn a1111_interrupt_ends_the_running_job_with_its_image() {
    let mut cfg = config();
    cfg.limits.max_steps = 1000;
    let t = start_with(cfg).await;
    let client = t.client.clone();
    let url = t.url("/sdapi/v1/txt2img");
    let waiting = tokio::spawn(async move {
        let response = client
            .post(url)
            .json(&json!({"prompt": "x", "steps": 999, "width": 256, "height": 256}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    });
    for attempt in 0.. {
        assert!(attempt < 3000, "the job never started");
        let (_, progress) = t.get("/sdapi/v1/progress").await;
        if progress["state"]["sampling_step"].as_u64() > Some(0) {
            assert!(progress["current_image"].as_str().is_some());
            assert!(progress["progress"].as_f64().unwrap() > 0.0);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (_, answer) = t.post("/sdapi/v1/interrupt", &json!({})).await;
    assert_eq!(answer["interrupted"], 1);
    // As A1111: 200 with the image as it stood, long before the 999 steps.
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["images"].as_array().unwrap().len(), 1);
    t.stop().await;
}

/// Decoding a large upload never stalls the async runtime: on a one-thread runtime, `/health` keeps answering
/// while the server decodes a 4096×4096 PNG (decoded on the runtime, it went silent for the whole decode). The
/// bound is relative to the decode time measured here, half of it.
#[tokio::test(flavor = "current_thread")]
async fn uploads_decode_off_the_async_runtime() {
    let png = test_png(4096, 4096, None);
    let limits = diffuse_server::Limits::default();
    let started = std::time::Instant::now();
    diffuse_server::api::uploads::decode(&png, "image", &limits).unwrap();
    let decode = started.elapsed();
    assert!(
        decode >= std::time::Duration::from_millis(40),
        "the decode ({decode:?}) is too quick to show a stall"
    );
    let t = start().await;
    let body = json!({"prompt": "x", "steps": 2, "width": 64, "height": 64, "image": b64(&png)});
    let (client, url) = (t.client.clone(), t.url("/v1/jobs"));
    let upload = tokio::spawn(async move {
        let response = client.post(url).json(&body).send().await.unwrap();
        response.status().as_u16()
    });
    let mut longest = std::time::Duration::ZERO;
    let mut last = std::time::Instant::now();
    while !upload.is_finished() {
        let (status, _) = t.get("/health").await;
        assert_eq!(status, 200);
        longest = longest.max(last.elapsed());
        last = std::time::Instant::now();
    }
    assert_eq!(upload.await.unwrap(), 202);
    eprintln!("decode {decode:?}, longest /health gap {longest:?}");
    assert!(
        longest < decode / 2,
        "/health went silent for {longest:?} during a {decode:?} decode"
    );
    t.stop().await;
}

/// Jobs read prompts with A1111's syntax unless `prompt_syntax` is "plain"; a `<lora:…>` tag on a server without
/// a LoRA folder is refused by name, rather than silently ignored.
#[tokio::test(flavor = "multi_thread")]
async fn jobs_choose_the_prompt_syntax() {
    let t = start().await;
    let tagged = json!({"prompt": "a boat <lora:film:0.8>", "steps": 1});
    let (status, body) = t.post("/v1/jobs", &tagged).await;
    assert_error(status, &body, 400, Some("loras"));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("<lora:film"),
        "{body}"
    );
    let mut plain = tagged.clone();
    plain["prompt_syntax"] = json!("plain");
    let (status, body) = t.post("/v1/jobs", &plain).await;
    assert_eq!(status, 202, "{body}");
    let mut bogus = tagged;
    bogus["prompt_syntax"] = json!("comfy");
    let (status, body) = t.post("/v1/jobs", &bogus).await;
    assert_error(status, &body, 400, Some("prompt_syntax"));
    t.stop().await;
}

/// With `preview_decoder`, previews are TAESD's decode (not the latent projection) while the final images still
/// come from the model's VAE: the same job on two servers gives the same image and different previews.
#[tokio::test(flavor = "multi_thread")]
async fn a_preview_decoder_draws_previews_but_not_images() {
    let mut results = Vec::new();
    for decoder in [None, Some("taesd")] {
        let mut config = config();
        config.preview_decoder = decoder.map(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/taesd/taesd"
            )
            .to_string()
        });
        let t = start_with(config).await;
        let (status, job) = t
            .post(
                "/v1/jobs",
                &json!({"prompt": "a boat", "steps": 3, "seed": 8}),
            )
            .await;
        assert_eq!(status, 202, "{job}");
        let id = job["id"].as_str().unwrap().to_string();
        let done = t.wait_job(&id, |j| j["state"] == "succeeded").await;
        let fetch = |path: String| {
            let client = t.client.clone();
            async move {
                client
                    .get(path)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap()
            }
        };
        let image = fetch(t.url(done["images"][0]["url"].as_str().unwrap())).await;
        let preview = fetch(t.url(&format!("/v1/jobs/{id}/preview"))).await;
        results.push((decode_png(&image).0, decode_png(&preview).0));
        t.stop().await;
    }
    let ((image, projected), (same_image, tiny)) = (&results[0], &results[1]);
    assert_eq!(
        image, same_image,
        "the final image comes from the VAE either way"
    );
    assert_eq!((tiny.width, tiny.height), (64, 64));
    assert_ne!(projected.pixels, tiny.pixels, "the preview is TAESD's");
}
