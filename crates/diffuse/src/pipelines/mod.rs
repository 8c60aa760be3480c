//! Pipelines: text-to-image, image-to-image and inpainting, as diffusers runs them.

pub mod audio;
mod divergence;
pub mod embeddings;
mod exif;
pub mod guidance;
pub mod images;
mod latents;
pub mod loras;
pub mod parameters;
mod plan;
pub mod preview;
pub mod prompt;
pub mod prompt_syntax;
pub mod request;
pub mod stable_diffusion;
pub mod wav;
mod weighted_prompt;

pub use audio::{AudioLdm, AudioPlan, AudioRequest, GeneratedAudio};
pub use embeddings::EmbeddingChoice;
pub use images::{ImageFormat, RgbImage};
pub use loras::{LoraChoice, LoraSource};
pub use parameters::Provenance;
pub use plan::GenerationPlan;
pub use request::{GenerationRequest, InitImage, Output, PromptSyntax, RequestField};
pub use stable_diffusion::{Generated, Progress, StableDiffusion, Stop};
