//! `diffuse info` and `diffuse generate` on every folder in the wild (tests/fixtures/wild: files as diffusers
//! and transformers save them, and the published configs of the pipelines people download): info describes it,
//! and generate's `--save-latents` equals diffusers' final latents for the same seed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Final latents: max abs error relative to the reference's max abs value.
const LATENT_TOLERANCE: f32 = 1e-4;

fn fixtures(area: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(area)
}

fn diffuse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args(args)
        .output()
        .unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The case's folder: the wild folder, or the base fixture with the wild folder's components in place.
fn case_folder(case: &serde_json::Value, scratch: &Path) -> PathBuf {
    let folder = fixtures("wild").join(case["folder"].as_str().unwrap());
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

/// `diffuse generate` arguments for a case.
fn generate_args(case: &serde_json::Value, folder: &Path, out: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "generate".into(),
        case["prompt"].as_str().unwrap().into(),
        "--model".into(),
        folder.display().to_string(),
        "--negative-prompt".into(),
        case["negative_prompt"].as_str().unwrap().into(),
        "--quiet".into(),
        "-o".into(),
        out.join("image.png").display().to_string(),
        "--save-latents".into(),
        out.join("latents.safetensors").display().to_string(),
    ];
    for (flag, key) in [
        ("--steps", "steps"),
        ("--guidance", "guidance"),
        ("--seed", "seed"),
        ("--num-images", "num_images"),
        ("--width", "width"),
        ("--height", "height"),
        ("--strength", "strength"),
    ] {
        if !case[key].is_null() {
            args.extend([flag.to_string(), case[key].to_string()]);
        }
    }
    if let Some(class) = case["scheduler"].as_str() {
        args.extend(["--scheduler".to_string(), class.to_string()]);
    }
    for (flag, key) in [("--image", "image"), ("--mask", "mask")] {
        if let Some(file) = case[key].as_str() {
            args.extend([
                flag.to_string(),
                fixtures("pipelines").join(file).display().to_string(),
            ]);
        }
    }
    if case["variant"].as_str() == Some("fp16") {
        args.push("--fp16-variant".into());
    }
    args
}

fn relative_error(ours: &candle_core::Tensor, reference: &candle_core::Tensor) -> f32 {
    let diff = (ours - reference)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap();
    let max = diff.max(0).unwrap().to_scalar::<f32>().unwrap();
    let scale = reference
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    max / scale
}

#[test]
fn info_and_generate_on_every_wild_folder() {
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures("wild").join("cases.json")).unwrap(),
    )
    .unwrap();
    let scratch = std::env::temp_dir().join(format!("diffuse-cli-wild-{}", std::process::id()));
    let mut failures = Vec::new();
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let folder = case_folder(case, &scratch);
        let info = diffuse(&["info", folder.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&info.stdout);
        // diffuse runs LCM folders as their UNet says; the class named is the folder's.
        let class = case["pipeline"].as_str().unwrap();
        if !info.status.success() || !text.contains(class) {
            failures.push(format!(
                "{name}: info\n{text}{}",
                String::from_utf8_lossy(&info.stderr)
            ));
            continue;
        }
        let out = scratch.join(format!("{name}-out"));
        std::fs::create_dir_all(&out).unwrap();
        let run = diffuse(
            &generate_args(case, &folder, &out)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        if !run.status.success() {
            failures.push(format!(
                "{name}: generate: {}",
                String::from_utf8_lossy(&run.stderr)
            ));
            continue;
        }
        let load = |path: PathBuf| {
            candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap()["latents"]
                .clone()
        };
        let error = relative_error(
            &load(out.join("latents.safetensors")),
            &load(fixtures("wild").join(format!("{name}.safetensors"))),
        );
        if error > LATENT_TOLERANCE {
            failures.push(format!("{name}: latents off diffusers by {error:.2e}"));
        }
        // The folder's own scheduler, named in the PNG as A1111 names it, replays to the same image (a
        // config the pipeline rewrote included).
        if name.starts_with("scheduler_") && case["scheduler"].is_null() {
            let png = out.join("image.png");
            let again = out.join("again.png");
            let run = diffuse(&[
                "generate",
                "--quiet",
                "--model",
                folder.to_str().unwrap(),
                "--replay",
                png.to_str().unwrap(),
                "-o",
                again.to_str().unwrap(),
            ]);
            let open = |p: &Path| diffuse::pipelines::RgbImage::open(p, "image").ok();
            let same = run.status.success() && open(&png).is_some() && open(&png) == open(&again);
            if !same {
                failures.push(format!(
                    "{name}: the replay differs: {}",
                    String::from_utf8_lossy(&run.stderr)
                ));
            }
        }
    }
    std::fs::remove_dir_all(&scratch).ok();
    assert!(failures.is_empty(), "{failures:#?}");
}
