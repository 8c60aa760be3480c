//! CLAP's text tower (transformers' `ClapTextModelWithProjection`, a RoBERTa encoder with a projection) and its
//! RoBERTa byte-level BPE tokenizer: AudioLDM's text conditioning.

pub mod config;
pub mod text_model;
pub mod tokenizer;

pub use config::ClapTextConfig;
pub use text_model::ClapTextModel;
pub use tokenizer::RobertaTokenizer;
