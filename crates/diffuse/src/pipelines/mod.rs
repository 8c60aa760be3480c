//! Pipelines: text-to-image, image-to-image and inpainting, as diffusers runs them.

pub mod guidance;
pub mod images;
mod latents;
pub mod preview;
pub mod prompt;
pub mod request;
pub mod stable_diffusion;

pub use images::RgbImage;
pub use request::{GenerationRequest, InitImage};
pub use stable_diffusion::{Generated, Progress, StableDiffusion};
