//! CLIP: the tokenizer and the text transformer that condition the denoiser.

pub mod tokenizer;
