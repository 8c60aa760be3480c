//! What one generation asks for, validated before any work is done.

use candle_core::Tensor;

use super::embeddings::EmbeddingChoice;
use super::images::RgbImage;
use super::loras::LoraChoice;
use crate::schedulers::SchedulerConfig;
use crate::{Error, Result};

/// The largest width or height accepted, in pixels.
pub const MAX_SIDE: usize = 4096;

/// The starting image of image-to-image and inpainting.
#[derive(Debug, Clone)]
pub struct InitImage {
    /// The image to start from.
    pub image: RgbImage,
    /// How much of the schedule to run: 1.0 ignores the image's content, 0.0 keeps it unchanged.
    pub strength: f64,
    /// Inpainting: white pixels are repainted, black ones kept. Must match the image's size.
    pub mask: Option<RgbImage>,
}

/// One generation request: diffusers' `__call__` arguments.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// What to draw.
    pub prompt: String,
    /// What to steer away from; "" when absent, as diffusers does.
    pub negative_prompt: String,
    /// Denoising steps of the full schedule (image-to-image runs `strength` of them).
    pub steps: usize,
    /// Classifier-free guidance scale; guidance is off at ≤ 1.
    pub guidance_scale: f64,
    /// φ of the guidance rescale (0 = off).
    pub guidance_rescale: f64,
    /// diffusers' `clip_skip` (A1111's "Clip skip: 2" is 1).
    pub clip_skip: Option<usize>,
    /// Output width in pixels (a multiple of 8); default: the UNet's sample size × the VAE factor, or the
    /// input image's size.
    pub width: Option<usize>,
    /// Output height in pixels (a multiple of 8).
    pub height: Option<usize>,
    /// Images drawn in one batch from one noise stream.
    pub num_images: usize,
    /// DDIM's η (0 = deterministic).
    pub eta: f64,
    /// A scheduler to use instead of the pipeline's own.
    pub scheduler: Option<SchedulerConfig>,
    /// Image-to-image or inpainting input.
    pub init: Option<InitImage>,
    /// Initial latents `[num_images, C, h, w]` instead of drawing them (text-to-image only).
    pub latents: Option<Tensor>,
    /// How the prompts are read: A1111's syntax (weights, `BREAK`, chunks beyond 75 tokens), or as plain text
    /// truncated at the tokenizer's limit, as diffusers reads them.
    pub prompt_syntax: PromptSyntax,
    /// LoRAs to apply, besides those the prompt's `<lora:…>` tags name (A1111 syntax).
    pub loras: Vec<LoraChoice>,
    /// Textual-inversion embeddings to use, besides those of the pipeline's embeddings folder.
    pub embeddings: Vec<EmbeddingChoice>,
    /// What to return: decoded images, or only the final latents (the VAE is not run).
    pub output: Output,
}

/// What a generation returns, as diffusers' `output_type` chooses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Output {
    /// The final latents and the decoded images.
    #[default]
    Images,
    /// The final latents only (diffusers' `output_type="latent"`).
    Latents,
}

/// A field of [`GenerationRequest`] as the library's errors name it. A binary shows its own name for the field
/// by matching on this (through [`RequestField::of`]), never on strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestField {
    /// [`GenerationRequest::prompt`] (and its A1111 syntax: tags, weights).
    Prompt,
    /// [`GenerationRequest::negative_prompt`].
    NegativePrompt,
    /// [`GenerationRequest::steps`].
    Steps,
    /// [`GenerationRequest::guidance_scale`].
    GuidanceScale,
    /// [`GenerationRequest::guidance_rescale`].
    GuidanceRescale,
    /// [`GenerationRequest::clip_skip`].
    ClipSkip,
    /// [`GenerationRequest::width`].
    Width,
    /// [`GenerationRequest::height`].
    Height,
    /// Width and height together (a size the model cannot take).
    Size,
    /// [`GenerationRequest::num_images`].
    NumImages,
    /// [`GenerationRequest::eta`].
    Eta,
    /// [`InitImage::strength`].
    Strength,
    /// [`InitImage::mask`].
    Mask,
    /// [`GenerationRequest::latents`].
    Latents,
    /// [`GenerationRequest::loras`] (and the prompt's `<lora:…>` tags).
    Loras,
    /// [`crate::pipelines::audio::AudioRequest::audio_length_s`].
    AudioLength,
    /// [`crate::pipelines::audio::AudioRequest::num_waveforms`].
    NumWaveforms,
}

