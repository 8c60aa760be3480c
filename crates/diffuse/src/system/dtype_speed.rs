//! How bf16 compares with f32 on this CPU, measured on the kernels themselves: on some CPUs with AVX512-BF16 the
//! bf16 path is the fast one, on others (without AMX, where its dot products run at the f32 rate and the operands
//! must be converted) it is the slow one. Measured once per machine and cached.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::SystemInfo;
use crate::internals::kernels;
use crate::loaders::hub::diffuse_cache_dir;
use crate::Result;

/// Seconds of one UNet-sized 3×3 convolution (`[1, 320, 64, 64]` by 320 filters) in each dtype: the best of a
/// few runs, on the CPU kernels with the process's threads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DtypeSpeed {
    /// The f32 convolution.
    pub f32_seconds: f64,
    /// The bf16 convolution.
    pub bf16_seconds: f64,
}

impl DtypeSpeed {
    /// How many times faster bf16 runs than f32 (below 1: slower).
    pub fn bf16_speedup(&self) -> f64 {
        self.f32_seconds / self.bf16_seconds
    }
}

/// This machine's [`DtypeSpeed`]: read from the cache (`diffuse_cache_dir()/cpu-dtype-speed.json`, keyed by the
/// CPU, its features, the thread count and the build) or measured now (about a second) and cached.
pub fn cpu_dtype_speed() -> Result<DtypeSpeed> {
    let info = SystemInfo::detect();
    // Debug builds run the kernels unoptimized: their measurements are kept apart.
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let key = format!(
        "{} | {} | {} | {} threads | {build}",
        info.cpu_model,
        info.cpu_id,
        info.features.join(" "),
        rayon::current_num_threads()
    );
    let path = diffuse_cache_dir().join("cpu-dtype-speed.json");
    let cached: serde_json::Map<String, serde_json::Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let seconds = |entry: &serde_json::Value, name: &str| entry.get(name).and_then(|v| v.as_f64());
    if let Some(entry) = cached.get(&key) {
        if let (Some(f32_seconds), Some(bf16_seconds)) =
            (seconds(entry, "f32"), seconds(entry, "bf16"))
        {
            return Ok(DtypeSpeed {
                f32_seconds,
                bf16_seconds,
            });
        }
    }
    let speed = measure()?;
    let mut cached = cached;
    cached.insert(
        key,
        serde_json::json!({"f32": speed.f32_seconds, "bf16": speed.bf16_seconds}),
    );
    // A cache that cannot be written only means measuring again next time.
    if std::fs::create_dir_all(diffuse_cache_dir()).is_ok() {
        let _ = std::fs::write(&path, serde_json::Value::Object(cached).to_string());
    }
    Ok(speed)
}

fn measure() -> Result<DtypeSpeed> {
    let x = Tensor::randn(0f32, 1f32, (1, 320, 64, 64), &Device::Cpu)?;
    let w = (Tensor::randn(0f32, 1f32, (320, 320, 3, 3), &Device::Cpu)? * 0.02)?;
    let b = Tensor::zeros(320, DType::F32, &Device::Cpu)?;
    let best = |dtype: DType| -> Result<f64> {
        let (x, w, b) = (x.to_dtype(dtype)?, w.to_dtype(dtype)?, b.to_dtype(dtype)?);
        let mut fastest = f64::INFINITY;
        for _ in 0..4 {
            let start = Instant::now();
            kernels::conv2d(&x, &w, &b, 1, 1)?;
            fastest = fastest.min(start.elapsed().as_secs_f64());
        }
        Ok(fastest)
    };
    Ok(DtypeSpeed {
        f32_seconds: best(DType::F32)?,
        bf16_seconds: best(DType::BF16)?,
    })
}

/// The dtype `auto` stands for on `device`: float16 on CUDA (as diffusers users load with
/// `torch_dtype=torch.float16`), float32 on the CPU, the one dtype whose images equal diffusers' within 1/255 (bf16
/// leaves that bound, and is slower than f32 on some CPUs: see [`cpu_dtype_speed`]).
pub fn auto_dtype(device: &Device) -> DType {
    if device.is_cuda() {
        DType::F16
    } else {
        DType::F32
    }
}
