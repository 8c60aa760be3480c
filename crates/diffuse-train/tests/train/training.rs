//! `diffuse_train`: short runs lower the loss and write a pipeline diffuse loads; the same seed gives the
//! same weights; a resumed run ends where an uninterrupted one does; fine-tuning trains only the UNet; bad
//! input gives clear errors; the timestep bias draws timesteps as diffusers weighs them; a refinement phase
//! draws only low-noise timesteps with its own learning-rate schedule.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crate::common::ScratchDir;
use candle_core::{Device, Tensor};
use diffuse::loaders::{LoadOptions, PipelineFolder};
use diffuse::pipelines::{GenerationRequest, RgbImage, StableDiffusion};
use diffuse::rng::TorchCpuRng;
use diffuse::schedulers::NoiseSchedule;
use diffuse::Error;
use diffuse_train::objectives::Prediction;
use diffuse_train::shapes::{ShapeSpec, ShapesDataset};
use diffuse_train::timestep_bias::{BiasStrategy, TimestepBias, TimestepSampler};
use diffuse_train::{
    train, ModelSource, Refinement, Stage, TrainConfig, TrainEvent, TrainReport, TrainingData,
};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// A small from-scratch run: 16×16 shapes, 64 images, 4 per step.
fn small_config(out: &Path, vae_steps: usize, steps: usize) -> TrainConfig {
    let data = TrainingData::from_spec("shapes:64", 16, 3).unwrap();
    let source = ModelSource::Scratch {
        tokenizer: repo("assets/clip-tokenizer-14k"),
    };
    let mut config = TrainConfig::new(data, out.to_path_buf(), source);
    config.seed = 3;
    config.batch_size = 4;
    config.vae.batch_size = 4;
    config.vae.steps = vae_steps;
    config.denoiser.steps = steps;
    config.denoiser.warmup_steps = 2;
    config.denoiser.learning_rate = 1e-3;
    config
}

fn run(config: &TrainConfig) -> diffuse::Result<TrainReport> {
    train(config, &mut |_: &TrainEvent| ControlFlow::Continue(()))
}

fn weights(folder: &Path, component: &str) -> HashMap<String, Tensor> {
    let file = if component == "text_encoder" {
        "model.safetensors"
    } else {
        "diffusion_pytorch_model.safetensors"
    };
    candle_core::safetensors::load(folder.join(component).join(file), &Device::Cpu).unwrap()
}

fn assert_same_weights(a: &Path, b: &Path, component: &str) {
    let (wa, wb) = (weights(a, component), weights(b, component));
    assert_eq!(wa.len(), wb.len(), "{component}: tensor counts differ");
    for (name, ta) in &wa {
        let tb = &wb[name];
        let same = ta.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            == tb.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(same, "{component}: `{name}` differs");
    }
}

fn mean(values: &[f32]) -> f32 {
    values.iter().sum::<f32>() / values.len() as f32
}

