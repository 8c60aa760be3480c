//! Training on candle's autograd: the procedural captioned shapes set and user image folders, the VAE
//! (reconstruction + KL), the CLIP text encoder and the UNet (noise prediction with ε or v targets, min-SNR-γ
//! weighting, offset noise, timestep bias, caption dropout), AdamW with warm-up and constant or cosine decay, gradient
//! clipping, EMA, checkpoints with resume, and export as a diffusers pipeline folder.
//!
//! [`train`] runs a [`TrainConfig`]: from scratch it trains the VAE first, freezes it, then trains the UNet
//! and the text encoder together; from a pretrained folder it fine-tunes the UNet with the VAE and the text
//! encoder frozen.

pub mod architecture;
pub mod checkpoint;
pub mod config;
pub mod data;
mod data_parallel;
mod denoiser_stage;
pub mod ema;
pub mod export;
pub mod folder;
pub mod init;
pub mod objectives;
pub mod optimizer;
pub mod shapes;
pub mod timestep_bias;
pub mod trainer;
mod vae_stage;

pub use config::{
    default_resolution, DenoiserSettings, ModelSource, Refinement, TrainConfig, VaeSettings,
};
pub use data::TrainingData;
pub use trainer::{train, Stage, StepReport, TrainEvent, TrainReport};
