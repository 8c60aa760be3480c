//! The OpenAI Images API: generations, edits (image-to-image and inpainting), models, and every error path.

use crate::common::{assert_error, decode_png, decode_png_b64, start, test_png};
use diffuse::loaders::{LoadOptions, PipelineFolder};
use diffuse::pipelines::{GenerationRequest, StableDiffusion};
use diffuse::rng::TorchCpuRng;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn generations_equal_the_library_with_diffusers_seeding() {
    let t = start().await;
    let (status, body) = t
        .post(
            "/v1/images/generations",
            &json!({"model": "sd1", "prompt": "a red cube", "n": 2, "steps": 4, "seed": 7,
                    "negative_prompt": "blurry", "guidance": 6.0, "response_format": "b64_json"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(body["size"], "64x64");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let served: Vec<_> = data
        .iter()
        .map(|d| decode_png_b64(d["b64_json"].as_str().unwrap()))
        .collect();
    assert_ne!(served[0].0.pixels, served[1].0.pixels, "n images differ");
    // One generator drew both images: each records the seed, the batch size and its position, with the model
    // hash A1111 records.
    let hash = crate::common::sd1_hash();
    for (pos, (_, text)) in served.iter().enumerate() {
        assert_eq!(
            text.as_deref().unwrap(),
            format!(
                "a red cube\nNegative prompt: blurry\nSteps: 4, Sampler: PLMS, CFG scale: 6.0, \
                 Seed: 7, Size: 64x64, Model hash: {hash}, Model: sd1, RNG: CPU, Batch size: 2, \
                 Batch pos: {pos}"
            )
        );
    }

    // The same request through the library directly: one generator seeded 7 draws both images.
    let pipe = StableDiffusion::load(
        &PipelineFolder::open(&crate::common::sd1()).unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let request = GenerationRequest {
        prompt: "a red cube".into(),
        negative_prompt: "blurry".into(),
        steps: 4,
        guidance_scale: 6.0,
        num_images: 2,
        ..Default::default()
    };
    let direct = pipe
        .generate(&request, &mut TorchCpuRng::new(7), &mut |_| {
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    for (served, direct) in served.iter().zip(&direct.images) {
        assert_eq!(served.0, *direct, "served image differs from the library's");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn url_responses_point_at_fetchable_pngs() {
    let t = start().await;
    let (status, body) = t
        .post(
            "/v1/images/generations",
            &json!({"prompt": "x", "steps": 2, "seed": 1, "response_format": "url",
                    "scheduler": "Euler a", "size": "64x48"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let url = body["data"][0]["url"].as_str().unwrap();
    assert!(url.starts_with(&t.base), "{url}");
    let response = t.client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    let (image, text) = decode_png(&response.bytes().await.unwrap());
    assert_eq!((image.width, image.height), (64, 48));
    assert!(text.unwrap().contains("Sampler: Euler a,"));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn random_seeds_are_reported_and_reproduce() {
    let t = start().await;
    let (_, first) = t
        .post(
            "/v1/images/generations",
            &json!({"prompt": "x", "steps": 2, "seed": -1}),
        )
        .await;
    let (image, text) = decode_png_b64(first["data"][0]["b64_json"].as_str().unwrap());
    let seed: u64 = text
        .unwrap()
        .split("Seed: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    let (_, again) = t
        .post(
            "/v1/images/generations",
            &json!({"prompt": "x", "steps": 2, "seed": seed}),
        )
        .await;
    assert_eq!(
        decode_png_b64(again["data"][0]["b64_json"].as_str().unwrap()).0,
        image
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn generation_errors_name_the_field() {
    let t = start().await;
    let cases = [
        (json!({"prompt": "x", "bogus": 1}), "bogus"),
        (json!({"prompt": "x", "n": 0}), "n"),
        (json!({"prompt": "x", "n": 11}), "n"),
        (json!({"prompt": "x", "n": "two"}), "n"),
        (json!({"prompt": "x", "size": "big"}), "size"),
        (json!({"prompt": "x", "size": "60x64"}), "size"),
        (json!({"prompt": "x", "size": "4096x4096"}), "size"),
        (json!({"prompt": "x", "model": "dall-e-3"}), "model"),
        (json!({"prompt": "x", "model": "../../etc"}), "model"),
        (
            json!({"prompt": "x", "model": "/work/main/tests/fixtures/models/sd1"}),
            "model",
        ),
        (
            json!({"prompt": "x", "response_format": "jpeg"}),
            "response_format",
        ),
        (
            json!({"prompt": "x", "output_format": "webp"}),
            "output_format",
        ),
        (
            json!({"prompt": "x", "background": "transparent"}),
            "background",
        ),
        (json!({"prompt": "x", "stream": true}), "stream"),
        (json!({"prompt": "x", "steps": 0}), "steps"),
        (json!({"prompt": "x", "steps": 151}), "steps"),
        (json!({"prompt": "x", "steps": -3}), "steps"),
        (json!({"prompt": "x", "guidance": -1.0}), "guidance"),
        (json!({"prompt": "x", "seed": -2}), "seed"),
        (json!({"prompt": "x", "seed": 1.5}), "seed"),
        (
            json!({"prompt": "x", "scheduler": "Warp drive"}),
            "scheduler",
        ),
        (json!({"prompt": "x".repeat(10_001)}), "prompt"),
        (json!({"n": 1}), ""),
    ];
    for (body, param) in cases {
        let (status, answer) = t.post("/v1/images/generations", &body).await;
        let want = (!param.is_empty()).then_some(param);
        assert_error(status, &answer, 400, want);
    }
    let response = t
        .client
        .post(t.url("/v1/images/generations"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("JSON"));
    t.stop().await;
}

fn form(fields: &[(&str, &str)]) -> reqwest::multipart::Form {
    fields
        .iter()
        .fold(reqwest::multipart::Form::new(), |form, (k, v)| {
            form.text(k.to_string(), v.to_string())
        })
}

fn file(bytes: Vec<u8>) -> reqwest::multipart::Part {
    reqwest::multipart::Part::bytes(bytes)
        .file_name("image.png")
        .mime_str("image/png")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn edits_run_image_to_image_and_inpainting() {
    let t = start().await;
    let edit = |form: reqwest::multipart::Form| {
        t.client
            .post(t.url("/v1/images/edits"))
            .multipart(form)
            .send()
    };
    // Image-to-image: no mask, opaque image; the output keeps the input's size.
    let response = edit(
        form(&[
            ("prompt", "a blue sky"),
            ("steps", "4"),
            ("seed", "3"),
            ("strength", "0.5"),
        ])
        .part("image", file(test_png(64, 56, None))),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let (image, text) = decode_png_b64(body["data"][0]["b64_json"].as_str().unwrap());
    assert_eq!((image.width, image.height), (64, 56));
    assert!(text.unwrap().contains("Denoising strength: 0.5"));

    // Inpainting with a mask whose transparent left half is edited.
    let mask = test_png(64, 64, Some(&|x, _| if x < 32 { 0 } else { 255 }));
    let response = edit(
        form(&[
            ("prompt", "a cat"),
            ("steps", "4"),
            ("seed", "3"),
            ("n", "2"),
        ])
        .part("image", file(test_png(64, 64, None)))
        .part("mask", file(mask)),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 2);

    // Without a mask, the image's own transparency is the mask (OpenAI's dall-e-2 behaviour).
    let response = edit(
        form(&[("prompt", "a cat"), ("steps", "4"), ("seed", "3")]).part(
            "image[]",
            file(test_png(64, 64, Some(&|x, _| if x < 32 { 0 } else { 255 }))),
        ),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let (_, text) = decode_png_b64(body["data"][0]["b64_json"].as_str().unwrap());
    assert!(
        text.unwrap().contains("Denoising strength: 1.0"),
        "inpainting defaults to full strength"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn edit_errors_name_the_field() {
    let t = start().await;
    let cases: Vec<(reqwest::multipart::Form, &str)> = vec![
        (form(&[("prompt", "x")]), "image"),
        (
            form(&[]).part("image", file(test_png(8, 8, None))),
            "prompt",
        ),
        (
            form(&[("prompt", "x")]).part("image", file(b"not an image".to_vec())),
            "image",
        ),
        (
            form(&[("prompt", "x"), ("n", "many")]).part("image", file(test_png(8, 8, None))),
            "n",
        ),
        (
            form(&[("prompt", "x"), ("strength", "2")]).part("image", file(test_png(64, 64, None))),
            "strength",
        ),
        (
            form(&[("prompt", "x"), ("colour", "red")]).part("image", file(test_png(8, 8, None))),
            "colour",
        ),
        (
            form(&[("prompt", "x")])
                .part("image", file(test_png(8, 8, None)))
                .part("image", file(test_png(8, 8, None))),
            "image",
        ),
        (
            form(&[("prompt", "x")])
                .part("image", file(test_png(8, 8, None)))
                .part("mask", file(b"GIF89a".to_vec())),
            "mask",
        ),
    ];
    for (form, param) in cases {
        let response = t
            .client
            .post(t.url("/v1/images/edits"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_error(status, &body, 400, Some(param));
    }
    // Not multipart at all.
    let (status, body) = t.post("/v1/images/edits", &json!({"prompt": "x"})).await;
    assert_error(status, &body, 400, None);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn models_lists_the_served_models() {
    let t = start().await;
    let (status, body) = t.get("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(body["object"], "list");
    let model = &body["data"][0];
    assert_eq!(model["id"], "sd1");
    assert_eq!(model["object"], "model");
    assert_eq!(model["default_width"], 64);
    assert_eq!(model["scheduler"], "PNDMScheduler");
    assert!(
        !body.to_string().contains("fixtures"),
        "paths are never shown"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_model_by_id_and_unknown_ones_named() {
    let t = start().await;
    let (status, model) = t.get("/v1/models/sd1").await;
    assert_eq!(status, 200, "{model}");
    assert_eq!(
        (&model["id"], &model["object"], &model["owned_by"]),
        (&json!("sd1"), &json!("model"), &json!("diffuse"))
    );
    let (status, body) = t.get("/v1/models/dall-e-3").await;
    assert_error(status, &body, 404, Some("model"));
    assert!(body["error"]["message"].as_str().unwrap().contains("sd1"));
    t.stop().await;
}

/// OpenAI SDKs' defaults: `dall-e-3` is refused naming the served models and the alias option (or answered by
/// the aliased model), and `1024x1024` past the pixel limit names the limit and the option that raises it.
#[tokio::test(flavor = "multi_thread")]
async fn openai_model_names_and_default_sizes_get_actionable_answers() {
    let t = start().await;
    let request = json!({"model": "dall-e-3", "prompt": "x", "steps": 1, "seed": 1});
    let (status, body) = t.post("/v1/images/generations", &request).await;
    assert_error(status, &body, 400, Some("model"));
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("sd1") && message.contains("--openai-model-alias dall-e-3=MODEL"),
        "{message}"
    );
    let (status, body) = t
        .post(
            "/v1/images/generations",
            &json!({"prompt": "x", "steps": 1, "size": "1024x1024"}),
        )
        .await;
    assert_error(status, &body, 400, Some("size"));
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("--max-pixels"), "{message}");
    t.stop().await;

    let mut config = crate::common::config();
    config.openai_aliases = vec![("*".into(), "sd1".into())];
    let t = crate::common::start_with(config).await;
    for name in ["dall-e-3", "gpt-image-1"] {
        let (status, body) = t
            .post(
                "/v1/images/generations",
                &json!({"model": name, "prompt": "x", "steps": 1, "seed": 1}),
            )
            .await;
        assert_eq!(status, 200, "{name}: {body}");
        let (_, text) = decode_png_b64(body["data"][0]["b64_json"].as_str().unwrap());
        assert!(text.unwrap().contains("Model: sd1"));
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn variations_are_image_to_image_of_the_input() {
    let t = start().await;
    let input = test_png(64, 48, None);
    let response = t
        .client
        .post(t.url("/v1/images/variations"))
        .multipart(
            form(&[
                ("n", "2"),
                ("response_format", "b64_json"),
                ("seed", "5"),
                ("steps", "4"),
            ])
            .part("image", file(input.clone())),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let (image, text) = decode_png_b64(data[0]["b64_json"].as_str().unwrap());
    assert_eq!((image.width, image.height), (64, 48));
    assert!(text.unwrap().contains("Denoising strength: 0.8"));
    // A mask belongs to edits.
    let response = t
        .client
        .post(t.url("/v1/images/variations"))
        .multipart(
            form(&[])
                .part("image", file(input.clone()))
                .part("mask", file(input)),
        )
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_error(status, &body, 400, Some("mask"));
    t.stop().await;
}
