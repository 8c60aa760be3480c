//! `UNet2DConditionModel` and its blocks.

mod blocks;
pub mod config;
mod unet_2d_condition;

pub use config::UNet2DConditionConfig;
pub use unet_2d_condition::{ExtraConditioning, UNet2DConditionModel};
