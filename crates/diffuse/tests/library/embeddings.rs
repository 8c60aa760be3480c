//! Textual-inversion embeddings against diffusers' `load_textual_inversion` on the tiny pipelines
//! (tools/fixtures/fixtures_embeddings.py): A1111's `emb_params` with several vectors (by file stem from the
//! embeddings folder, in the prompt and the negative prompt), diffusers' `learned_embeds` (by its stored token),
//! and SDXL's `clip_l`/`clip_g`: final latents within 1e-4 relative, and each embedding must move them.

use std::ops::ControlFlow;
use std::path::PathBuf;

use crate::common::{fixtures, get, load_reference, relative_error};
use diffuse::loaders::{LoadOptions, PipelineFolder};
use diffuse::pipelines::{EmbeddingChoice, GenerationRequest, PromptSyntax, StableDiffusion};
use diffuse::rng::{BoxMullerKernel, TorchCpuRng};
use serde_json::Value;

/// Final latents: max abs error relative to the reference's max abs value.
const LATENT_TOLERANCE: f64 = 1e-4;
/// An embedding must move the latents by at least this much (relative).
const MOVED: f64 = 1e-2;

fn files() -> PathBuf {
    fixtures("embeddings").join("files")
}

fn cases() -> Vec<Value> {
    crate::common::cases("embeddings")
}

fn load(model: &str, with_folder: bool) -> StableDiffusion {
    let folder = PipelineFolder::open(&fixtures("models").join(model)).unwrap();
    let pipe = StableDiffusion::load(&folder, &LoadOptions::default()).unwrap();
    if with_folder {
        pipe.with_embeddings_dir(files())
    } else {
        pipe
    }
}

fn generate(
    pipe: &StableDiffusion,
    req: &GenerationRequest,
    seed: u64,
) -> diffuse::Result<candle_core::Tensor> {
    let mut rng = TorchCpuRng::with_kernel(seed, BoxMullerKernel::Avx2);
    Ok(pipe
        .generate(req, &mut rng, &mut |_| ControlFlow::Continue(()))?
        .latents)
}

fn request(case: &Value, explicit: Vec<EmbeddingChoice>) -> GenerationRequest {
    GenerationRequest {
        prompt: case["prompt"].as_str().unwrap().into(),
        negative_prompt: case["negative_prompt"].as_str().unwrap().into(),
        steps: case["steps"].as_u64().unwrap() as usize,
        guidance_scale: case["guidance"].as_f64().unwrap(),
        embeddings: explicit,
        ..Default::default()
    }
}

