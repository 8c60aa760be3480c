//! `AutoencoderKL`: the VAE that maps images to latents and back; and `AutoencoderTiny`'s decoder (TAESD).

mod autoencoder_kl;
mod blocks;
pub mod config;
mod decoder;
mod encoder;
pub mod tiling;
mod tiny;

pub use autoencoder_kl::{AutoencoderKL, LatentDistribution};
pub use config::AutoencoderKLConfig;
pub use tiling::VaeTiling;
pub use tiny::{AutoencoderTinyConfig, TinyDecoder};
