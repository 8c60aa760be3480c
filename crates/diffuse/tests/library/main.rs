//! The library's integration tests in one binary (one module per area), so CI links it once. `hub.rs` stays
//! apart: it sets the Hugging Face environment variables of its process.

mod common;

mod audioldm;
mod embeddings;
mod gradients;
mod int8;
mod kernels;
mod loading_errors;
mod loras;
mod metadata;
mod models;
mod pipelines;
mod preview;
mod prompts;
mod rng;
mod schedulers;
mod single_file;
mod taesd;
mod tokenizer;
mod vae_tiling;
mod wild;
