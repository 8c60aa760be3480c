//! `diffuse generate` end to end on the tiny sd1 fixture pipeline: outputs, metadata, replay, latents in and
//! out, and every bad input giving a clear message and a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures(area: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(area)
}

fn sd1() -> String {
    fixtures("models").join("sd1").display().to_string()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("diffuse-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn diffuse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args(args)
        .env(
            "XDG_CACHE_HOME",
            std::env::temp_dir().join("diffuse-cli-cache"),
        )
        .output()
        .unwrap()
}

/// The largest absolute difference between the `latents` tensors of two safetensors files.
fn latents_difference(ours: &Path, reference: &Path) -> f32 {
    let load = |p: &Path| candle_core::safetensors::load(p, &candle_core::Device::Cpu).unwrap();
    let (ours, reference) = (load(ours), load(reference));
    (&ours["latents"] - &reference["latents"])
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn fails_with(args: &[&str], expected: &[&str]) {
    let out = diffuse(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = stderr(&out);
    for part in expected {
        assert!(
            err.contains(part),
            "{args:?}: `{err}` does not mention `{part}`"
        );
    }
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
}

/// Without `--model` (and without `DIFFUSE_MODEL`) the bundled model draws the README's first image.
#[test]
fn the_bundled_model_is_the_default() {
    let dir = scratch("default-model");
    let out = dir.join("circle.png");
    let run = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args([
            "generate",
            "a red circle at the top left on a blue background",
            "--seed",
            "1",
            "--steps",
            "8",
            "-o",
        ])
        .arg(&out)
        .env_remove("DIFFUSE_MODEL")
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let info = diffuse(&["info", out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("Model: diffuse-tiny"), "{text}");
    assert!(text.contains("Size: 32x32"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn writes_pngs_with_parameters_and_replays_them() {
    let dir = scratch("replay");
    let out = dir.join("img.png");
    let model = sd1();
    let o = out.to_str().unwrap();
    let run = diffuse(&[
        "generate",
        "a red circle",
        "--model",
        &model,
        "--steps",
        "4",
        "--width",
        "64",
        "--height",
        "48",
        "--seed",
        "7",
        "--num-images",
        "2",
        "--scheduler",
        "DPM++ 2M Karras",
        "--negative-prompt",
        "blurry",
        "-o",
        o,
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let first = dir.join("img-1.png");
    let second = dir.join("img-2.png");
    assert!(first.is_file() && second.is_file());

    let info = diffuse(&["info", second.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&info.stdout);
    for part in [
        "a red circle\nNegative prompt: blurry\n",
        "Steps: 4, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 7, Size: 64x48",
        "Model: sd1",
        "RNG: CPU",
        "Batch size: 2, Batch pos: 1",
    ] {
        assert!(text.contains(part), "missing `{part}` in {text}");
    }

    let replayed = dir.join("again.png");
    let run = diffuse(&[
        "generate",
        "--replay",
        second.to_str().unwrap(),
        "--model",
        &model,
        "-o",
        replayed.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let open = |p: &Path| diffuse::pipelines::RgbImage::open(p, "image").unwrap();
    assert_eq!(open(&second), open(&replayed), "the replayed image differs");

    // Settings given with --replay replace the PNG's (and are announced); the rest still come from it.
    let changed = dir.join("changed.png");
    let run = diffuse(&[
        "generate",
        "--replay",
        second.to_str().unwrap(),
        "--model",
        &model,
        "--seed",
        "9",
        "--steps",
        "3",
        "-o",
        changed.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("with --steps, --seed as given"),
        "{}",
        stderr(&run)
    );
    let direct = dir.join("direct.png");
    let run = diffuse(&[
        "generate",
        "a red circle",
        "--model",
        &model,
        "--steps",
        "3",
        "--width",
        "64",
        "--height",
        "48",
        "--seed",
        "9",
        "--num-images",
        "2",
        "--scheduler",
        "DPM++ 2M Karras",
        "--negative-prompt",
        "blurry",
        "-o",
        direct.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(open(&changed), open(&dir.join("direct-2.png")));
    assert_ne!(
        open(&changed),
        open(&second),
        "the overrides changed nothing"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Replaying an inpainting result needs its mask: the PNG says it was inpainted, and the replay says so
/// instead of running image-to-image without it.
#[test]
fn replaying_an_inpainting_result_asks_for_the_mask() {
    let dir = scratch("replay-inpaint");
    let model = sd1();
    let input = dir.join("in.png");
    let mask = dir.join("mask.png");
    for (path, value) in [(&input, 128u8), (&mask, 255u8)] {
        diffuse::pipelines::RgbImage {
            width: 64,
            height: 64,
            pixels: vec![value; 64 * 64 * 3],
        }
        .save_png(path, None)
        .unwrap();
    }
    let out = dir.join("inpainted.png");
    let (i, m, o) = (
        input.to_str().unwrap(),
        mask.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let run = diffuse(&[
        "generate", "a tower", "--model", &model, "--steps", "2", "--seed", "1", "--image", i,
        "--mask", m, "-o", o,
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let again = dir.join("again.png");
    let a = again.to_str().unwrap();
    fails_with(
        &[
            "generate", "--replay", o, "--model", &model, "--image", i, "-o", a,
        ],
        &["inpainting result", "--mask"],
    );
    let run = diffuse(&[
        "generate", "--replay", o, "--model", &model, "--image", i, "--mask", m, "-o", a,
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let open = |p: &Path| diffuse::pipelines::RgbImage::open(p, "image").unwrap();
    assert_eq!(open(&out), open(&again));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn saved_latents_equal_diffusers_and_feed_back_in() {
    let dir = scratch("latents");
    let latents = dir.join("latents.safetensors");
    // The fixture case t2i_pndm_batch2, through the command line.
    let run = diffuse(&[
        "generate",
        "--prompt",
        "a red circle on a blue background",
        "--negative-prompt",
        "blurry",
        "--model",
        &sd1(),
        "--steps",
        "8",
        "--num-images",
        "2",
        "--width",
        "48",
        "--height",
        "64",
        "--seed",
        "42",
        "-o",
        dir.join("x.png").to_str().unwrap(),
        "--save-latents",
        latents.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let max = latents_difference(
        &latents,
        &fixtures("pipelines").join("t2i_pndm_batch2.safetensors"),
    );
    assert!(max < 1e-4, "latents differ from diffusers by {max}");

    // Zero initial latents, passed in, give a deterministic run whatever the seed.
    let zeros = dir.join("zeros.safetensors");
    let t = candle_core::Tensor::zeros(
        (1, 4, 8, 8),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("latents".to_string(), t)]),
        &zeros,
    )
    .unwrap();
    for (seed, name) in [("1", "a.png"), ("2", "b.png")] {
        let run = diffuse(&[
            "generate",
            "x",
            "--model",
            &sd1(),
            "--steps",
            "2",
            "--latents",
            zeros.to_str().unwrap(),
            "--seed",
            seed,
            "-o",
            dir.join(name).to_str().unwrap(),
        ]);
        assert!(run.status.success(), "{}", stderr(&run));
    }
    let a = diffuse::pipelines::RgbImage::open(&dir.join("a.png"), "a").unwrap();
    let b = diffuse::pipelines::RgbImage::open(&dir.join("b.png"), "b").unwrap();
    assert_eq!(a, b);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn long_prompts_are_chunked_or_truncated_as_the_syntax_says() {
    let dir = scratch("long");
    let prompt = "a very ".repeat(60) + "red circle";
    let out = dir.join("l.png");
    let model = sd1();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            prompt.as_str(),
            "--model",
            &model,
            "--steps",
            "1",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-o", out.to_str().unwrap()]);
        diffuse(&args)
    };
    // A1111's syntax (the default) reads every token, in 75-token chunks.
    let chunked = run(&[]);
    assert!(chunked.status.success(), "{}", stderr(&chunked));
    assert!(
        !stderr(&chunked).contains("truncated"),
        "{}",
        stderr(&chunked)
    );
    // Plain text is truncated as diffusers truncates it, with its warning.
    let plain = run(&["--prompt-syntax", "plain"]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    assert!(
        stderr(&plain).contains("truncated because CLIP can only handle sequences up to 77 tokens"),
        "{}",
        stderr(&plain)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_inputs_fail_clearly() {
    let dir = scratch("bad");
    let model = sd1();
    let m = model.as_str();
    let text = dir.join("not-an-image.png");
    std::fs::write(&text, "hello").unwrap();
    let img = dir.join("in.png");
    diffuse::pipelines::RgbImage {
        width: 64,
        height: 48,
        pixels: vec![128; 64 * 48 * 3],
    }
    .save_png(&img, None)
    .unwrap();
    let small_mask = dir.join("mask.png");
    diffuse::pipelines::RgbImage {
        width: 32,
        height: 32,
        pixels: vec![255; 32 * 32 * 3],
    }
    .save_png(&small_mask, None)
    .unwrap();
    let (img, text, small_mask) = (
        img.to_str().unwrap(),
        text.to_str().unwrap(),
        small_mask.to_str().unwrap(),
    );
    let out = dir.join("o.png");
    let o = out.to_str().unwrap();

    fails_with(
        &[
            "generate",
            "x",
            "--model",
            m,
            "-o",
            o,
            "--image",
            "/nonexistent/in.png",
        ],
        &["/nonexistent/in.png"],
    );
    fails_with(
        &["generate", "x", "--model", m, "-o", o, "--image", text],
        &["--image", "not a readable image"],
    );
    fails_with(
        &[
            "generate", "x", "--model", m, "-o", o, "--image", img, "--mask", small_mask,
        ],
        &["mask", "32×32", "64×48"],
    );
    fails_with(
        &["generate", "x", "--model", m, "-o", o, "--width", "100"],
        &["width", "100", "multiple of 8"],
    );
    fails_with(
        &["generate", "x", "--model", m, "-o", o, "--dtype", "f64"],
        &["invalid --dtype", "expected auto"],
    );
    fails_with(
        &["generate", "x", "--model", m, "-o", o, "--height", "8192"],
        &["height", "8192", "4096"],
    );
    fails_with(
        &["generate", "x", "--model", m, "-o", o, "--steps", "0"],
        &["steps"],
    );
    fails_with(
        &[
            "generate",
            "x",
            "--model",
            m,
            "-o",
            o,
            "--image",
            img,
            "--strength",
            "1.5",
        ],
        &["strength", "1.5"],
    );
    fails_with(
        &[
            "generate",
            "x",
            "--model",
            m,
            "-o",
            o,
            "--image",
            img,
            "--strength",
            "-0.1",
        ],
        &["strength"],
    );
    fails_with(
        &["generate", "x", "--model", m, "-o", o, "--guidance", "NaN"],
        &["guidance", "NaN"],
    );
    fails_with(
        &["generate", "x", "--model", m, "-o", o, "--guidance", "-2"],
        &["guidance", "-2"],
    );
    fails_with(
        &[
            "generate",
            "x",
            "--model",
            m,
            "-o",
            o,
            "--scheduler",
            "Eulr",
        ],
        &["unknown scheduler", "Euler a", "DPM++ 2M", "Karras"],
    );
    fails_with(
        &[
            "generate",
            "x",
            "--model",
            m,
            "-o",
            o,
            "--image",
            img,
            "--strength",
            "0.01",
            "--steps",
            "10",
        ],
        &["strength"],
    );
    fails_with(
        &["generate", "x", "--model", "/nonexistent/model", "-o", o],
        &["/nonexistent/model"],
    );
    fails_with(
        &["generate", "x", "--model", m, "-o", o, "--dtype", "f8"],
        &["dtype", "f8"],
    );
    fails_with(
        &["generate", "x", "--model", m, "-o", o, "--device", "tpu"],
        &["device", "tpu"],
    );
    fails_with(
        &[
            "generate",
            "x",
            "--model",
            m,
            "-o",
            "/nonexistent/dir/o.png",
            "--steps",
            "1",
        ],
        &["/nonexistent/dir/o.png"],
    );
    fails_with(&["generate", "--model", m, "-o", o], &["no prompt"]);
    fails_with(
        &["generate", "--model", m, "-o", o, "--replay", text],
        &["not-an-image.png"],
    );
    fails_with(
        &["generate", "x", "--model", m, "-o", o, "--replay", text],
        &["--replay", "not-an-image.png"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vae_tiling_decodes_in_tiles() {
    let dir = scratch("tiling");
    let (tiled, plain) = (dir.join("tiled.png"), dir.join("plain.png"));
    let model = sd1();
    for (path, extra) in [(&tiled, Some("--vae-tiling")), (&plain, None)] {
        let mut args = vec![
            "generate",
            "a red circle",
            "--model",
            &model,
            "--steps",
            "2",
        ];
        args.extend([
            "--width",
            "256",
            "--height",
            "192",
            "--seed",
            "5",
            "-o",
            path.to_str().unwrap(),
        ]);
        args.extend(extra);
        let run = diffuse(&args);
        assert!(run.status.success(), "{}", stderr(&run));
    }
    // The fixture VAE's tiles are 64 pixels: a 256×192 image is decoded in overlapping tiles, which changes it.
    let a = diffuse::pipelines::RgbImage::open(&tiled, "a").unwrap();
    let b = diffuse::pipelines::RgbImage::open(&plain, "b").unwrap();
    assert_eq!((a.width, a.height), (256, 192));
    assert_ne!(a.pixels, b.pixels);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--vae-decoder` decodes with TAESD: the image is diffusers' with `pipe.vae = AutoencoderTiny` (the fixture of
/// `tests/fixtures/taesd`), and a folder that is not TAESD is refused naming the flag.
#[test]
fn a_tiny_decoder_replaces_the_vae() {
    let dir = scratch("taesd");
    let out = dir.join("taesd.png");
    let taesd = fixtures("taesd").join("taesd");
    let model = sd1();
    let run = diffuse(&[
        "generate",
        "a red circle on a blue background",
        "--model",
        &model,
        "--negative-prompt",
        "blurry",
        "--steps",
        "8",
        "--seed",
        "3",
        "--width",
        "64",
        "--height",
        "48",
        "--scheduler",
        "DPMSolverMultistepScheduler",
        "--vae-decoder",
        taesd.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let image = diffuse::pipelines::RgbImage::open(&out, "out").unwrap();
    let reference = candle_core::safetensors::load(
        fixtures("taesd").join("pipeline.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let expected = reference["images"]
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let worst = image
        .pixels
        .iter()
        .zip(&expected)
        .map(|(a, e)| a.abs_diff(*e))
        .max();
    assert_eq!(image.pixels.len(), expected.len());
    assert!(
        worst <= Some(1),
        "{worst:?}/255 from diffusers' TAESD image"
    );
    let vae = fixtures("models").join("sd1").join("vae");
    fails_with(
        &[
            "generate",
            "x",
            "--model",
            &model,
            "--steps",
            "1",
            "--vae-decoder",
            vae.to_str().unwrap(),
        ],
        &["--vae-decoder", "_class_name", "AutoencoderTiny"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Settings whose numbers overflow fail naming the step and the likely cause, instead of writing a black image
/// and exiting 0; a clip skip beyond the text encoder's layers is refused before any work.
#[test]
fn diverged_generations_fail_naming_the_cause() {
    let dir = scratch("diverged");
    let model = sd1();
    let out = dir.join("o.png");
    let (m, o) = (model.as_str(), out.to_str().unwrap());
    let base = ["generate", "x", "--model", m, "-o", o, "--steps", "3"];
    let with = |extra: &[&'static str]| [&base[..], extra].concat();
    fails_with(
        &with(&["--guidance", "1e308"]),
        &[
            "diverged",
            "the latents after step 1 of",
            "guidance_scale 1e308",
        ],
    );
    fails_with(
        &with(&["--scheduler", "DDIM", "--eta", "1e9"]),
        &["diverged", "the latents after step", "eta 1e9"],
    );
    fails_with(
        &with(&["--clip-skip", "1000"]),
        &["--clip-skip", "1000", "at most"],
    );
    // Steps beyond the schedule are named by the request's flag, not the scheduler's field.
    let err = stderr(&diffuse(&[
        "generate", "x", "--model", m, "-o", o, "--steps", "2000",
    ]));
    assert!(
        err.contains("invalid --steps: 2000: at most the 1000 timesteps"),
        "{err}"
    );
    assert!(!err.contains("num_inference_steps"), "{err}");
    assert!(!out.exists(), "no image is written");
}

/// A copied (or `cargo install`ed) binary run from another folder still has its default model: the bundled
/// model is inside it and is written out to the cache once.
#[test]
fn a_moved_binary_keeps_the_bundled_model() {
    let dir = scratch("moved");
    let bin = dir.join("bin").join("diffuse");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_diffuse"), &bin).unwrap();
    let cache = dir.join("cache");
    for run in 0..2 {
        let out = Command::new(&bin)
            .args([
                "generate",
                "a red circle",
                "--steps",
                "2",
                "--seed",
                "1",
                "--quiet",
                "-o",
                "out.png",
            ])
            .current_dir(&dir)
            .env_remove("DIFFUSE_MODEL")
            .env("XDG_CACHE_HOME", &cache)
            .output()
            .unwrap();
        assert!(out.status.success(), "run {run}: {}", stderr(&out));
        assert!(dir.join("out.png").is_file());
    }
    let written: Vec<_> = std::fs::read_dir(cache.join("diffuse").join("bundled"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .join("diffuse-tiny")
                .join("model_index.json")
        })
        .collect();
    assert_eq!(written.len(), 1, "{written:?}");
    assert!(written[0].is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

/// What would fail after the work fails before it: a missing output folder, an image format diffuse does not
/// write, and a request that cannot fit in memory (naming the estimate).
#[test]
fn outputs_and_memory_are_checked_before_any_work() {
    let dir = scratch("checked-first");
    let model = sd1();
    let m = model.as_str();
    let missing = dir.join("no-such-folder").join("o.png");
    fails_with(
        &[
            "generate",
            "x",
            "--model",
            m,
            "-o",
            missing.to_str().unwrap(),
        ],
        &["--output", "no-such-folder", "does not exist"],
    );
    let latents = dir.join("no-such-folder").join("l.safetensors");
    let o = dir.join("o.png");
    fails_with(
        &[
            "generate",
            "x",
            "--model",
            m,
            "-o",
            o.to_str().unwrap(),
            "--save-latents",
            latents.to_str().unwrap(),
        ],
        &["--save-latents", "does not exist"],
    );
    let bmp = dir.join("o.bmp");
    fails_with(
        &["generate", "x", "--model", m, "-o", bmp.to_str().unwrap()],
        &["--output", "o.bmp", ".bmp images are not written", ".webp"],
    );
    fails_with(
        &[
            "generate",
            "x",
            "--model",
            m,
            "-o",
            o.to_str().unwrap(),
            "--width",
            "4096",
            "--height",
            "4096",
            "--num-images",
            "1000",
        ],
        &["1000 image(s)", "need at least", "GiB", "available"],
    );
    assert!(!o.exists() && !bmp.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// With stderr piped (a job runner, a log file) progress still shows: a line a second and one at the end.
#[test]
fn piped_progress_prints_lines() {
    let dir = scratch("piped");
    let o = dir.join("o.png");
    let out = diffuse(&[
        "generate",
        "x",
        "--model",
        &sd1(),
        "--steps",
        "4",
        "--scheduler",
        "Euler",
        "-o",
        o.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("step 1/4 (") && err.contains("step 4/4 ("),
        "{err}"
    );
    let quiet = diffuse(&[
        "generate",
        "x",
        "--model",
        &sd1(),
        "--steps",
        "4",
        "--quiet",
        "-o",
        o.to_str().unwrap(),
    ]);
    assert!(!stderr(&quiet).contains("step "), "{}", stderr(&quiet));
    let _ = std::fs::remove_dir_all(&dir);
}

/// JPEG and WebP outputs carry the parameters (EXIF, as A1111 writes them): `info` prints them and `--replay`
/// reproduces the image.
#[test]
fn jpeg_and_webp_outputs_carry_their_parameters() {
    let dir = scratch("jpeg-webp");
    let model = sd1();
    for extension in ["jpg", "webp"] {
        let out = dir.join(format!("tower.{extension}"));
        let o = out.to_str().unwrap();
        let run = diffuse(&[
            "generate", "a tower", "--model", &model, "--steps", "2", "--seed", "3", "-o", o,
        ]);
        assert!(run.status.success(), "{}", stderr(&run));
        let info = diffuse(&["info", o]);
        let text = String::from_utf8_lossy(&info.stdout);
        assert!(
            text.starts_with("a tower\nSteps: 2, ") && text.contains("Seed: 3"),
            "{text}"
        );
        let again = dir.join(format!("again.{extension}"));
        let run = diffuse(&[
            "generate",
            "--replay",
            o,
            "--model",
            &model,
            "-o",
            again.to_str().unwrap(),
        ]);
        assert!(run.status.success(), "{}", stderr(&run));
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(&again).unwrap(),
            "{extension}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn loras_apply_from_files_and_tags_and_replay() {
    let dir = scratch("loras");
    let files = fixtures("loras").join("files");
    let file = |stem: &str| {
        files
            .join(format!("{stem}.safetensors"))
            .display()
            .to_string()
    };
    let latents = dir.join("latents.safetensors");
    let image = dir.join("two.png");
    // The fixture case sd1_two_negative: two LoRAs, one with a negative weight.
    let (kohya, locon) = (
        format!("{}:0.7", file("kohya_attn")),
        format!("{}:-0.5", file("locon_conv")),
    );
    let run = diffuse(&[
        "generate",
        "a red circle",
        "--negative-prompt",
        "blurry",
        "--model",
        &sd1(),
        "--steps",
        "5",
        "--seed",
        "21",
        "--lora",
        &kohya,
        "--lora",
        &locon,
        "-o",
        image.to_str().unwrap(),
        "--save-latents",
        latents.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let diff = latents_difference(
        &latents,
        &fixtures("loras").join("sd1_two_negative.safetensors"),
    );
    assert!(diff < 1e-4, "latents differ from diffusers by {diff}");
    // The parameters name the LoRAs as A1111's tags; a replay with the LoRA folder draws the same image.
    let params = diffuse::pipelines::images::read_image_parameters(&image)
        .unwrap()
        .unwrap();
    assert!(
        params.contains("<lora:kohya_attn:0.7> <lora:locon_conv:-0.5>"),
        "{params}"
    );
    let replayed = dir.join("replayed.png");
    let run = diffuse(&[
        "generate",
        "--replay",
        image.to_str().unwrap(),
        "--model",
        &sd1(),
        "--lora-dir",
        files.to_str().unwrap(),
        "-o",
        replayed.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let open = |p: &Path| diffuse::pipelines::RgbImage::open(p, "image").unwrap();
    assert_eq!(open(&image), open(&replayed));

    let out = dir.join("x.png");
    let out = out.to_str().unwrap();
    let base = ["generate", "--model", &sd1(), "--steps", "1", "-o", out];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    for (extra, expected) in [
        (
            vec!["a cat <lora:kohya_attn:1>"],
            vec!["--lora-dir", "kohya_attn"],
        ),
        (
            vec!["a cat", "--lora", "nowhere.safetensors:0.5"],
            vec!["--lora", "nowhere.safetensors"],
        ),
        (vec!["a cat", "--lora", "style.pt"], vec!["pickle"]),
        (
            vec!["a cat", "--embedding", "easynegative.pt"],
            vec!["pickle"],
        ),
        (
            vec!["a cat", "--embedding", "nowhere.safetensors:tok"],
            vec!["--embedding", "nowhere.safetensors"],
        ),
        (
            vec!["a cat <lora:nope:1>", "--lora-dir", files.to_str().unwrap()],
            vec!["nope", "kohya_attn"],
        ),
    ] {
        let args = with(&extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&args, &expected.iter().map(|s| &**s).collect::<Vec<_>>());
    }
    // An embedding from a folder by its stem, and one given as FILE:TOKEN, draw the same image.
    let embeddings = fixtures("embeddings").join("files");
    let by_folder = dir.join("folder.png");
    let by_file = dir.join("file.png");
    let fixtri = format!("{}:fixtri", embeddings.join("fixtri.safetensors").display());
    let model = sd1();
    for (extra, path) in [
        (
            vec!["--embeddings-dir", embeddings.to_str().unwrap()],
            &by_folder,
        ),
        (vec!["--embedding", fixtri.as_str()], &by_file),
    ] {
        let mut args = vec![
            "generate",
            "a photo of fixtri",
            "--model",
            &model,
            "--steps",
            "2",
            "--seed",
            "3",
            "-o",
            path.to_str().unwrap(),
        ];
        args.extend(extra);
        let run = diffuse(&args);
        assert!(run.status.success(), "{}", stderr(&run));
    }
    assert_eq!(open(&by_folder), open(&by_file));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--quantize int8` runs the UNet in int8 (on a CPU with AVX512-VNNI): a different image from f32's, the
/// parameters say so, and `--replay` quantizes again and gives the same bytes. Bad values and combinations fail
/// naming the flag.
#[test]
fn quantize_int8_is_recorded_and_replayed() {
    fails_with(
        &[
            "generate",
            "x",
            "--quantize",
            "int4",
            "-o",
            "/tmp/never.png",
        ],
        &["--quantize", "int4", "int8"],
    );
    if !diffuse::internals::kernels::int8_gemm::available() {
        eprintln!("skipped the rest: this CPU has no AVX512-VNNI");
        return;
    }
    fails_with(
        &[
            "generate",
            "x",
            "--quantize",
            "int8",
            "--dtype",
            "bf16",
            "-o",
            "/tmp/never.png",
        ],
        &["--quantize", "f32"],
    );
    let dir = scratch("quantize");
    let (plain, quantized, replayed) = (
        dir.join("f32.png"),
        dir.join("int8.png"),
        dir.join("again.png"),
    );
    let common = [
        "generate",
        "a red circle at the top left on a blue background",
        "--seed",
        "3",
        "--steps",
        "8",
    ];
    for (path, extra) in [(&plain, &[][..]), (&quantized, &["--quantize", "int8"][..])] {
        let mut args = common.to_vec();
        args.extend(extra);
        args.extend(["-o", path.to_str().unwrap()]);
        let run = diffuse(&args);
        assert!(run.status.success(), "{}", stderr(&run));
    }
    let info = diffuse(&["info", quantized.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&info.stdout).contains("Quantization: int8"));
    let info = diffuse(&["info", plain.to_str().unwrap()]);
    assert!(!String::from_utf8_lossy(&info.stdout).contains("Quantization"));
    let pixels = |p: &Path| {
        diffuse::pipelines::RgbImage::open(p, "test")
            .unwrap()
            .pixels
    };
    assert_ne!(pixels(&plain), pixels(&quantized), "int8 drew f32's image");
    let run = diffuse(&[
        "generate",
        "--replay",
        quantized.to_str().unwrap(),
        "-o",
        replayed.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(
        pixels(&quantized),
        pixels(&replayed),
        "the replay did not quantize again"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
