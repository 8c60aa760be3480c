//! The vocoder of AudioLDM: transformers' `SpeechT5HifiGan`, which turns a log-mel spectrogram into a waveform.

pub mod config;
pub mod hifigan;

pub use config::HifiGanConfig;
pub use hifigan::HifiGan;
