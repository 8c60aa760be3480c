//! End-to-end parity with diffusers' pipelines on the tiny fixtures: from the same seeds, the same final
//! latents and the same 8-bit images (cases written by `tools/fixtures/make_fixtures.py pipelines`).

use std::collections::HashMap;
use std::ops::ControlFlow;

use crate::common::{fixtures, get, load_reference, relative_error};
use candle_core::{DType, Device, Tensor};
use diffuse::loaders::{LoadOptions, PipelineFolder};
use diffuse::pipelines::{GenerationRequest, InitImage, PromptSyntax, RgbImage, StableDiffusion};
use diffuse::rng::{BoxMullerKernel, TorchCpuRng};
use diffuse::schedulers::scheduler_config_for;
use serde_json::Value;

/// Final latents: max abs error relative to the reference's max abs value.
const LATENT_TOLERANCE: f64 = 1e-3;
/// Images: at least this share of the 8-bit channel values within 1 of the reference.
const PIXEL_SHARE: f64 = 0.99;

fn model_dir(name: &str) -> std::path::PathBuf {
    if name == "sd1_inpaint" {
        fixtures("pipelines").join(name)
    } else {
        fixtures("models").join(name)
    }
}

fn request(case: &Value, pipe: &StableDiffusion) -> GenerationRequest {
    let s = |k: &str| case[k].as_str().map(String::from);
    let u = |k: &str| case[k].as_u64().map(|v| v as usize);
    let init = s("image").map(|file| InitImage {
        image: RgbImage::open(&fixtures("pipelines").join(file), "image").unwrap(),
        strength: case["strength"].as_f64().unwrap(),
        mask: s("mask").map(|m| RgbImage::open(&fixtures("pipelines").join(m), "mask").unwrap()),
    });
    GenerationRequest {
        prompt: s("prompt").unwrap(),
        negative_prompt: s("negative_prompt").unwrap_or_default(),
        steps: u("steps").unwrap(),
        guidance_scale: case["guidance"].as_f64().unwrap(),
        guidance_rescale: case["guidance_rescale"].as_f64().unwrap(),
        clip_skip: u("clip_skip"),
        width: u("width"),
        height: u("height"),
        num_images: u("num_images").unwrap(),
        eta: case["eta"].as_f64().unwrap(),
        scheduler: s("scheduler").map(|name| scheduler_config_for(&name, &pipe.scheduler).unwrap()),
        init,
        latents: None,
        // The default, A1111's syntax: prompts without syntax in one chunk give diffusers' result. A prompt
        // beyond one chunk is a case of diffusers' truncation, which A1111's syntax replaces with chunks.
        prompt_syntax: if beyond_one_chunk(pipe, &s("prompt").unwrap()) {
            PromptSyntax::Plain
        } else {
            PromptSyntax::default()
        },
        loras: Vec::new(),
        embeddings: Vec::new(),
        output: Default::default(),
    }
}

fn beyond_one_chunk(pipe: &StableDiffusion, prompt: &str) -> bool {
    let tokenizer = &pipe.text.first.as_ref().unwrap().tokenizer;
    tokenizer.tokens_of(prompt).unwrap().len() > tokenizer.max_length() - 2
}

fn close_pixel_share(actual: &[RgbImage], expected: &Tensor) -> f64 {
    let expected = expected.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let actual: Vec<u8> = actual
        .iter()
        .flat_map(|img| img.pixels.iter().copied())
        .collect();
    assert_eq!(actual.len(), expected.len(), "image sizes differ");
    let close = actual
        .iter()
        .zip(&expected)
        .filter(|(a, e)| a.abs_diff(**e) <= 1)
        .count();
    close as f64 / expected.len() as f64
}

