//! The bundled model (models/diffuse-tiny): small, loadable by diffusers with the same image (reference from
//! `tools/fixtures/make_fixtures.py bundled`), and following prompts whose combinations it never saw, judged
//! by the image statistics in `judge/`.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::common::{fixtures, get, load_reference, relative_error};
use diffuse::device::Quantization;
use diffuse::loaders::{LoadOptions, PipelineFolder};
use diffuse::pipelines::{GenerationRequest, InitImage, RgbImage, StableDiffusion};
use diffuse::rng::{BoxMullerKernel, TorchCpuRng};
use diffuse_train::shapes::{Position, Shape, ShapeSpec, ShapesDataset};
use serde_json::Value;

/// Denoising steps of the prompt-following checks (DPM++ 2M, the folder's scheduler).
const STEPS: usize = 15;
/// Classifier-free guidance of the prompt-following checks.
const GUIDANCE: f64 = 7.5;
/// Held-out captions generated.
const CAPTIONS: usize = 50;
/// What the issue asks of held-out captions: [shape color, background, position, shape]. Chance: 1/7, 1/8,
/// 1/5 and 1/4.
const TARGETS: [f64; 4] = [0.9, 0.9, 0.8, 0.6];
/// The names of the four checks, in the same order.
const CHECKS: [&str; 4] = ["shape color", "background", "position", "shape"];

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/diffuse-tiny")
}

fn pipeline() -> &'static StableDiffusion {
    pipeline_quantized(None)
}

/// The bundled model, its UNet quantized as `quantize` says.
fn pipeline_quantized(quantize: Option<Quantization>) -> &'static StableDiffusion {
    static PIPELINES: [OnceLock<StableDiffusion>; 2] = [OnceLock::new(), OnceLock::new()];
    PIPELINES[usize::from(quantize.is_some())].get_or_init(|| {
        let folder = PipelineFolder::open(&model_dir()).unwrap();
        let opts = LoadOptions {
            quantize,
            ..LoadOptions::default()
        };
        StableDiffusion::load(&folder, &opts).unwrap()
    })
}

fn generate(request: &GenerationRequest, seed: u64) -> Vec<RgbImage> {
    generate_with(pipeline(), request, seed)
}

fn generate_with(pipe: &StableDiffusion, request: &GenerationRequest, seed: u64) -> Vec<RgbImage> {
    pipe.generate(request, &mut TorchCpuRng::new(seed), &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap()
    .images
}

fn text_to_image(prompt: &str, negative: &str, seed: u64) -> RgbImage {
    generate(&caption_request(prompt, negative), seed).remove(0)
}

fn caption_request(prompt: &str, negative: &str) -> GenerationRequest {
    GenerationRequest {
        prompt: prompt.into(),
        negative_prompt: negative.into(),
        steps: STEPS,
        guidance_scale: GUIDANCE,
        ..Default::default()
    }
}

/// The judge reads the training images themselves correctly: the checks measure the image, not the model.
#[test]
fn judge_reads_rendered_shapes() {
    let data = ShapesDataset::new(400, 32, 7);
    let mut wrong = Vec::new();
    for i in 0..data.len() {
        let (spec, _, jitter) = data.spec(i);
        let reading = crate::judge::read(&spec.render(32, jitter));
        if reading.color != Some(spec.color)
            || reading.background != spec.background
            || reading.position != Some(spec.position)
            || reading.shape != Some(spec.shape)
        {
            wrong.push(format!("{spec:?} read as {reading:?}"));
        }
    }
    assert!(wrong.is_empty(), "misread training images: {wrong:#?}");
}

#[test]
fn the_bundled_folder_is_small() {
    fn size(path: &std::path::Path) -> u64 {
        std::fs::read_dir(path)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    size(&e.path())
                } else {
                    e.metadata().unwrap().len()
                }
            })
            .sum()
    }
    let bytes = size(&model_dir());
    assert!(
        bytes < 20_000_000,
        "models/diffuse-tiny holds {bytes} bytes"
    );
}

