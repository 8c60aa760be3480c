//! A1111's prompt syntax (weights, nesting, escapes, BREAK, prompts beyond 75 tokens, the empty prompt, SD 2 and
//! SDXL) against the independent Python reference in tools/fixtures/fixtures_prompts.py, whose embeddings go
//! through diffusers' own pipeline: final latents within 1e-4 relative.

use std::ops::ControlFlow;

use crate::common::{fixtures, get, load_reference, relative_error};
use diffuse::loaders::{LoadOptions, PipelineFolder, Variant};
use diffuse::pipelines::{GenerationRequest, PromptSyntax, StableDiffusion};
use diffuse::rng::{BoxMullerKernel, TorchCpuRng};
use serde_json::Value;

/// Final latents: max abs error relative to the reference's max abs value.
const LATENT_TOLERANCE: f64 = 1e-4;

fn cases() -> Vec<Value> {
    crate::common::cases("prompts")
}

fn load(model: &str) -> StableDiffusion {
    let folder = PipelineFolder::open(&fixtures("models").join(model)).unwrap();
    let opts = LoadOptions {
        // The sd2 fixture holds fp16-variant files only.
        variant: if model == "sd2" {
            Variant::Fp16
        } else {
            Variant::Default
        },
        ..LoadOptions::default()
    };
    StableDiffusion::load(&folder, &opts).unwrap()
}

fn generate(pipe: &StableDiffusion, case: &Value, syntax: PromptSyntax) -> candle_core::Tensor {
    let request = GenerationRequest {
        prompt: case["prompt"].as_str().unwrap().into(),
        negative_prompt: case["negative_prompt"].as_str().unwrap().into(),
        steps: case["steps"].as_u64().unwrap() as usize,
        guidance_scale: case["guidance"].as_f64().unwrap(),
        clip_skip: case["clip_skip"].as_u64().map(|k| k as usize),
        prompt_syntax: syntax,
        ..Default::default()
    };
    let seed = case["seed"].as_u64().unwrap();
    let mut rng = TorchCpuRng::with_kernel(seed, BoxMullerKernel::Avx2);
    pipe.generate(&request, &mut rng, &mut |_| ControlFlow::Continue(()))
        .unwrap()
        .latents
}

#[test]
fn a1111_syntax_matches_the_reference() {
    let mut failures = Vec::new();
    let mut pipes = std::collections::HashMap::new();
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let model = case["model"].as_str().unwrap().to_string();
        let pipe = pipes.entry(model.clone()).or_insert_with(|| load(&model));
        let latents = generate(pipe, &case, PromptSyntax::A1111);
        let reference = load_reference(&fixtures("prompts").join(format!("{name}.safetensors")));
        let expected = get(&reference, "latents");
        let error = relative_error(&latents, expected);
        eprintln!("{name}: latents {error:.2e}");
        if error > LATENT_TOLERANCE {
            failures.push(format!("{name}: latents {error:.2e}"));
        }
        // The syntax must matter: read as plain text, the same prompts give another image.
        let plain = generate(pipe, &case, PromptSyntax::Plain);
        let moved = relative_error(&plain, expected);
        if moved < 1e-2 {
            failures.push(format!(
                "{name}: plain text gives the same latents ({moved:.2e})"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