#[test]
fn pipelines_match_diffusers() {
    let cases: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(fixtures("pipelines").join("cases.json")).unwrap(),
    )
    .unwrap();
    assert!(cases.len() >= 10);
    let mut pipes: HashMap<String, StableDiffusion> = HashMap::new();
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let model = case["model"].as_str().unwrap().to_string();
        let pipe = pipes.entry(model.clone()).or_insert_with(|| {
            let folder = PipelineFolder::open(&model_dir(&model)).unwrap();
            StableDiffusion::load(&folder, &LoadOptions::default()).unwrap()
        });
        let req = request(case, pipe);
        let mut rng =
            TorchCpuRng::with_kernel(case["seed"].as_u64().unwrap(), BoxMullerKernel::Avx2);
        let plan = pipe.plan(&req).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut steps = 0;
        let out = pipe
            .generate(&req, &mut rng, &mut |p| {
                steps += 1;
                assert_eq!(p.total, plan.steps(), "{name}: progress total");
                ControlFlow::Continue(())
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // The public plan is what the generation ran: its steps, size and latent shape.
        assert_eq!(steps, plan.steps(), "{name}: steps run against the plan");
        assert_eq!(
            out.latents.dims(),
            plan.latent_shape,
            "{name}: latent shape"
        );
        assert_eq!(
            (out.images[0].width, out.images[0].height),
            (plan.width, plan.height),
            "{name}: size"
        );
        let reference = load_reference(&fixtures("pipelines").join(format!("{name}.safetensors")));
        let latent_error = relative_error(&out.latents, get(&reference, "latents"));
        let share = close_pixel_share(&out.images, get(&reference, "images"));
        eprintln!(
            "{name}: latents {latent_error:.2e}, pixels within 1/255: {:.4}",
            share
        );
        if latent_error > LATENT_TOLERANCE || share < PIXEL_SHARE {
            failures.push(format!(
                "{name}: latents {latent_error:.2e}, pixel share {share:.4}"
            ));
        }
    }
    assert!(failures.is_empty(), "cases off diffusers: {failures:#?}");
}

#[test]
fn cancelling_from_the_callback_stops_the_generation() {
    let folder = PipelineFolder::open(&fixtures("models").join("sd1")).unwrap();
    let pipe = StableDiffusion::load(&folder, &LoadOptions::default()).unwrap();
    let req = GenerationRequest {
        prompt: "a red circle".into(),
        steps: 5,
        ..Default::default()
    };
    let mut seen = 0;
    let result = pipe.generate(&req, &mut TorchCpuRng::new(1), &mut |p| {
        seen = p.step;
        if p.step == 2 {
            ControlFlow::Break(diffuse::pipelines::Stop::Cancel)
        } else {
            ControlFlow::Continue(())
        }
    });
    assert!(matches!(result, Err(diffuse::Error::Cancelled)));
    assert_eq!(seen, 2);
}

/// `Stop::Finish` ends the generation with the step's prediction of the clean latents, decoded (A1111's
/// interrupt): closer to the full run's result than the noisy latents it stopped at.
#[test]
fn finishing_early_returns_the_predicted_clean_image() {
    let folder = PipelineFolder::open(&fixtures("models").join("sd1")).unwrap();
    let pipe = StableDiffusion::load(&folder, &LoadOptions::default()).unwrap();
    let req = GenerationRequest {
        prompt: "a red circle".into(),
        steps: 6,
        scheduler: Some(scheduler_config_for("Euler", &pipe.scheduler).unwrap()),
        ..Default::default()
    };
    let full = pipe
        .generate(&req, &mut TorchCpuRng::new(3), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    let mut noisy = None;
    let early = pipe
        .generate(&req, &mut TorchCpuRng::new(3), &mut |p| {
            if p.step == 3 {
                noisy = Some(p.latents.clone());
                ControlFlow::Break(diffuse::pipelines::Stop::Finish)
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    let noisy = noisy.unwrap();
    assert_eq!(early.images.len(), 1);
    let distance = |a: &candle_core::Tensor| -> f32 {
        (a - &full.latents)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    assert!(
        distance(&early.latents) < 0.5 * distance(&noisy),
        "finished {} vs noisy {}",
        distance(&early.latents),
        distance(&noisy)
    );
}

#[test]
fn given_latents_replace_the_drawn_ones() {
    let folder = PipelineFolder::open(&fixtures("models").join("sd1")).unwrap();
    let pipe = StableDiffusion::load(&folder, &LoadOptions::default()).unwrap();
    let shape = (1, 4, 8, 8);
    let drawn = diffuse::rng::randn_tensor(
        &mut TorchCpuRng::new(9),
        &[1, 4, 8, 8],
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let base = GenerationRequest {
        prompt: "a blue square".into(),
        steps: 3,
        ..Default::default()
    };
    let from_seed = pipe
        .generate(&base, &mut TorchCpuRng::new(9), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    let given = GenerationRequest {
        latents: Some(drawn.reshape(shape).unwrap()),
        ..base
    };
    let from_latents = pipe
        .generate(&given, &mut TorchCpuRng::new(12345), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(
        relative_error(&from_latents.latents, &from_seed.latents),
        0.0
    );
}
