//! `diffuse generate --model FILE.safetensors [--config FOLDER]` and `diffuse info FILE.safetensors` on the
//! single-file fixtures (`tools/fixtures/make_fixtures.py single_file`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures(area: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(area)
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
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_single_file_generates_what_diffusers_generates() {
    let dir = scratch("single-file-generate");
    let file = fixtures("single_file").join("sd1.safetensors");
    let latents = dir.join("latents.safetensors");
    let png = dir.join("x.png");
    // The fixture case t2i_pndm_batch2, from the single file configured by the tiny folder.
    let run = diffuse(&[
        "generate",
        "--prompt",
        "a red circle on a blue background",
        "--negative-prompt",
        "blurry",
        "--model",
        path(&file),
        "--config",
        path(&fixtures("models").join("sd1")),
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
        path(&png),
        "--save-latents",
        path(&latents),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let ours = candle_core::safetensors::load(&latents, &candle_core::Device::Cpu).unwrap();
    let reference = candle_core::safetensors::load(
        fixtures("pipelines").join("t2i_pndm_batch2.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let max = (&ours["latents"] - &reference["latents"])
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(max < 1e-4, "latents differ from diffusers by {max}");

    // AUTOMATIC1111's metadata: the checkpoint's name and the sha256 of the whole file.
    let text = diffuse::pipelines::images::read_image_parameters(&dir.join("x-1.png"))
        .unwrap()
        .unwrap();
    let hash = diffuse::loaders::hash::sha256_files(std::slice::from_ref(&file)).unwrap();
    assert!(
        text.contains("Model: sd1") && text.contains(&format!("Model hash: {}", &hash[..10])),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn info_describes_a_single_file() {
    let single = fixtures("single_file");
    let out = diffuse(&[
        "info",
        path(&single.join("sdxl.safetensors")),
        "--config",
        path(&single.join("sdxl_wide")),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    for expected in [
        "sdxl.safetensors: StableDiffusionXLPipeline",
        // The tiny encoders lack diffusers' SDXL marker (resblock 9), so it types the file `v1`, as diffusers
        // does; --config decides the rest.
        "single-file checkpoint: Stable Diffusion 1.x (diffusers type `v1`); configured by",
        "text_encoder_2  transformers.CLIPTextModelWithProjection",
        "stored as f16",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }

    // Without --config, the configuration diffusers would fetch, built in.
    let out = diffuse(&["info", path(&single.join("sd1.safetensors"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("<built-in stable-diffusion-v1-5/stable-diffusion-v1-5>")
            && text.contains("PNDMScheduler"),
        "{text}"
    );
}

#[test]
fn bad_single_file_inputs_fail_clearly() {
    let dir = scratch("single-file-bad");
    let ckpt = dir.join("model.ckpt");
    std::fs::write(&ckpt, b"PK\x03\x04").unwrap();
    let sd1_dir = fixtures("models").join("sd1");
    let o = dir.join("o.png");
    for (args, expected) in [
        (
            vec!["generate", "x", "--model", path(&ckpt), "-o", path(&o)],
            vec![
                "model.ckpt: a pickled PyTorch checkpoint",
                "never loads pickles",
                "Convert it to safetensors",
                "weights_only=True",
            ],
        ),
        (
            vec!["info", path(&ckpt)],
            vec!["model.ckpt", "never loads pickles"],
        ),
        (
            vec![
                "generate",
                "x",
                "--model",
                path(&sd1_dir),
                "--config",
                path(&sd1_dir),
                "-o",
                path(&o),
            ],
            vec!["--config", "single-file"],
        ),
        (
            vec![
                "generate",
                "x",
                "--model",
                path(&fixtures("single_file").join("sd1.safetensors")),
                "--config",
                "acme/not-cached",
                "-o",
                path(&o),
            ],
            vec!["acme/not-cached", "HF_HUB_OFFLINE"],
        ),
    ] {
        let out = diffuse(&args);
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
    let _ = std::fs::remove_dir_all(&dir);
}