#[test]
fn short_run_lowers_both_losses_and_writes_a_pipeline_diffuse_runs() {
    let out = ScratchDir::new("train-short");
    let report = run(&small_config(out.path(), 40, 40)).unwrap();
    let (vae, unet) = (&report.vae_losses, &report.denoiser_losses);
    assert_eq!((vae.len(), unet.len()), (40, 40));
    // The VAE's default L1 error falls more slowly than a squared one: a 20 % drop in 40 steps.
    assert!(
        mean(&vae[30..]) < 0.8 * mean(&vae[..10]),
        "VAE loss did not fall: first {:.4}, last {:.4}",
        mean(&vae[..10]),
        mean(&vae[30..])
    );
    assert!(
        mean(&unet[30..]) < 0.7 * mean(&unet[..10]),
        "denoising loss did not fall: first {:.4}, last {:.4}",
        mean(&unet[..10]),
        mean(&unet[30..])
    );
    let folder = PipelineFolder::open(out.path()).unwrap();
    let vae_config = folder.vae_config().unwrap();
    assert!((vae_config.scaling_factor - report.scaling_factor).abs() < 1e-12);
    let pipeline = StableDiffusion::load(&folder, &LoadOptions::default()).unwrap();
    let request = GenerationRequest {
        prompt: "a small red circle".into(),
        steps: 2,
        ..Default::default()
    };
    let generated = pipeline
        .generate(&request, &mut TorchCpuRng::new(0), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(
        (generated.images[0].width, generated.images[0].height),
        (16, 16)
    );
}

#[test]
fn same_seed_same_weights_and_resume_continues_exactly() {
    let first = ScratchDir::new("train-seed-a");
    let second = ScratchDir::new("train-seed-b");
    let mut config = small_config(first.path(), 6, 6);
    config.checkpoint_every = Some(4);
    run(&config).unwrap();
    let mut again = small_config(second.path(), 6, 6);
    again.checkpoint_every = Some(4);
    run(&again).unwrap();
    for component in ["unet", "vae", "text_encoder"] {
        assert_same_weights(first.path(), second.path(), component);
    }
    // Resuming from step 4 (inside the VAE stage) and step 8 (inside the denoiser stage) ends on the same
    // weights as the uninterrupted run.
    for step in [4, 8] {
        let resumed = ScratchDir::new(&format!("train-resume-{step}"));
        let mut config = small_config(resumed.path(), 6, 6);
        config.resume = Some(
            first
                .path()
                .join("checkpoints")
                .join(format!("step-{step:06}.safetensors")),
        );
        let report = run(&config).unwrap();
        assert_eq!(
            report.vae_losses.len() + report.denoiser_losses.len(),
            12 - step
        );
        for component in ["unet", "vae", "text_encoder"] {
            assert_same_weights(first.path(), resumed.path(), component);
        }
    }
}

#[test]
fn zero_terminal_snr_trains_v_prediction_to_the_pure_noise_timestep() {
    let dir = ScratchDir::new("train-zero-snr");
    let mut config = small_config(&dir.path().join("eps"), 2, 2);
    config.denoiser.zero_terminal_snr = Some(true);
    let err = run(&config).unwrap_err().to_string();
    assert!(
        err.contains("denoiser.zero_terminal_snr") && err.contains("v_prediction"),
        "{err}"
    );
    let mut config = small_config(&dir.path().join("v"), 2, 2);
    config.denoiser.zero_terminal_snr = Some(true);
    config.denoiser.prediction = Some(Prediction::VPrediction);
    config.denoiser.min_snr_gamma = None;
    run(&config).unwrap();
    let folder = PipelineFolder::open(&dir.path().join("v")).unwrap();
    let scheduler = folder.scheduler_config().unwrap();
    assert_eq!(scheduler.rescale_betas_zero_snr, Some(true));
    assert_eq!(scheduler.timestep_spacing.as_deref(), Some("trailing"));
    assert_eq!(scheduler.prediction_type.as_deref(), Some("v_prediction"));
    // The schedule the run trained on ends at zero signal: its last timestep is pure noise.
    let schedule = NoiseSchedule::from_config(&scheduler).unwrap();
    let last = *schedule.alphas_cumprod().last().unwrap();
    assert!(last.abs() < 1e-6, "alphas_cumprod[999] = {last}");
}

#[test]
fn resuming_a_checkpoint_of_another_architecture_is_a_clear_error() {
    let dir = ScratchDir::new("train-arch");
    let mut config = small_config(&dir.path().join("a"), 2, 0);
    config.checkpoint_every = Some(2);
    run(&config).unwrap();
    let data = TrainingData::from_spec("shapes:64", 32, 3).unwrap();
    let mut other = small_config(&dir.path().join("b"), 2, 2);
    other.data = data;
    other.resume = Some(dir.path().join("a/checkpoints/step-000002.safetensors"));
    let err = run(&other).unwrap_err().to_string();
    assert!(
        err.contains("another architecture")
            && err.contains("sample_size")
            && err.contains("step-000002"),
        "{err}"
    );
    let mut not_a_checkpoint = small_config(&dir.path().join("c"), 2, 2);
    not_a_checkpoint.resume = Some(repo(
        "tests/fixtures/models/sd1/unet/diffusion_pytorch_model.safetensors",
    ));
    let err = run(&not_a_checkpoint).unwrap_err().to_string();
    assert!(err.contains("not a diffuse training checkpoint"), "{err}");
}

fn write_png(path: &Path, width: usize, height: usize, pixel: impl Fn(usize, usize) -> [u8; 3]) {
    let mut pixels = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            pixels.extend(pixel(x, y));
        }
    }
    RgbImage {
        width,
        height,
        pixels,
    }
    .save_png(path, None)
    .unwrap();
}