impl RequestField {
    /// Every field.
    pub const ALL: [RequestField; 17] = [
        Self::Prompt,
        Self::NegativePrompt,
        Self::Steps,
        Self::GuidanceScale,
        Self::GuidanceRescale,
        Self::ClipSkip,
        Self::Width,
        Self::Height,
        Self::Size,
        Self::NumImages,
        Self::Eta,
        Self::Strength,
        Self::Mask,
        Self::Latents,
        Self::Loras,
        Self::AudioLength,
        Self::NumWaveforms,
    ];

    /// The name errors give it (`invalid steps: …`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Prompt => "prompt",
            Self::NegativePrompt => "negative_prompt",
            Self::Steps => "steps",
            Self::GuidanceScale => "guidance",
            Self::GuidanceRescale => "guidance_rescale",
            Self::ClipSkip => "clip_skip",
            Self::Width => "width",
            Self::Height => "height",
            Self::Size => "width/height",
            Self::NumImages => "num_images",
            Self::Eta => "eta",
            Self::Strength => "strength",
            Self::Mask => "mask",
            Self::Latents => "latents",
            Self::Loras => "loras",
            Self::AudioLength => "audio_length_s",
            Self::NumWaveforms => "num_waveforms",
        }
    }

    /// The request field an error is about, if it is about one.
    pub fn of(error: &Error) -> Option<Self> {
        match error {
            Error::InvalidArgument { name, .. } => Self::named(name),
            _ => None,
        }
    }

    /// The field errors call `name`.
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|field| field.name() == name)
    }
}

/// How prompts are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PromptSyntax {
    /// AUTOMATIC1111's: `(word:1.3)`, `[word]`, `BREAK`, prompts of any length in 75-token chunks. A prompt
    /// without syntax that fits in 75 tokens gives exactly diffusers' result.
    #[default]
    A1111,
    /// Plain text, truncated at the tokenizer's limit with a warning, as diffusers reads it.
    Plain,
}

impl Default for GenerationRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: 50,
            guidance_scale: 7.5,
            guidance_rescale: 0.0,
            clip_skip: None,
            width: None,
            height: None,
            num_images: 1,
            eta: 0.0,
            scheduler: None,
            init: None,
            latents: None,
            prompt_syntax: PromptSyntax::default(),
            loras: Vec::new(),
            embeddings: Vec::new(),
            output: Output::default(),
        }
    }
}

fn check_side(field: RequestField, value: Option<usize>) -> Result<()> {
    match value {
        Some(v) if v == 0 || v % 8 != 0 || v > MAX_SIDE => Err(Error::invalid(
            field.name(),
            format!("{v}: must be a positive multiple of 8, at most {MAX_SIDE}"),
        )),
        _ => Ok(()),
    }
}

impl GenerationRequest {
    /// Rejects out-of-range values with a message naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::invalid(
                RequestField::Steps.name(),
                "0: at least one step is needed",
            ));
        }
        if !self.guidance_scale.is_finite() || self.guidance_scale < 0.0 {
            return Err(Error::invalid(
                RequestField::GuidanceScale.name(),
                format!("{}: must be a finite number ≥ 0", self.guidance_scale),
            ));
        }
        if !(0.0..=1.0).contains(&self.guidance_rescale) {
            return Err(Error::invalid(
                RequestField::GuidanceRescale.name(),
                format!("{}: must be in [0, 1]", self.guidance_rescale),
            ));
        }
        if !self.eta.is_finite() || self.eta < 0.0 {
            return Err(Error::invalid(
                RequestField::Eta.name(),
                format!("{}: must be ≥ 0", self.eta),
            ));
        }
        if self.num_images == 0 {
            return Err(Error::invalid(
                RequestField::NumImages.name(),
                "0: at least one image",
            ));
        }
        check_side(RequestField::Width, self.width)?;
        check_side(RequestField::Height, self.height)?;
        if let Some(init) = &self.init {
            if !(0.0..=1.0).contains(&init.strength) {
                return Err(Error::invalid(
                    RequestField::Strength.name(),
                    format!("{}: must be in [0, 1]", init.strength),
                ));
            }
            if let Some(mask) = &init.mask {
                if (mask.width, mask.height) != (init.image.width, init.image.height) {
                    return Err(Error::invalid(
                        RequestField::Mask.name(),
                        format!(
                            "{}×{} does not match the image's {}×{}",
                            mask.width, mask.height, init.image.width, init.image.height
                        ),
                    ));
                }
            }
            if self.latents.is_some() {
                return Err(Error::invalid(
                    RequestField::Latents.name(),
                    "cannot be combined with an input image",
                ));
            }
        }
        Ok(())
    }
}
