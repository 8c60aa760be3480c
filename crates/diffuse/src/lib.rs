//! diffuse: a Stable Diffusion engine whose models, schedulers and pipelines equal diffusers'.
//!
//! The library knows nothing of the command line or the server: `diffuse-cli` is a thin layer on top. A whole
//! program is `examples/generate.rs` (`cargo run --release -p diffuse --example generate -- PROMPT`).
//!
//! ```
//! use std::ops::ControlFlow;
//!
//! use diffuse::loaders::LoadOptions;
//! use diffuse::metadata::RngSource;
//! use diffuse::pipelines::{GenerationRequest, Provenance, StableDiffusion};
//! use diffuse::rng::TorchCpuRng;
//! use diffuse::schedulers::scheduler_config_for;
//!
//! # fn main() -> diffuse::Result<()> {
//! // A diffusers folder, a Hub id ("stable-diffusion-v1-5/stable-diffusion-v1-5") or one .safetensors file.
//! # let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/diffuse-tiny");
//! let pipe = StableDiffusion::from_pretrained(model, &LoadOptions::default())?;
//! let request = GenerationRequest {
//!     prompt: "a (red:1.2) circle on a blue background".into(),
//!     negative_prompt: "blurry".into(),
//!     steps: 4,
//!     scheduler: Some(scheduler_config_for("DPM++ 2M Karras", &pipe.scheduler)?),
//!     ..Default::default()
//! };
//! // torch.Generator("cpu").manual_seed(42), bit for bit.
//! let mut noise = TorchCpuRng::new(42);
//! let generated = pipe.generate(&request, &mut noise, &mut |_progress| ControlFlow::Continue(()))?;
//! let provenance = Provenance { seed: 42, rng: RngSource::Cpu, ..Default::default() };
//! let parameters = pipe.image_parameters(&request, &generated, &provenance);
//! let png = generated.images[0].to_png(Some(&parameters[0]))?;
//! assert!(png.starts_with(b"\x89PNG"));
//! # Ok(())
//! # }
//! ```
//!
//! Programs using it should set `RAYON_NUM_THREADS` before any thread starts (the `diffuse` binary does):
//! without it, candle works its default thread count out again on every matrix product, reading
//! `/proc/cpuinfo` each time, which costs training a fifth of its speed.

pub mod device;
pub mod error;
pub mod internals;
pub mod loaders;
pub mod metadata;
pub mod models;
pub mod pipelines;
pub mod rng;
pub mod schedulers;
pub mod system;

pub use error::{Error, Result};

/// The library's own path to its kernels.
pub(crate) use internals::kernels;
