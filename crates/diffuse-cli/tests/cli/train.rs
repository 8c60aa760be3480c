//! `diffuse train`: a tiny run writes a pipeline folder; bad input fails with a message naming the culprit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("diffuse-cli-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .arg("train")
        .args(args)
        .output()
        .unwrap()
}

fn tokenizer() -> String {
    repo("assets/clip-tokenizer-14k").display().to_string()
}

#[test]
fn a_tiny_run_writes_a_pipeline_folder() {
    let dir = scratch("tiny");
    let out = dir.join("model");
    let result = train(&[
        "--data",
        "shapes:8",
        "--tokenizer",
        &tokenizer(),
        "--out",
        out.to_str().unwrap(),
        "--resolution",
        "16",
        "--vae-steps",
        "2",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--vae-batch-size",
        "2",
        "--save-dtype",
        "f16",
    ]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("done in"), "{stderr}");
    for file in [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "scheduler/scheduler_config.json",
    ] {
        assert!(out.join(file).is_file(), "missing {file}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_fails_with_a_clear_message() {
    let dir = scratch("bad");
    let out = dir.join("out");
    let out = out.to_str().unwrap();
    let missing = train(&[
        "--data",
        "/nonexistent/images",
        "--tokenizer",
        &tokenizer(),
        "--out",
        out,
    ]);
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(
        err.contains("/nonexistent/images") && err.contains("no such data folder"),
        "{err}"
    );

    let images = dir.join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::write(images.join("cat.png"), b"png bytes").unwrap();
    let uncaptioned = train(&[
        "--data",
        images.to_str().unwrap(),
        "--tokenizer",
        &tokenizer(),
        "--out",
        out,
    ]);
    let err = String::from_utf8_lossy(&uncaptioned.stderr);
    assert!(!uncaptioned.status.success());
    assert!(
        err.contains("cat.png") && err.contains("no caption"),
        "{err}"
    );

    let no_source = train(&["--data", "shapes", "--out", out]);
    assert!(!no_source.status.success());
    assert!(String::from_utf8_lossy(&no_source.stderr).contains("--tokenizer"));

    let tokenizer = tokenizer();
    let zero_snr_epsilon = train(&[
        "--data",
        "shapes:4",
        "--tokenizer",
        &tokenizer,
        "--out",
        out,
        "--zero-terminal-snr",
    ]);
    let err = String::from_utf8_lossy(&zero_snr_epsilon.stderr);
    assert!(!zero_snr_epsilon.status.success());
    assert!(
        err.contains("--zero-terminal-snr") && err.contains("v_prediction"),
        "{err}"
    );

    let not_a_pipeline = train(&[
        "--data",
        "shapes:4",
        "--from",
        dir.to_str().unwrap(),
        "--out",
        out,
    ]);
    let err = String::from_utf8_lossy(&not_a_pipeline.stderr);
    assert!(!not_a_pipeline.status.success());
    assert!(err.contains("model_index.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
