//! TAESD (diffusers' `AutoencoderTiny`) against diffusers: its decoder on fixed latents, and the sd1 tiny pipeline
//! generating with it as its VAE (`tests/fixtures/taesd`, written by `make_fixtures.py taesd`).

use std::ops::ControlFlow;

use crate::common::{assert_close, fixtures, get, load_reference, relative_error};
use diffuse::loaders::tiny_vae::load_tiny_decoder;
use diffuse::loaders::LoadOptions;
use diffuse::pipelines::{GenerationRequest, RgbImage, StableDiffusion};
use diffuse::rng::TorchCpuRng;
use diffuse::schedulers::scheduler_config_for;

fn tiny_decoder() -> diffuse::models::vae::TinyDecoder {
    let folder = fixtures("taesd").join("taesd");
    load_tiny_decoder(
        folder.to_str().unwrap(),
        &LoadOptions::default(),
        "tiny decoder",
    )
    .unwrap()
}

#[test]
fn the_tiny_decoder_equals_diffusers() {
    let reference = load_reference(&fixtures("taesd").join("decode.safetensors"));
    let decoded = tiny_decoder().decode(get(&reference, "latents")).unwrap();
    assert_close("TAESD decode", &decoded, get(&reference, "decoded"), 1e-4);
}

fn generate(pipe: &StableDiffusion) -> diffuse::pipelines::Generated {
    let text = std::fs::read_to_string(fixtures("taesd").join("case.json")).unwrap();
    let case: serde_json::Value = serde_json::from_str(&text).unwrap();
    let request = GenerationRequest {
        prompt: case["prompt"].as_str().unwrap().into(),
        negative_prompt: case["negative_prompt"].as_str().unwrap().into(),
        steps: case["steps"].as_u64().unwrap() as usize,
        guidance_scale: case["guidance"].as_f64().unwrap(),
        width: Some(case["width"].as_u64().unwrap() as usize),
        height: Some(case["height"].as_u64().unwrap() as usize),
        scheduler: Some(
            scheduler_config_for(case["scheduler"].as_str().unwrap(), &pipe.scheduler).unwrap(),
        ),
        ..Default::default()
    };
    let mut noise = TorchCpuRng::new(case["seed"].as_u64().unwrap());
    pipe.generate(&request, &mut noise, &mut |_| ControlFlow::Continue(()))
        .unwrap()
}

fn pixels(images: &[RgbImage]) -> Vec<u8> {
    images
        .iter()
        .flat_map(|i| i.pixels.iter().copied())
        .collect()
}

#[test]
fn a_pipeline_decoding_with_taesd_equals_diffusers() {
    let model = fixtures("models").join("sd1");
    let plain =
        StableDiffusion::from_pretrained(model.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let vae_images = pixels(&generate(&plain).images);
    let pipe = plain.with_tiny_decoder(tiny_decoder()).unwrap();
    let generated = generate(&pipe);
    let reference = load_reference(&fixtures("taesd").join("pipeline.safetensors"));
    assert!(relative_error(&generated.latents, get(&reference, "latents")) < 1e-3);
    let expected = get(&reference, "images")
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let got = pixels(&generated.images);
    assert_eq!(got.len(), expected.len());
    let worst = got
        .iter()
        .zip(&expected)
        .map(|(a, e)| a.abs_diff(*e))
        .max()
        .unwrap();
    assert!(
        worst <= 1,
        "TAESD images differ from diffusers' by {worst}/255"
    );
    // The decoder matters: the VAE's images of the same latents are far from TAESD's.
    let moved = vae_images
        .iter()
        .zip(&got)
        .filter(|(a, b)| a.abs_diff(**b) > 8)
        .count();
    assert!(
        moved * 2 > got.len(),
        "TAESD changed only {moved} of {} values",
        got.len()
    );
    // Previews decode with TAESD too: the final latents' preview is the final image.
    let preview = pipe.preview(&generated.latents, 0, 1).unwrap();
    assert_eq!(preview, generated.images[0]);
}

#[test]
fn a_folder_that_is_not_taesd_is_refused_by_name() {
    let vae = fixtures("models").join("sd1").join("vae");
    let err = load_tiny_decoder(
        vae.to_str().unwrap(),
        &LoadOptions::default(),
        "tiny decoder",
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("_class_name") && err.contains("AutoencoderKL"),
        "{err}"
    );
    let err = load_tiny_decoder(
        "/nonexistent/taesd",
        &LoadOptions::default(),
        "tiny decoder",
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("/nonexistent/taesd"), "{err}");
}