fn open_error(folder: &Path) -> String {
    TrainingData::from_spec(folder.to_str().unwrap(), 16, 0)
        .unwrap_err()
        .to_string()
}

#[test]
fn bad_data_folders_are_clear_errors() {
    let dir = ScratchDir::new("train-bad-data");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(
        open_error(&empty).contains("no images found"),
        "{}",
        open_error(&empty)
    );

    let missing = dir.path().join("missing");
    let err = open_error(&missing);
    assert!(
        err.contains("missing") && err.contains("no such data folder"),
        "{err}"
    );

    let file = dir.path().join("file.txt");
    std::fs::write(&file, "x").unwrap();
    assert!(
        open_error(&file).contains("not a folder"),
        "{}",
        open_error(&file)
    );

    let uncaptioned = dir.path().join("uncaptioned");
    std::fs::create_dir(&uncaptioned).unwrap();
    write_png(&uncaptioned.join("a.png"), 4, 4, |_, _| [1, 2, 3]);
    std::fs::write(uncaptioned.join("a.txt"), "a caption").unwrap();
    write_png(&uncaptioned.join("b.png"), 4, 4, |_, _| [1, 2, 3]);
    let err = open_error(&uncaptioned);
    assert!(
        err.contains("b.png") && err.contains("has no caption"),
        "{err}"
    );

    let listed = dir.path().join("listed");
    std::fs::create_dir(&listed).unwrap();
    std::fs::write(
        listed.join("metadata.jsonl"),
        "{\"file_name\": \"gone.png\", \"text\": \"x\"}\n",
    )
    .unwrap();
    let err = open_error(&listed);
    assert!(
        err.contains("metadata.jsonl") && err.contains("gone.png"),
        "{err}"
    );
    std::fs::write(listed.join("metadata.jsonl"), "{\"file_name\": \"a.png\"\n").unwrap();
    let err = open_error(&listed);
    assert!(
        err.contains("metadata.jsonl") && err.contains("line 1"),
        "{err}"
    );

    // An image that cannot be decoded is named when training reads it.
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("a.png"), b"not a png").unwrap();
    std::fs::write(broken.join("a.txt"), "a caption").unwrap();
    let mut config = small_config(&dir.path().join("out"), 2, 2);
    config.data = TrainingData::from_spec(broken.to_str().unwrap(), 16, 0).unwrap();
    let err = run(&config).unwrap_err().to_string();
    assert!(
        err.contains("a.png") && err.contains("not a readable image"),
        "{err}"
    );
}

#[test]
fn a_non_writable_output_folder_is_a_clear_error() {
    let dir = ScratchDir::new("train-bad-out");
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "x").unwrap();
    let config = small_config(&blocker.join("out"), 2, 2);
    let err = run(&config).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("a-file/out"), "{err}");
}

