//! LoRAs against diffusers on the tiny pipelines (tools/fixtures/fixtures_loras.py): kohya (diffusers' and SGM's
//! module names), LoCon, PEFT with and without alpha, two at once with a negative weight, separate text encoder
//! and UNet weights, LyCORIS LoHa and LoKr (merged by LyCORIS's formulas in the reference), and LCM-LoRA-style
//! runs: final latents within 1e-4 relative. Every LoRA must move the latents.

use std::ops::ControlFlow;
use std::path::PathBuf;

use crate::common::{fixtures, get, load_reference, relative_error};
use diffuse::device::Quantization;
use diffuse::internals::kernels::int8_gemm;
use diffuse::loaders::{LoadOptions, PipelineFolder};
use diffuse::pipelines::{GenerationRequest, LoraChoice, LoraSource, StableDiffusion};
use diffuse::rng::{BoxMullerKernel, TorchCpuRng};
use diffuse::schedulers::scheduler_config_for;
use serde_json::Value;

/// Final latents: max abs error relative to the reference's max abs value.
const LATENT_TOLERANCE: f64 = 1e-4;
/// A LoRA must move the latents by at least this much (relative), or the test proves nothing.
const MOVED: f64 = 1e-2;

fn lora_files() -> PathBuf {
    fixtures("loras").join("files")
}

fn cases() -> Vec<Value> {
    crate::common::cases("loras")
}

fn load(model: &str) -> StableDiffusion {
    load_with(model, &LoadOptions::default())
}

fn load_with(model: &str, options: &LoadOptions) -> StableDiffusion {
    let folder = PipelineFolder::open(&fixtures("models").join(model)).unwrap();
    StableDiffusion::load(&folder, options)
        .unwrap()
        .with_lora_dir(lora_files())
}

fn request(pipe: &StableDiffusion, case: &Value, with_loras: bool) -> GenerationRequest {
    let loras: Vec<LoraChoice> = case["loras"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| LoraChoice {
            source: LoraSource::File(
                lora_files().join(format!("{}.safetensors", l["name"].as_str().unwrap())),
            ),
            text_encoder_weight: l["text_encoder_weight"].as_f64().unwrap(),
            unet_weight: l["unet_weight"].as_f64().unwrap(),
        })
        .collect();
    let tags = case["via"] == "tags";
    let prompt = case["prompt"].as_str().unwrap();
    GenerationRequest {
        prompt: if with_loras || !tags {
            prompt.into()
        } else {
            prompt.split('<').next().unwrap().into()
        },
        negative_prompt: case["negative_prompt"].as_str().unwrap().into(),
        steps: case["steps"].as_u64().unwrap() as usize,
        guidance_scale: case["guidance"].as_f64().unwrap(),
        scheduler: case["scheduler"]
            .as_str()
            .map(|name| scheduler_config_for(name, &pipe.scheduler).unwrap()),
        loras: if with_loras && !tags {
            loras
        } else {
            Vec::new()
        },
        ..Default::default()
    }
}

fn generate(pipe: &StableDiffusion, req: &GenerationRequest, seed: u64) -> candle_core::Tensor {
    let mut rng = TorchCpuRng::with_kernel(seed, BoxMullerKernel::Avx2);
    pipe.generate(req, &mut rng, &mut |_| ControlFlow::Continue(()))
        .unwrap()
        .latents
}

