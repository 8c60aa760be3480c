//! Bad model folders and weight files give clear errors that name the file, key or tensor; never a panic.

use std::path::Path;

use crate::common::{copy_dir, fixtures, ScratchDir};
use candle_core::Device;
use diffuse::loaders::{LoadOptions, PipelineFolder};

/// A scratch copy of the sd1 fixture pipeline (removed when the guard drops) and its path.
fn sd1_copy(name: &str) -> (ScratchDir, std::path::PathBuf) {
    let scratch = ScratchDir::new(name);
    let dir = scratch.path().join("sd1");
    copy_dir(&fixtures("models").join("sd1"), &dir);
    (scratch, dir)
}

fn load_unet_error(root: &Path) -> String {
    match PipelineFolder::open(root).and_then(|f| f.load_unet(&LoadOptions::default())) {
        Ok(_) => panic!("loading {} should fail", root.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "error `{message}` does not mention `{part}`"
        );
    }
}

#[test]
fn missing_folder_is_named() {
    let err = PipelineFolder::open(Path::new("/nonexistent/diffuse-model")).unwrap_err();
    assert_mentions(
        &err.to_string(),
        &["/nonexistent/diffuse-model", "not a folder"],
    );
}

#[test]
fn missing_model_index_is_named() {
    let (_scratch, dir) = sd1_copy("no-index");
    std::fs::remove_file(dir.join("model_index.json")).unwrap();
    let err = PipelineFolder::open(&dir).unwrap_err();
    assert_mentions(&err.to_string(), &["model_index.json"]);
}