#[test]
fn folder_images_are_resized_and_center_cropped_with_their_captions() {
    let dir = ScratchDir::new("train-folder");
    // 48×16: red left third, green middle third, blue right third; the 16×16 center crop is green.
    write_png(&dir.path().join("wide.png"), 48, 16, |x, _| match x / 16 {
        0 => [255, 0, 0],
        1 => [0, 255, 0],
        _ => [0, 0, 255],
    });
    std::fs::write(dir.path().join("wide.txt"), "a green square\n").unwrap();
    let data = TrainingData::from_spec(dir.path().to_str().unwrap(), 8, 0).unwrap();
    let (image, caption) = data.get(0).unwrap();
    assert_eq!(caption, "a green square");
    assert_eq!((image.width, image.height), (8, 8));
    assert!(image
        .pixels
        .chunks(3)
        .all(|p| p[1] > 200 && p[0] < 60 && p[2] < 60));

    std::fs::write(
        dir.path().join("metadata.jsonl"),
        "{\"file_name\": \"wide.png\", \"text\": \"listed caption\"}\n",
    )
    .unwrap();
    let data = TrainingData::from_spec(dir.path().to_str().unwrap(), 8, 0).unwrap();
    assert_eq!(
        (data.len(), data.get(0).unwrap().1.as_str()),
        (1, "listed caption")
    );
}

