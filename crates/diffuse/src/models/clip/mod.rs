//! CLIP: the tokenizer and the text transformer that condition the denoiser.

pub mod config;
pub mod text_model;
pub mod tokenizer;
