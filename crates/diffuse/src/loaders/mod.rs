//! Loading pipelines: diffusers folders, the Hub cache and single files, down to memory-mapped tensors.

pub mod embeddings;
pub mod folder;
pub mod hash;
pub mod hub;
pub mod json;
pub mod key_maps;
pub mod lora;
pub mod model_index;
pub mod named_files;
pub(crate) mod python_json;
pub mod single_file;
pub mod summary;
pub mod tiny_vae;
pub mod weights;

pub use folder::{ConfigSource, LoadOptions, PipelineFolder};
pub use weights::Variant;
