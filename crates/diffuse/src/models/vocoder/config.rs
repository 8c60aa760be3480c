//! `vocoder/config.json`: transformers' `SpeechT5HifiGanConfig`.

use serde::Deserialize;

/// The fields of a SpeechT5HifiGan `config.json`; unknown keys are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct HifiGanConfig {
    /// Mel bins of the input spectrogram.
    #[serde(default = "default_model_in_dim")]
    pub model_in_dim: usize,
    /// Samples per second of the output waveform.
    #[serde(default = "default_sampling_rate")]
    pub sampling_rate: usize,
    /// Channels after the first convolution; each upsampling halves them.
    #[serde(default = "default_upsample_initial_channel")]
    pub upsample_initial_channel: usize,
    /// Stride of each transposed convolution: their product is the samples per spectrogram frame.
    #[serde(default = "default_upsample_rates")]
    pub upsample_rates: Vec<usize>,
    /// Kernel size of each transposed convolution.
    #[serde(default = "default_upsample_kernel_sizes")]
    pub upsample_kernel_sizes: Vec<usize>,
    /// Kernel size of each residual block of the multi-receptive-field fusion.
    #[serde(default = "default_resblock_kernel_sizes")]
    pub resblock_kernel_sizes: Vec<usize>,
    /// Dilations of each residual block's convolutions.
    #[serde(default = "default_resblock_dilation_sizes")]
    pub resblock_dilation_sizes: Vec<Vec<usize>>,
    /// Negative slope of the leaky ReLUs inside the network (the last one uses torch's default, 0.01).
    #[serde(default = "default_leaky_relu_slope")]
    pub leaky_relu_slope: f64,
    /// Normalise the spectrogram with the checkpoint's `mean` and `scale` before vocoding.
    #[serde(default = "default_normalize_before")]
    pub normalize_before: bool,
}

impl HifiGanConfig {
    /// Waveform samples per spectrogram frame: the product of the upsampling strides.
    pub fn hop_length(&self) -> usize {
        self.upsample_rates.iter().product()
    }
}

fn default_model_in_dim() -> usize {
    80
}
fn default_sampling_rate() -> usize {
    16000
}
fn default_upsample_initial_channel() -> usize {
    512
}
fn default_upsample_rates() -> Vec<usize> {
    vec![4, 4, 4, 4]
}
fn default_upsample_kernel_sizes() -> Vec<usize> {
    vec![8, 8, 8, 8]
}
fn default_resblock_kernel_sizes() -> Vec<usize> {
    vec![3, 7, 11]
}
fn default_resblock_dilation_sizes() -> Vec<Vec<usize>> {
    vec![vec![1, 3, 5]; 3]
}
fn default_leaky_relu_slope() -> f64 {
    0.1
}
fn default_normalize_before() -> bool {
    true
}
