//! A bounded, deterministic fuzz test of the JSON and multipart endpoints: valid requests mutated at random
//! (wrong types, extreme numbers, odd strings, broken images, unknown fields, garbage bodies). No answer may be
//! a 5xx, every error is JSON naming what was wrong, no job may fail with a server error, and the server must
//! stay up.

use crate::common::{b64, config, start_with, test_png};
use serde_json::{json, Map, Value};

/// xorshift64*: a small deterministic generator, so that a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const FIELDS: &[&str] = &[
    "prompt",
    "negative_prompt",
    "model",
    "n",
    "size",
    "response_format",
    "output_format",
    "background",
    "stream",
    "quality",
    "steps",
    "guidance",
    "seed",
    "scheduler",
    "width",
    "height",
    "image",
    "mask",
    "strength",
    "eta",
    "clip_skip",
    "guidance_rescale",
    "cfg_scale",
    "sampler_name",
    "sampler_index",
    "batch_size",
    "n_iter",
    "denoising_strength",
    "init_images",
    "override_settings",
    "send_images",
    "enable_hr",
    "styles",
    "inpainting_mask_invert",
    "alwayson_scripts",
    "s_churn",
    "subseed_strength",
];

fn random_string(rng: &mut Rng) -> String {
    let choices = [
        String::new(),
        "Euler a".into(),
        "DPM++ 2M".into(),
        "karras".into(),
        "Karras".into(),
        "automatic".into(),
        "64x64".into(),
        "128x64".into(),
        "0x0".into(),
        "99999999999x1".into(),
        "auto".into(),
        "url".into(),
        "b64_json".into(),
        "png".into(),
        "sd1".into(),
        "../sd1".into(),
        "-1".into(),
        "NaN".into(),
        "data:image/png;base64,".into(),
        "data:image/png;base64,iVBORw0KGgo=".into(),
        "\u{0}\u{1}\u{7f}".into(),
        "é🙂\u{202e}".into(),
        "a".repeat(rng.below(300)),
    ];
    rng.pick(&choices).clone()
}

fn random_number(rng: &mut Rng) -> Value {
    let choices = [
        json!(0),
        json!(1),
        json!(2),
        json!(3),
        json!(-1),
        json!(-2),
        json!(64),
        json!(65),
        json!(128),
        json!(4096),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(0.5),
        json!(-0.0),
        json!(1e308),
        json!(-1e308),
        json!(5e-324),
        json!(7.5),
        json!(1.0000001),
    ];
    rng.pick(&choices).clone()
}

fn random_image(rng: &mut Rng) -> Value {
    let (w, h) = (1 + rng.below(140) as u32, 1 + rng.below(140) as u32);
    let alpha = |x: u32, y: u32| ((x * 7 + y * 3) % 256) as u8;
    let png = if rng.below(2) == 0 {
        test_png(w, h, None)
    } else {
        test_png(w, h, Some(&alpha))
    };
    match rng.below(4) {
        0 => json!(b64(&png)),
        1 => json!(format!("data:image/png;base64,{}", b64(&png))),
        2 => json!(b64(&png[..png.len() / 2])),
        _ => json!([b64(&png)]),
    }
}

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 2 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 | 3 => random_number(rng),
        4 => json!(random_string(rng)),
        5 => random_image(rng),
        6 => Value::Array(
            (0..rng.below(3))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut object = Map::new();
            for _ in 0..rng.below(3) {
                let key = if rng.below(2) == 0 {
                    (*rng.pick(FIELDS)).to_string()
                } else {
                    rng.pick(&[
                        "randn_source",
                        "sd_model_checkpoint",
                        "CLIP_stop_at_last_layers",
                        "x",
                    ])
                    .to_string()
                };
                object.insert(key, random_value(rng, depth + 1));
            }
            Value::Object(object)
        }
    }
}