#[test]
fn missing_weights_file_is_named() {
    let (_scratch, dir) = sd1_copy("no-weights");
    std::fs::remove_file(dir.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    assert_mentions(
        &load_unet_error(&dir),
        &[
            "unet/diffusion_pytorch_model.safetensors",
            "no weights found",
        ],
    );
}

#[test]
fn missing_component_folder_is_named() {
    let (_scratch, dir) = sd1_copy("no-vae");
    std::fs::remove_dir_all(dir.join("vae")).unwrap();
    let folder = PipelineFolder::open(&dir).unwrap();
    let err = folder
        .load_vae(&LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert_mentions(&err, &["vae", "missing"]);
}

#[test]
fn config_key_of_wrong_type_is_named() {
    let (_scratch, dir) = sd1_copy("bad-type");
    edit_json(&dir.join("unet/config.json"), |v| {
        v["layers_per_block"] = "two".into()
    });
    assert_mentions(
        &load_unet_error(&dir),
        &["unet/config.json", "layers_per_block"],
    );
}

#[test]
fn unsupported_block_type_is_named() {
    let (_scratch, dir) = sd1_copy("bad-block");
    edit_json(&dir.join("unet/config.json"), |v| {
        v["down_block_types"][0] = "AttnDownBlock2D".into();
    });
    assert_mentions(
        &load_unet_error(&dir),
        &["unet/config.json", "down_block_types", "AttnDownBlock2D"],
    );
}

#[test]
fn unsupported_math_option_is_named() {
    let (_scratch, dir) = sd1_copy("bad-option");
    edit_json(&dir.join("unet/config.json"), |v| {
        v["resnet_time_scale_shift"] = "scale_shift".into();
    });
    assert_mentions(
        &load_unet_error(&dir),
        &["resnet_time_scale_shift", "scale_shift"],
    );
}

fn rewrite_weights(
    path: &Path,
    edit: impl FnOnce(&mut std::collections::HashMap<String, candle_core::Tensor>),
) {
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, path).unwrap();
}

#[test]
fn missing_tensor_is_named() {
    let (_scratch, dir) = sd1_copy("missing-tensor");
    let weights = dir.join("unet/diffusion_pytorch_model.safetensors");
    rewrite_weights(&weights, |t| {
        t.remove("mid_block.resnets.1.conv2.weight");
    });
    assert_mentions(
        &load_unet_error(&dir),
        &[
            "diffusion_pytorch_model.safetensors",
            "mid_block.resnets.1.conv2.weight",
            "missing",
        ],
    );
}

#[test]
fn tensor_of_wrong_shape_is_named_with_both_shapes() {
    let (_scratch, dir) = sd1_copy("wrong-shape");
    let weights = dir.join("unet/diffusion_pytorch_model.safetensors");
    rewrite_weights(&weights, |t| {
        let wrong =
            candle_core::Tensor::zeros((16, 16, 3, 3), candle_core::DType::F16, &Device::Cpu)
                .unwrap();
        t.insert("conv_in.weight".into(), wrong);
    });
    assert_mentions(
        &load_unet_error(&dir),
        &[
            "conv_in.weight",
            "expected shape [8, 4, 3, 3]",
            "found [16, 16, 3, 3]",
        ],
    );
}

#[test]
fn truncated_weights_file_is_reported() {
    let (_scratch, dir) = sd1_copy("truncated");
    let weights = dir.join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    assert_mentions(
        &load_unet_error(&dir),
        &[
            "diffusion_pytorch_model.safetensors",
            "not a readable safetensors file",
        ],
    );
}

#[test]
fn corrupted_header_is_reported() {
    let (_scratch, dir) = sd1_copy("corrupted");
    let weights = dir.join("unet/diffusion_pytorch_model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[8..40].copy_from_slice(b"this is not a safetensors header");
    std::fs::write(&weights, &bytes).unwrap();
    assert_mentions(
        &load_unet_error(&dir),
        &[
            "diffusion_pytorch_model.safetensors",
            "not a readable safetensors file",
        ],
    );
}

#[test]
fn unknown_config_keys_are_ignored() {
    let (_scratch, dir) = sd1_copy("unknown-key");
    edit_json(&dir.join("unet/config.json"), |v| {
        v["some_future_option"] = 42.into()
    });
    let folder = PipelineFolder::open(&dir).unwrap();
    assert!(folder.load_unet(&LoadOptions::default()).is_ok());
}

#[test]
fn json_that_python_refuses_is_refused_with_file_line_and_column() {
    let (_scratch, dir) = sd1_copy("trailing-comma");
    let path = dir.join("unet/config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let broken = text.replacen("\n}", ",\n}", 1);
    assert_ne!(text, broken);
    std::fs::write(&path, broken).unwrap();
    let lines = text.lines().count();
    assert_mentions(
        &load_unet_error(&dir),
        &["unet/config.json", &format!("line {lines} column 1")],
    );
}

#[test]
fn a_non_finite_number_where_an_integer_belongs_is_named() {
    let (_scratch, dir) = sd1_copy("nan-channels");
    let path = dir.join("unet/config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"in_channels\": 4", "\"in_channels\": NaN"),
    )
    .unwrap();
    assert_mentions(
        &load_unet_error(&dir),
        &["unet/config.json", "in_channels", "NaN"],
    );
}

/// Errors about a request field name it so that binaries can match on the field, not on strings.
#[test]
fn request_errors_name_their_field() {
    use diffuse::pipelines::{GenerationRequest, RequestField};
    let cases = [
        (
            GenerationRequest {
                steps: 0,
                ..Default::default()
            },
            RequestField::Steps,
        ),
        (
            GenerationRequest {
                guidance_scale: -1.0,
                ..Default::default()
            },
            RequestField::GuidanceScale,
        ),
        (
            GenerationRequest {
                num_images: 0,
                ..Default::default()
            },
            RequestField::NumImages,
        ),
        (
            GenerationRequest {
                width: Some(30),
                ..Default::default()
            },
            RequestField::Width,
        ),
        (
            GenerationRequest {
                eta: -1.0,
                ..Default::default()
            },
            RequestField::Eta,
        ),
    ];
    for (request, field) in cases {
        let error = request.validate().unwrap_err();
        assert_eq!(RequestField::of(&error), Some(field), "{error}");
        assert!(error
            .to_string()
            .starts_with(&format!("invalid {}: ", field.name())));
    }
    for field in RequestField::ALL {
        assert_eq!(RequestField::named(field.name()), Some(field));
    }
}
