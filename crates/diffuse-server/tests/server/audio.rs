//! Audio jobs through the native API on the tiny AudioLDM fixture, served next to an image model: the WAV equals
//! diffusers' waveform, the spectrogram comes as the job's image, image-only fields and the image APIs are
//! refused for the audio model by field, and `/v1/models` tells the two kinds apart.

use std::path::PathBuf;

use crate::common::{assert_error, config, decode_png, start_with, TestServer};
use diffuse::pipelines::wav::decode_wav;
use diffuse_server::ModelSpec;
use serde_json::json;

fn audioldm() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/audioldm"
    ))
}

async fn start() -> TestServer {
    let mut config = config();
    config.models.push(ModelSpec {
        name: "audio".into(),
        path: audioldm().join("tiny"),
    });
    start_with(config).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_audio_job_answers_the_diffusers_waveform_as_wav() {
    let t = start().await;
    // The fixtures' "ddim" case; guidance 2.5 is AudioLDM's default.
    let (status, job) = t
        .post(
            "/v1/jobs",
            &json!({"model": "audio", "prompt": "rain on a tin roof", "audio_length_s": 0.02, "steps": 4, "seed": 42}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let done = t.wait_job(&id, |j| j["state"] == "succeeded").await;
    assert_eq!(done["progress"]["total"], 4);
    let output = &done["images"][0];
    let wav_url = output["audio"]["url"].as_str().unwrap();
    assert_eq!(wav_url, format!("/v1/jobs/{id}/audio/0.wav"));
    let response = t.client.get(t.url(wav_url)).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "audio/wav");
    let wav = decode_wav(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(wav.sample_rate, 16000);
    assert_eq!(wav.comment.as_deref(), output["parameters"].as_str());

    let reference = candle_core::safetensors::load(
        audioldm().join("pipeline.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let expected = reference["ddim.waveform"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(wav.samples.len(), expected.len());
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = wav
        .samples
        .iter()
        .zip(&expected)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff <= 1e-3 * scale,
        "waveform differs by {diff} (scale {scale})"
    );

    // The image of an audio output is its spectrogram: frames across, mel bins up.
    let png = t
        .client
        .get(t.url(output["url"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let (picture, text) = decode_png(&png);
    assert_eq!((picture.width, picture.height), (80, 16));
    assert!(text.unwrap().contains("Audio length: 0.02"));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audio_models_refuse_image_fields_and_image_apis() {
    let t = start().await;
    for (field, value) in [
        ("width", json!(64)),
        ("image", json!("AAAA")),
        ("loras", json!([])),
        ("clip_skip", json!(2)),
    ] {
        let mut body = json!({"model": "audio", "prompt": "rain"});
        body[field] = value;
        let (status, error) = t.post("/v1/jobs", &body).await;
        assert_error(status, &error, 400, Some(field));
    }
    let (status, error) = t
        .post(
            "/v1/jobs",
            &json!({"model": "audio", "prompt": "rain", "audio_length_s": 0}),
        )
        .await;
    assert_error(status, &error, 400, Some("audio_length_s"));
    let (status, error) = t
        .post(
            "/v1/jobs",
            &json!({"model": "sd1", "prompt": "rain", "audio_length_s": 1}),
        )
        .await;
    assert_error(status, &error, 400, Some("audio_length_s"));
    let (status, error) = t
        .post(
            "/v1/images/generations",
            &json!({"model": "audio", "prompt": "rain"}),
        )
        .await;
    assert_error(status, &error, 400, Some("model"));
    let (status, models) = t.get("/v1/models").await;
    assert_eq!(status, 200);
    let kinds: Vec<(&str, &str)> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds, [("sd1", "image"), ("audio", "audio")]);
    assert_eq!(models["data"][1]["default_audio_length_s"], 0.016);
    t.stop().await;
}
