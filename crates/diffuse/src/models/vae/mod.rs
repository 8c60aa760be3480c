//! `AutoencoderKL`: the VAE that maps images to latents and back.

mod autoencoder_kl;
mod blocks;
pub mod config;
mod decoder;
mod encoder;
pub mod tiling;

pub use autoencoder_kl::{AutoencoderKL, LatentDistribution};
pub use config::AutoencoderKLConfig;
pub use tiling::VaeTiling;