/// diffusers (`StableDiffusionPipeline.from_pretrained` on the same folder) gives the same latents and image.
#[test]
fn diffusers_draws_the_same_image_from_the_bundled_folder() {
    let case: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures("bundled").join("case.json")).unwrap(),
    )
    .unwrap();
    let request = GenerationRequest {
        prompt: case["prompt"].as_str().unwrap().into(),
        negative_prompt: case["negative_prompt"].as_str().unwrap().into(),
        steps: case["steps"].as_u64().unwrap() as usize,
        guidance_scale: case["guidance"].as_f64().unwrap(),
        num_images: case["num_images"].as_u64().unwrap() as usize,
        ..Default::default()
    };
    let seed = case["seed"].as_u64().unwrap();
    let out = pipeline()
        .generate(
            &request,
            &mut TorchCpuRng::with_kernel(seed, BoxMullerKernel::Avx2),
            &mut |_| ControlFlow::Continue(()),
        )
        .unwrap();
    let reference = load_reference(&fixtures("bundled").join("reference.safetensors"));
    let latent_error = relative_error(&out.latents, get(&reference, "latents"));
    assert!(
        latent_error < 1e-3,
        "latents off diffusers by {latent_error:.2e}"
    );
    let expected = get(&reference, "images")
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let actual: Vec<u8> = out.images.iter().flat_map(|i| i.pixels.clone()).collect();
    assert_eq!(actual.len(), expected.len());
    let worst = actual
        .iter()
        .zip(&expected)
        .map(|(a, e)| a.abs_diff(*e))
        .max()
        .unwrap_or(0);
    assert!(
        worst <= 2,
        "a pixel channel differs by {worst} from diffusers'"
    );
}

/// How many of the 50 held-out captions (combinations of shape, color, position and background never seen in
/// training) come out right: [shape color, background, position, shape]. Chance: 1/7, 1/8, 1/5 and 1/4.
fn held_out_scores() -> &'static [usize; 4] {
    &held_out_images(None).0
}

/// The held-out scores and images of the bundled model with its UNet quantized as `quantize` says.
fn held_out_images(quantize: Option<Quantization>) -> &'static ([usize; 4], Vec<RgbImage>) {
    static SCORES: [OnceLock<([usize; 4], Vec<RgbImage>)>; 2] = [OnceLock::new(), OnceLock::new()];
    SCORES[usize::from(quantize.is_some())].get_or_init(|| {
        let held = ShapeSpec::held_out();
        let mut right = [0usize; 4];
        let mut misses = Vec::new();
        let mut images = Vec::new();
        for i in 0..CAPTIONS {
            let spec = held[i * held.len() / CAPTIONS];
            let request = caption_request(&spec.caption(), "");
            let image = generate_with(pipeline_quantized(quantize), &request, i as u64).remove(0);
            let r = crate::judge::read(&image);
            let checks = [
                r.color == Some(spec.color),
                r.background == spec.background,
                r.position == Some(spec.position),
                r.shape == Some(spec.shape),
            ];
            for (k, ok) in checks.iter().enumerate() {
                right[k] += usize::from(*ok);
            }
            if checks.contains(&false) {
                misses.push(format!("{}: {checks:?}", spec.caption()));
            }
            images.push(image);
        }
        eprintln!(
            "held-out captions right (of {CAPTIONS}, UNet {}): color {}, background {}, position {}, shape {}\n{}",
            quantize.map_or("f32", Quantization::name),
            right[0],
            right[1],
            right[2],
            right[3],
            misses.join("\n")
        );
        (right, images)
    })
}

/// The targets of the issue: the shape's color and the background right in ≥ 90 % of held-out captions, the
/// position in ≥ 80 %, the shape in ≥ 60 % (the bundled model: 49, 50, 48 and 30 of 50).
#[test]
fn follows_held_out_prompts() {
    let right = held_out_scores();
    for ((what, &right), &share) in CHECKS.iter().zip(right).zip(&TARGETS) {
        let got = right as f64 / CAPTIONS as f64;
        assert!(
            got >= share,
            "{what} right in {:.0} % of held-out captions, expected at least {:.0} %",
            100.0 * got,
            100.0 * share
        );
    }
}

/// With the shape's color and the background left open, the negative prompt "red" lowers the share of red
/// pixels by half or more (the bundled model: 0.310 → 0.112 over 8 seeds).
#[test]
fn negative_prompt_red_lowers_red() {
    let prompt = "a large circle";
    let (mut plain, mut negative) = (0f32, 0f32);
    for seed in 0..8 {
        plain += crate::judge::red_fraction(&text_to_image(prompt, "", 100 + seed));
        negative += crate::judge::red_fraction(&text_to_image(prompt, "red", 100 + seed));
    }
    eprintln!(
        "red share without / with the negative prompt: {:.4} / {:.4}",
        plain / 8.0,
        negative / 8.0
    );
    assert!(plain > 0.0, "no red at all without the negative prompt");
    assert!(
        negative < 0.5 * plain,
        "red share {negative} vs {plain} without the negative prompt"
    );
}