/// A valid request of each endpoint, to mutate.
fn templates() -> Vec<(&'static str, Value)> {
    let image = b64(&test_png(64, 64, None));
    vec![
        (
            "/v1/images/generations",
            json!({"prompt": "p", "steps": 2, "n": 1, "size": "64x64", "seed": 1}),
        ),
        (
            "/v1/jobs",
            json!({"prompt": "p", "steps": 2, "width": 64, "height": 64, "seed": 1}),
        ),
        (
            "/v1/jobs",
            json!({"prompt": "p", "steps": 2, "image": image, "mask": image, "strength": 0.9}),
        ),
        (
            "/sdapi/v1/txt2img",
            json!({"prompt": "p", "steps": 2, "width": 64, "height": 64, "seed": 1,
                                     "sampler_name": "Euler", "batch_size": 1}),
        ),
        (
            "/sdapi/v1/img2img",
            json!({"prompt": "p", "steps": 2, "width": 64, "height": 64,
                                     "init_images": [image], "denoising_strength": 0.9}),
        ),
        ("/sdapi/v1/png-info", json!({"image": image})),
    ]
}

fn mutate(rng: &mut Rng, template: &Value) -> Vec<u8> {
    match rng.below(12) {
        0 => return random_value(rng, 0).to_string().into_bytes(),
        1 => {
            let text = template.to_string();
            let cut = rng.below(text.len());
            return text.as_bytes()[..cut].to_vec();
        }
        2 => return (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        _ => {}
    }
    let mut body = template.as_object().cloned().unwrap_or_default();
    for _ in 0..1 + rng.below(3) {
        let field = (*rng.pick(FIELDS)).to_string();
        match rng.below(4) {
            0 => {
                body.remove(&field);
            }
            _ => {
                body.insert(field, random_value(rng, 1));
            }
        }
    }
    Value::Object(body).to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn random_requests_never_get_a_server_error() {
    let mut cfg = config();
    cfg.limits.max_steps = 3;
    cfg.limits.max_side = 128;
    cfg.limits.max_pixels = 128 * 128;
    cfg.limits.max_images = 2;
    cfg.limits.max_input_side = 128;
    cfg.queue_capacity = 256;
    let t = start_with(cfg).await;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let templates = templates();
    let mut jobs = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for round in 0..600 {
        let (path, template) = &templates[round % templates.len()];
        let body = mutate(&mut rng, template);
        let response = t
            .client
            .post(t.url(path))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        *statuses.entry(status).or_default() += 1;
        let answer: Value = response.json().await.unwrap_or_else(|e| {
            panic!(
                "{path} answered {status} without JSON ({e}) to {}",
                String::from_utf8_lossy(&body)
            )
        });
        assert!(
            status < 500,
            "{path} answered {status}: {answer}\nto {}",
            String::from_utf8_lossy(&body)
        );
        if status >= 400 {
            assert!(answer["error"]["message"].as_str().is_some(), "{answer}");
        }
        if status == 202 {
            jobs.push(answer["id"].as_str().unwrap().to_string());
        }
    }
    for round in 0..60 {
        let mut form = reqwest::multipart::Form::new();
        for _ in 0..rng.below(6) {
            let field = (*rng.pick(FIELDS)).to_string();
            form = match rng.below(3) {
                0 => form.part(
                    field,
                    reqwest::multipart::Part::bytes(test_png(1 + rng.below(100) as u32, 8, None)),
                ),
                _ => form.text(field, random_value(&mut rng, 2).to_string()),
            };
        }
        if round % 2 == 0 {
            form = form.text("prompt", "p").part(
                "image",
                reqwest::multipart::Part::bytes(test_png(64, 64, None)),
            );
        }
        let response = t
            .client
            .post(t.url("/v1/images/edits"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        *statuses.entry(status).or_default() += 1;
        let answer: Value = response.json().await.unwrap();
        assert!(status < 500, "edits answered {status}: {answer}");
    }
    for id in &jobs {
        let job = t
            .wait_job(id, |j| {
                !matches!(j["state"].as_str(), Some("queued") | Some("running"))
            })
            .await;
        if job["state"] != "succeeded" {
            assert!(job["error"]["status"].as_u64().unwrap() < 500, "{job}");
        }
    }
    let (status, health) = t.get("/health").await;
    assert_eq!((status, &health["status"]), (200, &json!("ok")));
    let successes =
        statuses.get(&200).copied().unwrap_or(0) + statuses.get(&202).copied().unwrap_or(0);
    assert!(
        successes > 20,
        "the fuzz should also reach generation: {statuses:?}"
    );
    assert!(
        statuses.get(&400).copied().unwrap_or(0) > 100,
        "{statuses:?}"
    );
    eprintln!("statuses: {statuses:?}; jobs: {}", jobs.len());
    t.stop().await;
}
