//! Choosing where tensors live: the CPU, or a CUDA GPU when built with the `cuda` feature.

use candle_core::{DType, Device};

use crate::{Error, Result};

/// The device named `cpu`, `cuda` or `cuda:N`.
pub fn device_from_name(name: &str) -> Result<Device> {
    match name.trim().to_ascii_lowercase().as_str() {
        "cpu" => Ok(Device::Cpu),
        other if other == "cuda" || other.starts_with("cuda:") => cuda_device(other),
        other => Err(Error::invalid(
            "device",
            format!("{other:?}: expected cpu, cuda or cuda:N"),
        )),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(name: &str) -> Result<Device> {
    let ordinal = match name.strip_prefix("cuda:") {
        Some(n) => n.parse::<usize>().map_err(|_| {
            Error::invalid(
                "device",
                format!("{name:?}: the GPU index must be a number"),
            )
        })?,
        None => 0,
    };
    Device::new_cuda(ordinal).map_err(|e| Error::invalid("device", format!("{name}: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(name: &str) -> Result<Device> {
    Err(Error::invalid(
        "device",
        format!("{name}: this build of diffuse has no CUDA support (build with `--features cuda`)"),
    ))
}

/// The dtype named `f32`, `f16` or `bf16` (also `fp32`, `fp16`, `float16`, `bfloat16`).
pub fn dtype_from_name(name: &str) -> Result<DType> {
    match name.trim().to_ascii_lowercase().as_str() {
        "f32" | "fp32" | "float32" => Ok(DType::F32),
        "f16" | "fp16" | "float16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(Error::invalid(
            "dtype",
            format!("{other:?}: expected f32, f16 or bf16"),
        )),
    }
}

/// How a model's large linear layers and convolutions compute, beyond its dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// Weights and activations in int8 (weights per output channel, activations per token or per image,
    /// symmetric), products on the CPU's VNNI instructions, results in f32; attention scores over 2048 keys or
    /// more in int8 as well (queries and keys per token). Needs AVX512-VNNI and f32 compute.
    Int8,
}

impl Quantization {
    /// The quantization named `int8` (also `w8a8`, `q8`).
    pub fn from_name(name: &str) -> Result<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "int8" | "w8a8" | "q8" => Ok(Self::Int8),
            other => Err(Error::invalid(
                "quantize",
                format!("{other:?}: expected int8"),
            )),
        }
    }

    /// The name `from_name` reads.
    pub fn name(self) -> &'static str {
        match self {
            Self::Int8 => "int8",
        }
    }

    /// Whether this machine can run it on `device` with `dtype`, and if not, why.
    pub fn check(self, device: &Device, dtype: DType) -> Result<()> {
        let why = if !device.is_cpu() {
            "runs on the CPU only"
        } else if dtype != DType::F32 {
            "needs f32 as the dtype"
        } else if !crate::kernels::int8_gemm::available() {
            "needs a CPU with AVX512-VNNI, which this one lacks"
        } else {
            return Ok(());
        };
        Err(Error::invalid("quantize", format!("int8 {why}")))
    }
}

/// The host's memory in bytes, as `/proc/meminfo` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostMemory {
    /// All of it.
    pub total: u64,
    /// What can be allocated without swapping (`MemAvailable`).
    pub available: u64,
}

/// The host's memory, where the system reports it (Linux); `None` elsewhere.
pub fn host_memory() -> Option<HostMemory> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
    };
    Some(HostMemory {
        total: field("MemTotal:")?,
        available: field("MemAvailable:")?,
    })
}