#[test]
fn fine_tuning_trains_the_unet_and_keeps_the_text_encoder_and_vae() {
    let dir = ScratchDir::new("train-finetune");
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    for (i, color) in [[200, 30, 30], [30, 30, 200]].iter().enumerate() {
        write_png(&data_dir.join(format!("{i}.png")), 64, 64, |x, y| {
            if (16..48).contains(&x) && (16..48).contains(&y) {
                *color
            } else {
                [240, 240, 240]
            }
        });
        std::fs::write(data_dir.join(format!("{i}.txt")), "a square").unwrap();
    }
    let source = repo("tests/fixtures/models/sd1");
    let out = dir.path().join("out");
    let data = TrainingData::from_spec(data_dir.to_str().unwrap(), 64, 0).unwrap();
    let mut config = TrainConfig::new(
        data,
        out.clone(),
        ModelSource::Pretrained {
            folder: source.clone(),
        },
    );
    config.batch_size = 2;
    config.denoiser.steps = 3;
    config.denoiser.learning_rate = 1e-3;
    config.denoiser.warmup_steps = 0;
    config.ema_decay = None;
    let report = run(&config).unwrap();
    assert!(report.vae_losses.is_empty());
    assert_eq!(report.denoiser_losses.len(), 3);
    for (component, file) in [
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"),
    ] {
        let a = std::fs::read(source.join(component).join(file)).unwrap();
        let b = std::fs::read(out.join(component).join(file)).unwrap();
        assert!(a == b, "{component} changed");
    }
    let before = weights(&source, "unet");
    let after = weights(&out, "unet");
    assert_eq!(before.len(), after.len());
    let changed = before.iter().any(|(name, t)| {
        let a = t.to_dtype(candle_core::DType::F32).unwrap();
        (a - &after[name])
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    });
    assert!(changed, "the UNet did not change");
    StableDiffusion::load(
        &PipelineFolder::open(&out).unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
}

#[test]
fn shapes_items_are_deterministic_captioned_and_never_held_out() {
    let data = ShapesDataset::new(500, 32, 11);
    let again = ShapesDataset::new(500, 32, 11);
    for i in 0..data.len() {
        let (spec, parts, _) = data.spec(i);
        assert!(!spec.is_held_out(), "item {i} is a held-out combination");
        assert_eq!(data.get(i), again.get(i));
        assert_eq!(data.get(i).1, spec.caption_with(parts));
    }
    let held = ShapeSpec::held_out();
    assert!(
        held.len() > 100,
        "only {} held-out combinations",
        held.len()
    );
    assert_eq!(
        held[0].caption().split(' ').count(),
        held[0].caption().split_whitespace().count()
    );
    let spec = ShapeSpec {
        shape: diffuse_train::shapes::Shape::Circle,
        color: 0,
        background: 4,
        position: diffuse_train::shapes::Position::TopLeft,
        large: false,
    };
    assert_eq!(
        spec.caption(),
        "a small red circle at the top left on a blue background"
    );
}

/// The timestep bias gives diffusers' `generate_timestep_weights` probabilities (every timestep weight 1, the
/// biased ones times the multiplier, normalized), the sampler draws timesteps in those proportions (within
/// 0.01 over 200,000 draws), no bias keeps the uniform draw, and bad settings name their flag.
#[test]
fn timestep_bias_weights_and_sampling() {
    let bias = |strategy, multiplier, portion, begin, end| TimestepBias {
        strategy,
        multiplier,
        portion,
        begin,
        end,
    };
    let earlier = bias(BiasStrategy::Earlier, 3.0, 0.5, 0, 1000);
    let w = earlier.weights(1000).unwrap().unwrap();
    assert_eq!(w.len(), 1000);
    assert!((w[0] - 3.0 / 2000.0).abs() < 1e-12 && (w[499] - w[0]).abs() < 1e-15);
    assert!((w[500] - 1.0 / 2000.0).abs() < 1e-12 && (w[999] - w[500]).abs() < 1e-15);
    let later = bias(BiasStrategy::Later, 2.0, 0.25, 0, 1000)
        .weights(1000)
        .unwrap()
        .unwrap();
    assert!((later[749] - 1.0 / 1250.0).abs() < 1e-12 && (later[750] - 2.0 / 1250.0).abs() < 1e-12);
    let range = bias(BiasStrategy::Range, 4.0, 0.25, 200, 300)
        .weights(1000)
        .unwrap()
        .unwrap();
    assert!((range[199] - 1.0 / 1300.0).abs() < 1e-12 && (range[200] - 4.0 / 1300.0).abs() < 1e-12);
    assert!((range[300] - range[199]).abs() < 1e-15);
    for weights in [&w, &later, &range] {
        assert!((weights.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }
    assert!(TimestepBias::default().weights(1000).unwrap().is_none());

    let sampler = TimestepSampler::new(&earlier, 1000).unwrap();
    let mut rng = TorchCpuRng::new(11);
    let draws = 200_000;
    let early = (0..draws)
        .filter(|_| sampler.sample(&mut rng) < 500)
        .count();
    let share = early as f64 / draws as f64;
    assert!((share - 0.75).abs() < 0.01, "share below 500: {share}");
    let uniform = TimestepSampler::new(&TimestepBias::default(), 1000).unwrap();
    let (mut a, mut b) = (TorchCpuRng::new(5), TorchCpuRng::new(5));
    for _ in 0..100 {
        assert_eq!(uniform.sample(&mut a), b.next_u32() as usize % 1000);
    }

    let message = |b: TimestepBias| b.validate().unwrap_err().to_string();
    assert!(message(bias(BiasStrategy::Earlier, 0.0, 0.5, 0, 1000))
        .contains("denoiser.timestep_bias.multiplier"));
    assert!(message(bias(BiasStrategy::Later, 2.0, 1.5, 0, 1000))
        .contains("denoiser.timestep_bias.portion"));
    assert!(message(bias(BiasStrategy::Range, 2.0, 0.5, 600, 400))
        .contains("denoiser.timestep_bias.begin"));
    let too_far = bias(BiasStrategy::Range, 2.0, 0.5, 0, 1200).weights(1000);
    assert!(too_far
        .unwrap_err()
        .to_string()
        .contains("denoiser.timestep_bias.end"));
}

/// Splitting each batch across worker threads (data parallelism) trains the same model: with 3 workers on
/// batches of 4 (shares of 2, 1 and 1 images) every loss of a short run, and so every gradient step before
/// it, matches the single-thread run to 1e-4 relative, and the run repeats exactly.
#[test]
fn data_parallel_workers_give_the_single_thread_losses() {
    let single = ScratchDir::new("train-workers-1");
    let split = ScratchDir::new("train-workers-3");
    let split_again = ScratchDir::new("train-workers-3-again");
    let one = run(&small_config(single.path(), 4, 4)).unwrap();
    let mut config = small_config(split.path(), 4, 4);
    config.workers = 3;
    let three = run(&config).unwrap();
    let pairs = one
        .vae_losses
        .iter()
        .chain(&one.denoiser_losses)
        .zip(three.vae_losses.iter().chain(&three.denoiser_losses));
    for (step, (a, b)) in pairs.enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * a.abs().max(1e-3),
            "step {}: loss {b} with 3 workers, {a} with one",
            step + 1
        );
    }
    config.output = split_again.path().to_path_buf();
    run(&config).unwrap();
    for component in ["unet", "vae", "text_encoder"] {
        assert_same_weights(split.path(), split_again.path(), component);
    }
}

/// A refinement phase runs after the UNet steps with its own warm-up and peak learning rate (read back from the
/// step reports), counts in the stage's progress, and draws its timesteps only below its limit, uniformly
/// (200,000 draws, the share below half the limit within 0.01 of 0.5); a limit of 0 or past the schedule's
/// 1000 timesteps names `--refine-max-timestep`, and a run with one fails before its first step.
#[test]
fn refinement_phase_draws_low_timesteps_with_its_own_learning_rate() {
    let out = ScratchDir::new("train-refine");
    let mut config = small_config(out.path(), 2, 4);
    config.denoiser.refinement = Some(Refinement {
        steps: 4,
        learning_rate: 2e-4,
        max_timestep: 300,
        batch_size: None,
    });
    let mut steps = Vec::new();
    let report = train(&config, &mut |event: &TrainEvent| {
        if let TrainEvent::Step(step) = event {
            if step.stage == Stage::Denoiser {
                steps.push((step.stage_step, step.stage_total, step.learning_rate));
            }
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(report.denoiser_losses.len(), 8);
    // Warm-up of 2 steps, then cosine over the rest: 1e-3 peak for the first 4 steps, 2e-4 for the last 4.
    let expected = [0.0, 5e-4, 1e-3, 5e-4, 0.0, 1e-4, 2e-4, 1e-4];
    for (i, (&(step, total, lr), want)) in steps.iter().zip(expected).enumerate() {
        assert_eq!((step, total), (i + 1, 8));
        assert!(
            (lr - want).abs() < 1e-12,
            "step {step}: lr {lr}, expected {want}"
        );
    }
    assert_eq!(steps.len(), 8);

    let sampler = TimestepSampler::below(300, 1000).unwrap();
    let mut rng = TorchCpuRng::new(7);
    let draws: Vec<usize> = (0..200_000).map(|_| sampler.sample(&mut rng)).collect();
    assert!(draws.iter().all(|&t| t < 300));
    let low = draws.iter().filter(|&&t| t < 150).count() as f64 / draws.len() as f64;
    assert!((low - 0.5).abs() < 0.01, "share below 150: {low}");
    for limit in [0, 1001] {
        let message = TimestepSampler::below(limit, 1000).unwrap_err().to_string();
        assert!(
            message.contains("denoiser.refinement.max_timestep"),
            "{message}"
        );
    }
    config.denoiser.refinement = Some(Refinement {
        steps: 4,
        learning_rate: 2e-4,
        max_timestep: 0,
        batch_size: None,
    });
    let message = config.validate().unwrap_err().to_string();
    assert!(
        message.contains("denoiser.refinement.max_timestep"),
        "{message}"
    );
    config.denoiser.refinement = Some(Refinement {
        steps: 4,
        learning_rate: 2e-4,
        max_timestep: 300,
        batch_size: Some(0),
    });
    let message = config.validate().unwrap_err().to_string();
    assert!(
        message.contains("denoiser.refinement.batch_size"),
        "{message}"
    );
    config.denoiser.refinement = Some(Refinement {
        steps: 4,
        learning_rate: 2e-4,
        max_timestep: 1001,
        batch_size: None,
    });
    let message = run(&config).unwrap_err().to_string();
    assert!(
        message.contains("denoiser.refinement.max_timestep"),
        "{message}"
    );
}
