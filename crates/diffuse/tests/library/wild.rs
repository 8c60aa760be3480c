//! Folders in the wild (tests/fixtures/wild, written by `tools/fixtures/make_fixtures.py wild`): every scheduler
//! class saved by diffusers (Python's JSON, `-Infinity` included), tokenizers in every layout and special-token
//! spelling transformers reads, fp16 variants and shards, configs with unknown keys, non-finite numbers and
//! nulls, and the published configs of the pipelines people download with tiny weights. Each loads and gives
//! diffusers' final latents for the same seed; what transformers refuses is refused, naming the file and key.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crate::common::{copy_dir, fixtures, get, load_reference, relative_error, ScratchDir};
use diffuse::loaders::{LoadOptions, PipelineFolder, Variant};
use diffuse::models::clip::tokenizer::ClipTokenizer;
use diffuse::pipelines::{GenerationRequest, InitImage, RgbImage, StableDiffusion};
use diffuse::rng::{BoxMullerKernel, TorchCpuRng};
use diffuse::schedulers::scheduler_config_for;
use serde_json::Value;

/// Final latents: max abs error relative to the reference's max abs value.
const LATENT_TOLERANCE: f64 = 1e-4;

fn wild() -> PathBuf {
    fixtures("wild")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The folder of `case` as the fixture script gave it to diffusers: the wild folder itself, or the base fixture
/// with the wild folder's components in place of its own (assembled under `scratch`).
fn case_folder(case: &Value, scratch: &Path) -> PathBuf {
    let folder = wild().join(case["folder"].as_str().unwrap());
    let Some(base) = case["base"].as_str() else {
        return folder;
    };
    let into = scratch.join(case["name"].as_str().unwrap());
    copy_dir(&fixtures("models").join(base), &into);
    for entry in std::fs::read_dir(&folder).unwrap() {
        let entry = entry.unwrap();
        let target = into.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::remove_dir_all(&target).ok();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
    into
}

/// The case's request; its `scheduler`, when set, is `Class.from_config(pipe.scheduler.config)`.
fn request(case: &Value, pipe: &StableDiffusion) -> diffuse::Result<GenerationRequest> {
    let s = |k: &str| case[k].as_str().map(String::from);
    let u = |k: &str| case[k].as_u64().map(|v| v as usize);
    let input = |file: String| RgbImage::open(&fixtures("pipelines").join(file), "image").unwrap();
    let scheduler = match s("scheduler") {
        Some(class) => Some(scheduler_config_for(&class, &pipe.scheduler)?),
        None => None,
    };
    Ok(GenerationRequest {
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
        scheduler,
        init: s("image").map(|file| InitImage {
            image: input(file),
            strength: case["strength"].as_f64().unwrap(),
            mask: s("mask").map(input),
        }),
        latents: None,
        // The default, A1111's syntax: prompts without syntax in one chunk give diffusers' result.
        ..Default::default()
    })
}

/// Loads and runs every case whose name starts with `prefix`; returns the failures.
fn run_cases(prefix: &str) -> Vec<String> {
    let cases = read_json(&wild().join("cases.json"));
    let scratch = ScratchDir::new(&format!("wild-{prefix}"));
    let mut failures = Vec::new();
    let mut count = 0;
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        if !name.starts_with(prefix) {
            continue;
        }
        count += 1;
        let folder = case_folder(case, scratch.path());
        let opts = LoadOptions {
            variant: match case["variant"].as_str() {
                Some("fp16") => Variant::Fp16,
                _ => Variant::Default,
            },
            ..LoadOptions::default()
        };
        let generated = PipelineFolder::open(&folder)
            .and_then(|f| StableDiffusion::load(&f, &opts))
            .and_then(|pipe| {
                let mut rng =
                    TorchCpuRng::with_kernel(case["seed"].as_u64().unwrap(), BoxMullerKernel::Avx2);
                pipe.generate(&request(case, &pipe)?, &mut rng, &mut |_| {
                    ControlFlow::Continue(())
                })
            });
        let out = match generated {
            Ok(out) => out,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let reference = load_reference(&wild().join(format!("{name}.safetensors")));
        let error = relative_error(&out.latents, get(&reference, "latents"));
        eprintln!("{name}: latents {error:.2e}");
        if error > LATENT_TOLERANCE {
            failures.push(format!("{name}: latents {error:.2e}"));
        }
    }
    assert!(count > 0, "no case starts with {prefix}");
    failures
}

#[test]
fn every_saved_scheduler_class_matches_diffusers() {
    let failures = run_cases("scheduler_");
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_pipelines_scheduler_rewrites_change_the_result() {
    // The SD pipeline's rewrite of a DDIM config without steps_offset and clip_sample holds for the folder's
    // own scheduler and is undone by from_config: the two references differ, so the cases above can fail.
    let latents =
        |name: &str| load_reference(&wild().join(format!("scheduler_{name}.safetensors")));
    let own = latents("ddim_missing_keys");
    let switched = latents("ddim_missing_keys_then_ddim");
    let error = relative_error(get(&own, "latents"), get(&switched, "latents"));
    assert!(error > 0.1, "rewritten and default DDIM agree: {error:.2e}");
}

#[test]
fn tokenizers_in_every_layout_and_spelling_match_diffusers() {
    let failures = run_cases("tokenizer_");
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn fp16_variants_shards_and_extra_keys_match_diffusers() {
    let failures = run_cases("weights_");
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn published_pipeline_configs_match_diffusers() {
    let failures = run_cases("published_");
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_saved_dpm_solver_config_holds_minus_infinity() {
    // The first reproduction: what diffusers writes after the seed's `from_config` line.
    let path = wild().join("schedulers/dpm_multistep/scheduler/scheduler_config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"lambda_min_clipped\": -Infinity"), "{text}");
    let config = diffuse::schedulers::SchedulerConfig::from_file(&path).unwrap();
    assert_eq!(config.lambda_min_clipped, Some(f64::NEG_INFINITY));
}

#[test]
fn tokenizer_ids_match_transformers() {
    let all = read_json(&wild().join("tokenizer_cases.json"));
    let prompts: Vec<&str> = all["small_prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let folders = all["folders"].as_object().unwrap();
    assert!(folders.len() >= 7);
    for (name, reference) in folders {
        let tok =
            ClipTokenizer::from_folder(wild().join("tokenizers").join(name).join("tokenizer"))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        let ids = |key: &str| reference[key].as_u64().unwrap() as u32;
        assert_eq!(
            (tok.pad_id(), tok.bos_id(), tok.eos_id()),
            (ids("pad_id"), ids("bos_id"), ids("eos_id")),
            "{name}: pad, bos, eos ids"
        );
        let batch = tok.encode_batch(&prompts).unwrap();
        for ((prompt, case), tokens) in prompts
            .iter()
            .zip(reference["cases"].as_array().unwrap())
            .zip(&batch)
        {
            let want: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(tokens.ids, want, "{name}: {prompt:?}");
        }
    }
}

#[test]
fn tokenizers_transformers_refuses_are_refused_naming_file_and_key() {
    let all = read_json(&wild().join("tokenizer_cases.json"));
    let refused = all["refused"].as_object().unwrap();
    assert!(refused.len() >= 2);
    for (name, transformers_said) in refused {
        let folder = wild().join("tokenizers").join(name).join("tokenizer");
        let err = match ClipTokenizer::from_folder(&folder) {
            Ok(_) => panic!("{name} was accepted; transformers said {transformers_said}"),
            Err(e) => e.to_string(),
        };
        for needle in ["tokenizer_config.json", "_token", "\"content\""] {
            assert!(err.contains(needle), "{name}: `{needle}` not in {err}");
        }
    }
}