#[test]
fn loras_match_diffusers() {
    let mut failures = Vec::new();
    let mut pipes = std::collections::HashMap::new();
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let model = case["model"].as_str().unwrap().to_string();
        let pipe = pipes.entry(model.clone()).or_insert_with(|| load(&model));
        let seed = case["seed"].as_u64().unwrap();
        let latents = generate(pipe, &request(pipe, &case, true), seed);
        let reference = load_reference(&fixtures("loras").join(format!("{name}.safetensors")));
        let expected = get(&reference, "latents");
        let error = relative_error(&latents, expected);
        let plain = generate(pipe, &request(pipe, &case, false), seed);
        let moved = relative_error(&plain, expected);
        eprintln!("{name}: latents {error:.2e}, without the LoRAs {moved:.2e}");
        if error > LATENT_TOLERANCE {
            failures.push(format!("{name}: latents {error:.2e}"));
        }
        if moved < MOVED {
            failures.push(format!(
                "{name}: the LoRAs move the latents by {moved:.2e} only"
            ));
        }
        // The text encoder layers must matter too: without them the latents differ.
        if case["changes_text_encoders"].as_bool().unwrap() {
            let mut unet_only = request(pipe, &case, true);
            for lora in &mut unet_only.loras {
                lora.text_encoder_weight = 0.0;
            }
            if !unet_only.loras.is_empty() {
                let moved = relative_error(&generate(pipe, &unet_only, seed), expected);
                eprintln!("{name}: without the text encoder layers {moved:.2e}");
                if moved < MOVED {
                    failures.push(format!(
                        "{name}: the text encoder layers move the latents by {moved:.2e} only"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn a_generation_with_loras_leaves_a_concurrent_one_without_them_alone() {
    let pipe = std::sync::Arc::new(load("sd1"));
    let case = &cases()[1];
    let plain = request(&pipe, case, false);
    let alone = generate(&pipe, &plain, 3);
    let adapted = {
        let pipe = std::sync::Arc::clone(&pipe);
        let with = request(&pipe, case, true);
        std::thread::spawn(move || generate(&pipe, &with, 3))
    };
    let beside = generate(&pipe, &plain, 3);
    let adapted = adapted.join().unwrap();
    assert_eq!(relative_error(&beside, &alone), 0.0);
    assert!(relative_error(&adapted, &alone) > MOVED);
    // And after it, the loaded pipeline is unchanged.
    assert_eq!(relative_error(&generate(&pipe, &plain, 3), &alone), 0.0);
}

/// LoRAs on a UNet quantized to int8 (`LoadOptions::quantize`): the merged UNet is rebuilt for int8 and its
/// weights packed from the merged values, not the base's. A LoRA changing convolutions (LoCon) and one changing
/// attention (kohya), after the int8 pipeline has run without them: latents within [`INT8_TOLERANCE`] of
/// diffusers' f32 reference, moved by the LoRA, and not equal to the f32 pipeline's (the int8 products ran).
#[test]
fn loras_apply_to_an_int8_unet() {
    if !int8_gemm::available() {
        eprintln!("skipped: this CPU has no AVX512-VNNI");
        return;
    }
    /// int8 against f32 on the tiny pipeline (both through the same 8-bit-per-channel rounding of every
    /// convolution and feed-forward layer wide enough for the int8 path).
    const INT8_TOLERANCE: f64 = 5e-2;
    let int8 = load_with(
        "sd1",
        &LoadOptions {
            quantize: Some(Quantization::Int8),
            ..Default::default()
        },
    );
    let f32 = load("sd1");
    let mut failures = Vec::new();
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        if !["sd1_locon", "sd1_kohya"].contains(&name) {
            continue;
        }
        let seed = case["seed"].as_u64().unwrap();
        let plain = generate(&int8, &request(&int8, &case, false), seed);
        let latents = generate(&int8, &request(&int8, &case, true), seed);
        let reference = load_reference(&fixtures("loras").join(format!("{name}.safetensors")));
        let expected = get(&reference, "latents");
        let error = relative_error(&latents, expected);
        let moved = relative_error(&plain, expected);
        let from_f32 = relative_error(&latents, &generate(&f32, &request(&f32, &case, true), seed));
        eprintln!("{name} int8: latents {error:.2e}, without the LoRAs {moved:.2e}, from f32 {from_f32:.2e}");
        if error > INT8_TOLERANCE {
            failures.push(format!(
                "{name}: int8 latents {error:.2e} from the reference"
            ));
        }
        if moved < 2.0 * error.max(MOVED) {
            failures.push(format!(
                "{name}: the LoRAs move the int8 latents by {moved:.2e} only"
            ));
        }
        if from_f32 == 0.0 {
            failures.push(format!("{name}: the int8 pipeline gave the f32 latents"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

fn error_of(pipe: &StableDiffusion, req: GenerationRequest) -> String {
    let mut rng = TorchCpuRng::new(1);
    match pipe.generate(&req, &mut rng, &mut |_| ControlFlow::Continue(())) {
        Ok(_) => panic!("{:?} should be refused", req.prompt),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_loras_are_refused_with_the_reason() {
    let pipe = load("sd1");
    let base = GenerationRequest {
        prompt: "a cat".into(),
        steps: 1,
        ..Default::default()
    };
    let with = |loras: Vec<LoraChoice>| GenerationRequest {
        loras,
        ..base.clone()
    };
    let prompt = |prompt: &str| GenerationRequest {
        prompt: prompt.into(),
        ..base.clone()
    };
    let file = |stem: &str| lora_files().join(format!("{stem}.safetensors"));
    // A LoRA for another architecture: the first layer that does not fit is named.
    let e = error_of(&pipe, with(vec![LoraChoice::file(file("sdxl_sgm"), 1.0)]));
    assert!(
        e.contains("sdxl_sgm.safetensors") && e.contains("lora_"),
        "{e}"
    );
    // A tag naming no file: the folder's names are listed.
    let e = error_of(&pipe, prompt("a cat <lora:nope:1>"));
    assert!(e.contains("nope") && e.contains("kohya_attn"), "{e}");
    // A tag without a name, and weights that are not numbers.
    for (text, expected) in [
        ("a cat <lora::1>", "name is missing"),
        ("a cat <lora:kohya_attn:nan>", "not a finite number"),
        ("a cat <lora:kohya_attn:1:inf>", "not a finite number"),
    ] {
        let e = error_of(&pipe, prompt(text));
        assert!(e.contains(expected), "{text}: {e}");
    }
    let e = error_of(
        &pipe,
        with(vec![LoraChoice::file(file("kohya_attn"), f64::NAN)]),
    );
    assert!(e.contains("loras") && e.contains("NaN"), "{e}");
    // Tags in the negative prompt, pickles, missing files and files that are not LoRAs.
    let e = error_of(
        &pipe,
        GenerationRequest {
            negative_prompt: "<lora:kohya_attn:1>".into(),
            ..base.clone()
        },
    );
    assert!(e.contains("negative_prompt"), "{e}");
    let e = error_of(&pipe, with(vec![LoraChoice::file("style.pt", 1.0)]));
    assert!(e.contains("pickle"), "{e}");
    let e = error_of(&pipe, with(vec![LoraChoice::file(file("missing"), 1.0)]));
    assert!(e.contains("missing.safetensors"), "{e}");
    let not_a_lora = fixtures("models").join("sd1/unet/diffusion_pytorch_model.safetensors");
    let e = error_of(&pipe, with(vec![LoraChoice::file(not_a_lora, 1.0)]));
    assert!(e.contains("not a LoRA key"), "{e}");
    // A LoRA named without a LoRA folder.
    let folder = PipelineFolder::open(&fixtures("models").join("sd1")).unwrap();
    let bare = StableDiffusion::load(&folder, &LoadOptions::default()).unwrap();
    let e = error_of(&bare, prompt("a cat <lora:kohya_attn:1>"));
    assert!(e.contains("no LoRA folder"), "{e}");
}
