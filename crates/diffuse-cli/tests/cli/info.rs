//! `diffuse info`: describes pipeline folders and fails cleanly on bad paths.

use std::process::Command;

fn fixtures(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

#[test]
fn info_describes_every_component() {
    let out = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .arg("info")
        .arg(fixtures("sdxl"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for expected in [
        "StableDiffusionXLPipeline",
        "text_encoder_2  transformers.CLIPTextModelWithProjection",
        "unet            diffusers.UNet2DConditionModel  150.9K parameters, stored as f16",
        "addition_embed_type           text_time",
        "scaling_factor                0.13025",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

#[test]
fn info_on_a_missing_folder_fails_with_its_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args(["info", "/nonexistent/model"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model"), "{err}");
}

/// `diffuse info --system` describes the machine and the kernels' choices; it takes no path.
#[test]
fn info_describes_the_system() {
    let out = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args(["info", "--system"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for expected in [
        "CPU: ",
        "logical CPUs: ",
        "caches: ",
        "vector kernels: ",
        "convolutions: f32 3×3 convolutions (stride 1) as Winograd F(2×2, 3×3) on planes of 256 pixels",
        "text encoders: ",
        "bf16 products: ",
        "threads: ",
    ] {
        assert!(text.contains(expected), "{text}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args(["info", "--system", "some/folder"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
