//! The networks of a Stable Diffusion pipeline, with diffusers' weight names.

pub mod activations;
pub mod attention;
pub mod clap;
pub mod clip;
pub mod config_values;
pub mod conv;
pub mod embeddings;
pub mod layer_norm;
pub(crate) mod lora_delta;
pub mod resnet;
pub mod sampling;
pub mod transformer_2d;
pub mod unet;
pub mod vae;
pub mod vocoder;