#[test]
fn embeddings_match_diffusers() {
    let mut failures = Vec::new();
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let model = case["model"].as_str().unwrap();
        let seed = case["seed"].as_u64().unwrap();
        // Embeddings named by their file's stem come from the folder; diffusers' learned_embeds is given as a
        // file, its trigger the token stored in it.
        let stored_token = case["embeddings"][0]["token"].is_null();
        let explicit: Vec<EmbeddingChoice> = if stored_token {
            case["embeddings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| EmbeddingChoice {
                    path: files().join(format!("{}.safetensors", e["file"].as_str().unwrap())),
                    token: None,
                })
                .collect()
        } else {
            Vec::new()
        };
        let pipe = load(model, !stored_token);
        let latents = generate(&pipe, &request(&case, explicit), seed).unwrap();
        let reference = load_reference(&fixtures("embeddings").join(format!("{name}.safetensors")));
        let expected = get(&reference, "latents");
        let error = relative_error(&latents, expected);
        let plain = generate(&load(model, false), &request(&case, Vec::new()), seed).unwrap();
        let moved = relative_error(&plain, expected);
        eprintln!("{name}: latents {error:.2e}, without the embeddings {moved:.2e}");
        if error > LATENT_TOLERANCE {
            failures.push(format!("{name}: latents {error:.2e}"));
        }
        if moved < MOVED {
            failures.push(format!(
                "{name}: the embeddings move the latents by {moved:.2e} only"
            ));
        }
        // diffusers reads embeddings in plain prompts too: the plain syntax gives the same latents.
        let mut plain_syntax = request(&case, Vec::new());
        plain_syntax.prompt_syntax = PromptSyntax::Plain;
        if !stored_token {
            let same = generate(&pipe, &plain_syntax, seed).unwrap();
            let error = relative_error(&same, expected);
            if error > LATENT_TOLERANCE {
                failures.push(format!("{name}, plain syntax: latents {error:.2e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn bad_embeddings_are_refused_with_the_reason() {
    let sd1 = load("sd1", true);
    let with = |path: &str| GenerationRequest {
        prompt: "a photo of wide".into(),
        steps: 1,
        embeddings: vec![EmbeddingChoice {
            path: PathBuf::from(path),
            token: None,
        }],
        ..Default::default()
    };
    let error = |pipe: &StableDiffusion, req: GenerationRequest| {
        generate(pipe, &req, 1).map(|_| ()).unwrap_err().to_string()
    };
    // Too wide for the text encoder (from the folder, by its stem).
    let e = error(
        &sd1,
        GenerationRequest {
            prompt: "a photo of wide".into(),
            steps: 1,
            ..Default::default()
        },
    );
    assert!(
        e.contains("wide.safetensors") && e.contains("width 64"),
        "{e}"
    );
    // An SD 1.x embedding on SDXL: no vectors for the second encoder.
    let sdxl = load("sdxl", true);
    let e = error(
        &sdxl,
        GenerationRequest {
            prompt: "fixtri".into(),
            steps: 1,
            ..Default::default()
        },
    );
    assert!(
        e.contains("fixtri.safetensors") && e.contains("clip_g"),
        "{e}"
    );
    // An SDXL embedding on SD 1.x: skipped by A1111, refused here.
    let e = error(
        &sd1,
        GenerationRequest {
            prompt: "xltri".into(),
            steps: 1,
            ..Default::default()
        },
    );
    assert!(
        e.contains("xltri.safetensors") && e.contains("SDXL embedding"),
        "{e}"
    );
    // Pickles are refused, never read; files that are not embeddings name what they hold.
    let e = error(&sd1, with("easynegative.pt"));
    assert!(e.contains("pickle"), "{e}");
    let not_one = fixtures("loras")
        .join("files")
        .join("kohya_attn.safetensors");
    let e = error(&sd1, with(not_one.to_str().unwrap()));
    assert!(e.contains("not a textual-inversion embedding"), "{e}");
}

/// A1111 also stores `string_to_param` (its `.pt` layout) in safetensors files: the same vectors under
/// `string_to_param.*` give the same latents as under `emb_params`.
#[test]
fn string_to_param_files_read_as_emb_params() {
    let case = cases()
        .into_iter()
        .find(|c| c["name"] == "sd1_a1111_multi_vector")
        .unwrap();
    let dir = std::env::temp_dir().join(format!("diffuse-embeddings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = candle_core::safetensors::load(
        files().join("fixtri.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let renamed = std::collections::HashMap::from([(
        "string_to_param.*".to_string(),
        source["emb_params"].clone(),
    )]);
    candle_core::safetensors::save(&renamed, dir.join("fixtri.safetensors")).unwrap();
    std::fs::copy(
        files().join("badneg.safetensors"),
        dir.join("badneg.safetensors"),
    )
    .unwrap();
    let folder = PipelineFolder::open(&fixtures("models").join("sd1")).unwrap();
    let pipe = StableDiffusion::load(&folder, &LoadOptions::default())
        .unwrap()
        .with_embeddings_dir(&dir);
    let latents = generate(
        &pipe,
        &request(&case, Vec::new()),
        case["seed"].as_u64().unwrap(),
    )
    .unwrap();
    let reference =
        load_reference(&fixtures("embeddings").join("sd1_a1111_multi_vector.safetensors"));
    let error = relative_error(&latents, get(&reference, "latents"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(error < LATENT_TOLERANCE, "latents {error:.2e}");
}
