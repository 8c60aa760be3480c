//! Writing the trained pipeline as a diffusers folder: `model_index.json`, each component's config and
//! safetensors weights, the tokenizer and the scheduler config.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::{json, Value};

use super::architecture::DIFFUSERS_VERSION;
use diffuse::{Error, Result};

/// Where a component's files come from.
pub enum Component {
    /// Trained weights (names as the diffuse model asks for them) and the config to write next to them.
    Trained {
        /// The config.
        config: Value,
        /// The weights.
        weights: Vec<(String, Tensor)>,
    },
    /// A frozen component: its folder is copied as it is.
    Copied(std::path::PathBuf),
}

/// Everything an exported pipeline folder holds.
pub struct PipelineExport {
    /// The UNet.
    pub unet: Component,
    /// The VAE.
    pub vae: Component,
    /// The CLIP text encoder.
    pub text_encoder: Component,
    /// The tokenizer folder, copied.
    pub tokenizer: std::path::PathBuf,
    /// `scheduler/scheduler_config.json`.
    pub scheduler: Value,
    /// The dtype trained weights are stored in (F32, F16 or BF16).
    pub dtype: DType,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |cause| Error::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// Creates `folder` if needed and checks that files can be written in it.
pub fn ensure_writable(folder: &Path) -> Result<()> {
    std::fs::create_dir_all(folder).map_err(io(folder))?;
    let probe = folder.join(".diffuse-write-test");
    std::fs::write(&probe, b"").map_err(|cause| Error::Io {
        path: folder.to_path_buf(),
        cause: std::io::Error::new(
            cause.kind(),
            format!("output folder is not writable ({cause})"),
        ),
    })?;
    std::fs::remove_file(&probe).map_err(io(&probe))
}

/// Writes `value` as indented JSON with a final newline.
pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    text.push('\n');
    std::fs::write(path, text).map_err(io(path))
}

fn copy_folder(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let path = entry.map_err(io(from))?.path();
        if path.is_file() {
            if let Some(name) = path.file_name() {
                let target = to.join(name);
                if target != path {
                    std::fs::copy(&path, &target).map_err(io(&path))?;
                }
            }
        }
    }
    Ok(())
}

fn write_weights(path: &Path, weights: &[(String, Tensor)], dtype: DType) -> Result<()> {
    let map = weights
        .iter()
        .map(|(name, t)| Ok((name.clone(), t.to_dtype(dtype)?.contiguous()?)))
        .collect::<Result<HashMap<String, Tensor>>>()?;
    candle_core::safetensors::save(&map, path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        cause: std::io::Error::other(e.to_string()),
    })
}

fn write_component(
    out: &Path,
    name: &str,
    stem: &str,
    component: &Component,
    dtype: DType,
) -> Result<()> {
    let dir = out.join(name);
    match component {
        Component::Copied(from) => copy_folder(from, &dir),
        Component::Trained { config, weights } => {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            let mut config = config.clone();
            if name == "text_encoder" {
                if let Some(obj) = config.as_object_mut() {
                    obj.insert("dtype".into(), json!(dtype_name(dtype)));
                }
            }
            write_json(&dir.join("config.json"), &config)?;
            write_weights(&dir.join(format!("{stem}.safetensors")), weights, dtype)
        }
    }
}

/// The stored dtype named `f32`, `f16` or `bf16` (`save_dtype`).
pub fn parse_save_dtype(name: &str) -> Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(Error::invalid(
            "save_dtype",
            format!("{other:?}: expected f32, f16 or bf16"),
        )),
    }
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    }
}

/// The text encoder's weights under the Hub's `text_model.` prefix, which every transformers version reads.
pub fn text_model_names(weights: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    weights
        .into_iter()
        .map(|(name, t)| {
            if name.starts_with("text_model.") || name.starts_with("text_projection") {
                (name, t)
            } else {
                (format!("text_model.{name}"), t)
            }
        })
        .collect()
}

/// Writes the pipeline folder `out` (created if needed; existing files are replaced).
pub fn write_pipeline(out: &Path, export: &PipelineExport) -> Result<()> {
    ensure_writable(out)?;
    let scheduler_class = export
        .scheduler
        .get("_class_name")
        .and_then(Value::as_str)
        .unwrap_or("DPMSolverMultistepScheduler")
        .to_string();
    let index = json!({
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "feature_extractor": [null, null],
        "image_encoder": [null, null],
        "requires_safety_checker": false,
        "safety_checker": [null, null],
        "scheduler": ["diffusers", scheduler_class],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]
    });
    write_component(
        out,
        "unet",
        "diffusion_pytorch_model",
        &export.unet,
        export.dtype,
    )?;
    write_component(
        out,
        "vae",
        "diffusion_pytorch_model",
        &export.vae,
        export.dtype,
    )?;
    write_component(
        out,
        "text_encoder",
        "model",
        &export.text_encoder,
        export.dtype,
    )?;
    copy_folder(&export.tokenizer, &out.join("tokenizer"))?;
    let scheduler_dir = out.join("scheduler");
    std::fs::create_dir_all(&scheduler_dir).map_err(io(&scheduler_dir))?;
    write_json(
        &scheduler_dir.join("scheduler_config.json"),
        &export.scheduler,
    )?;
    write_json(&out.join("model_index.json"), &index)
}

/// diffusers' `DPMSolverMultistepScheduler` config (DPM++ 2M) over Stable Diffusion's training schedule
/// (scaled-linear betas 0.00085 → 0.012 over 1000 steps), predicting `prediction_type`.
pub fn dpm_solver_config(prediction_type: &str) -> Value {
    json!({
        "_class_name": "DPMSolverMultistepScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "algorithm_type": "dpmsolver++",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "dynamic_thresholding_ratio": 0.995,
        "euler_at_final": false,
        "final_sigmas_type": "zero",
        "lower_order_final": true,
        "num_train_timesteps": 1000,
        "prediction_type": prediction_type,
        "rescale_betas_zero_snr": false,
        "sample_max_value": 1.0,
        "solver_order": 2,
        "solver_type": "midpoint",
        "steps_offset": 1,
        "thresholding": false,
        "timestep_spacing": "linspace",
        "trained_betas": null,
        "use_beta_sigmas": false,
        "use_exponential_sigmas": false,
        "use_karras_sigmas": false,
        "use_lu_lambdas": false,
        "variance_type": null
    })
}