/// Seeds per input of the image-to-image check.
const IMAGE_TO_IMAGE_SEEDS: u64 = 8;

/// Image-to-image at strength 0.3 from two rendered inputs, each with a prompt that asks for the same shape in
/// another place, color and background, over [`IMAGE_TO_IMAGE_SEEDS`] seeds: (input, output) pairs.
fn image_to_image_pairs() -> Vec<(RgbImage, RgbImage)> {
    let inputs = [
        ShapeSpec {
            shape: Shape::Square,
            color: 4,
            background: 2,
            position: Position::TopLeft,
            large: true,
        },
        ShapeSpec {
            shape: Shape::Triangle,
            color: 0,
            background: 6,
            position: Position::BottomRight,
            large: true,
        },
    ];
    let mut pairs = Vec::new();
    for spec in inputs {
        let input = spec.render(32, [0.0; 3]);
        let asked = ShapeSpec {
            color: 3,
            background: 5,
            position: Position::Center,
            ..spec
        };
        for seed in 0..IMAGE_TO_IMAGE_SEEDS {
            let request = GenerationRequest {
                prompt: asked.caption(),
                steps: STEPS,
                guidance_scale: GUIDANCE,
                init: Some(InitImage {
                    image: input.clone(),
                    strength: 0.3,
                    mask: None,
                }),
                ..Default::default()
            };
            pairs.push((input.clone(), generate(&request, 7 + seed).remove(0)));
        }
    }
    pairs
}

/// Image-to-image at strength 0.3 keeps the input's layout — the shape's position, and a mask overlapping the
/// input's by more than half — in every one of 16 generations against a prompt that asks for another
/// position, color and background (the bundled model: overlap 0.51–0.86).
#[test]
fn image_to_image_at_low_strength_keeps_the_layout() {
    let mut failures = Vec::new();
    for (k, (input, output)) in image_to_image_pairs().iter().enumerate() {
        let (before, after) = (crate::judge::read(input), crate::judge::read(output));
        let overlap = crate::judge::mask_overlap(input, output);
        if after.position != before.position || overlap <= 0.5 {
            failures.push(format!(
                "generation {k}: position {:?} → {:?}, mask overlap {overlap:.2}",
                before.position, after.position
            ));
        }
    }
    assert!(failures.is_empty(), "layout lost: {failures:#?}");
}

/// The UNet in int8 (`--quantize int8`) follows the held-out captions as well as in f32: no check more than 2 of
/// 50 below f32's, and its images, while not f32's, stay close (PSNR over the 50 images stated in
/// BENCHMARKS.md; here at least 25 dB). Skipped on a CPU without AVX512-VNNI.
#[test]
fn int8_follows_held_out_prompts_as_well_as_f32() {
    if !diffuse::internals::kernels::int8_gemm::available() {
        eprintln!("skipped: this CPU has no AVX512-VNNI");
        return;
    }
    let (f32_right, f32_images) = held_out_images(None);
    let (int8_right, int8_images) = held_out_images(Some(Quantization::Int8));
    for ((what, &f), &q) in CHECKS.iter().zip(f32_right).zip(int8_right) {
        assert!(
            q + 2 >= f,
            "{what}: {q} of {CAPTIONS} in int8 against {f} in f32"
        );
    }
    let (mut squared, mut count) = (0f64, 0usize);
    for (a, b) in f32_images.iter().zip(int8_images) {
        for (x, y) in a.pixels.iter().zip(&b.pixels) {
            squared += (f64::from(*x) - f64::from(*y)).powi(2);
            count += 1;
        }
    }
    // int8 must change the images (else the test shows nothing), but not by much.
    assert!(
        squared > 0.0,
        "the int8 UNet gave f32's images: it did not run in int8"
    );
    let psnr = 10.0 * (255f64.powi(2) / (squared / count as f64)).log10();
    eprintln!("PSNR of the int8 held-out images against f32's: {psnr:.2} dB");
    assert!(psnr >= 25.0, "PSNR {psnr:.2} dB");
}
