//! LoRAs and embeddings through the server: A1111's `/sdapi/v1/loras` and `/sdapi/v1/embeddings` list the
//! folders, prompt tags and the native `loras` field apply LoRAs by name (never by path), an embedding's trigger
//! word applies it, and each moves the image.

use crate::common::{assert_error, config, decode_png_b64, start_with};
use serde_json::{json, Value};

fn lora_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/loras/files"
    ))
}

#[tokio::test]
async fn loras_are_listed_and_applied_by_name() {
    let mut cfg = config();
    cfg.lora_dir = Some(lora_dir());
    cfg.embeddings_dir = Some(lora_dir().join("../../embeddings/files"));
    let t = start_with(cfg).await;

    let (status, listed) = t.get("/sdapi/v1/loras").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"kohya_attn") && names.contains(&"loha"),
        "{listed}"
    );
    let first = &listed[0];
    assert_eq!(first["alias"], first["name"]);
    // Paths inside the LoRA folder only: the server's own paths are not shown.
    assert!(!first["path"].as_str().unwrap().starts_with('/'), "{first}");

    // Embeddings: those that fit the model are loaded, the others skipped with the reason.
    let (status, embeddings) = t.get("/sdapi/v1/embeddings").await;
    assert_eq!(status, 200);
    assert_eq!(embeddings["loaded"]["fixtri"]["vectors"], 2, "{embeddings}");
    assert_eq!(embeddings["loaded"]["fixtri"]["shape"], 32, "{embeddings}");
    let skipped_wide = embeddings["skipped"]["wide"]["error"].as_str().unwrap();
    assert!(skipped_wide.contains("width 64"), "{embeddings}");
    assert!(embeddings["skipped"]["xltri"].is_object(), "{embeddings}");

    let txt2img =
        |prompt: &str| json!({"prompt": prompt, "steps": 2, "seed": 5, "width": 64, "height": 64});
    let image = |body: &Value| decode_png_b64(body["images"][0].as_str().unwrap());
    let (status, plain) = t.post("/sdapi/v1/txt2img", &txt2img("a red circle")).await;
    assert_eq!(status, 200, "{plain}");
    let (status, tagged) = t
        .post(
            "/sdapi/v1/txt2img",
            &txt2img("a red circle <lora:kohya_attn:0.8>"),
        )
        .await;
    assert_eq!(status, 200, "{tagged}");
    let (plain_image, _) = image(&plain);
    let (tagged_image, parameters) = image(&tagged);
    assert!(
        plain_image.pixels != tagged_image.pixels,
        "the LoRA must move the image"
    );
    assert!(parameters.unwrap().contains("<lora:kohya_attn:0.8>"));

    // The native `loras` field gives the same image as the native job with the tag.
    let server = &t;
    let job_image = |body: Value| async move {
        let t = server;
        let (status, job) = t.post("/v1/jobs", &body).await;
        assert_eq!(status, 202, "{job}");
        let id = job["id"].as_str().unwrap().to_string();
        let done = t.wait_job(&id, |j| j["state"] == "succeeded").await;
        let url = done["images"][0]["url"].as_str().unwrap().to_string();
        let bytes = t
            .client
            .get(t.url(&url))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        crate::common::decode_png(&bytes).0
    };
    let job = |prompt: &str, loras: Value| json!({"prompt": prompt, "steps": 2, "seed": 5, "width": 64, "height": 64, "loras": loras});
    let by_field = (job_image)(job(
        "a red circle",
        json!([{"name": "kohya_attn", "weight": 0.8}]),
    ))
    .await;
    let by_tag = job_image(job("a red circle <lora:kohya_attn:0.8>", json!([]))).await;
    let without = job_image(job("a red circle", json!([]))).await;
    assert!(
        by_field.pixels == by_tag.pixels,
        "the field and the tag must agree"
    );
    assert!(
        by_field.pixels != without.pixels,
        "the LoRA must move the image"
    );
    // An embedding's trigger word, from the embeddings folder, moves the image too.
    let embedded = job_image(job("a photo of fixtri", json!([]))).await;
    let spelled = job_image(job("a photo of fixtri", json!([]))).await;
    assert!(embedded.pixels == spelled.pixels);
    let as_text = job_image(job("a photo of fix tri", json!([]))).await;
    assert!(
        embedded.pixels != as_text.pixels,
        "the embedding must move the image"
    );

    // Names only, never paths; unknown names are refused with the folder's names.
    for (loras, fragment) in [
        (json!([{"name": "../files/kohya_attn"}]), "never by a path"),
        (json!([{"name": "/etc/passwd"}]), "never by a path"),
        (json!([{"name": "missing"}]), "kohya_attn"),
        (json!([{"name": "kohya_attn", "weight": "heavy"}]), "loras"),
    ] {
        let (status, body) = t
            .post(
                "/v1/jobs",
                &json!({"prompt": "x", "steps": 1, "loras": loras}),
            )
            .await;
        assert!(status == 400 || status == 422, "{loras}: {status} {body}");
        assert!(body.to_string().contains(fragment), "{loras}: {body}");
    }
    let (status, body) = t
        .post("/sdapi/v1/txt2img", &txt2img("x <lora:missing:1>"))
        .await;
    assert_error(status, &body, 400, Some("loras"));
    assert!(
        !body.to_string().contains(lora_dir().to_str().unwrap()),
        "{body}"
    );
    let (status, body) = t
        .post("/sdapi/v1/txt2img", &txt2img("x <lora:kohya_attn:nan>"))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("not a finite number"), "{body}");
    t.stop().await;
}
