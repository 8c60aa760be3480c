//! diffuse: a Stable Diffusion engine whose models, schedulers and pipelines equal diffusers'.
//!
//! The library knows nothing of the command line or the server: `diffuse-cli` is a thin layer on top.
//!
//! Programs using it should set `RAYON_NUM_THREADS` before any thread starts (the `diffuse` binary does):
//! without it, candle works its default thread count out again on every matrix product, reading
//! `/proc/cpuinfo` each time, which costs training a fifth of its speed.

pub mod device;
pub mod error;
pub mod kernels;
pub mod loaders;
pub mod metadata;
pub mod models;
pub mod pipelines;
pub mod rng;
pub mod schedulers;
pub mod training;

pub use error::{Error, Result};
