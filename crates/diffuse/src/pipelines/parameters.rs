//! The A1111 parameters text of each generated image, built here once for the CLI, the server and the bindings.

use super::loras::LoraSource;
use super::request::GenerationRequest;
use super::stable_diffusion::{Generated, StableDiffusion};
use crate::device::Quantization;
use crate::metadata::{GenerationParameters, RngSource};
use crate::schedulers::a1111_sampler_of;

/// What the parameters record beyond the request: where the noise and the weights came from.
#[derive(Clone, Debug, Default)]
pub struct Provenance {
    /// The seed the generator started from.
    pub seed: u64,
    /// The generator.
    pub rng: RngSource,
    /// "Model": the checkpoint's name.
    pub model: Option<String>,
    /// "Model hash" (see [`crate::loaders::hash::model_hash`]).
    pub model_hash: Option<String>,
}

impl StableDiffusion {
    /// The parameters of each image of `generated`, made by `request` with `provenance`'s generator and
    /// weights. The sampler is named as A1111 names it. Images of one batch share the seed (one generator drew
    /// them all), so each records the batch size and its position, which `--replay` needs to pick it out.
    pub fn image_parameters(
        &self,
        request: &GenerationRequest,
        generated: &Generated,
        provenance: &Provenance,
    ) -> Vec<GenerationParameters> {
        let scheduler = request.scheduler.as_ref().unwrap_or(&self.scheduler);
        let (sampler, schedule_type) = a1111_sampler_of(scheduler, &self.scheduler);
        let n = generated.images.len();
        let mut extra = Vec::new();
        // diffusers blurs no mask; A1111 records its mask blur for inpainting, which tells a replay a mask is
        // needed.
        if request
            .init
            .as_ref()
            .is_some_and(|init| init.mask.is_some())
        {
            extra.push(("Mask blur".to_string(), "0".to_string()));
        }
        extra.extend(quantization_entry(self.unet.quantization()));
        generated
            .images
            .iter()
            .enumerate()
            .map(|(i, image)| GenerationParameters {
                prompt: prompt_with_lora_tags(request),
                negative_prompt: request.negative_prompt.clone(),
                steps: request.steps as u32,
                sampler: sampler.clone(),
                schedule_type: schedule_type.map(String::from),
                cfg_scale: request.guidance_scale,
                seed: provenance.seed,
                width: image.width as u32,
                height: image.height as u32,
                model_hash: provenance.model_hash.clone(),
                model: provenance.model.clone(),
                denoising_strength: request.init.as_ref().map(|init| init.strength),
                clip_skip: request.clip_skip.map(|k| k as u32 + 1),
                rng: provenance.rng,
                extra: if n > 1 {
                    let batch = [
                        ("Batch size".to_string(), n.to_string()),
                        ("Batch pos".to_string(), i.to_string()),
                    ];
                    extra.iter().cloned().chain(batch).collect()
                } else {
                    extra.clone()
                },
            })
            .collect()
    }
}

/// The prompt as A1111 would show it: the request's own LoRAs (those not already named by the prompt's tags)
/// appended as `<lora:NAME:W>` tags, NAME being the file's stem, so a replay with the same LoRA folder applies
/// them again.
fn prompt_with_lora_tags(request: &GenerationRequest) -> String {
    let mut prompt = request.prompt.clone();
    for lora in &request.loras {
        let name = match &lora.source {
            LoraSource::Name(name) => name.clone(),
            LoraSource::File(path) => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        let weights = if lora.text_encoder_weight == lora.unet_weight {
            format!("{}", lora.unet_weight)
        } else {
            format!("{}:{}", lora.text_encoder_weight, lora.unet_weight)
        };
        if !prompt.is_empty() {
            prompt.push(' ');
        }
        prompt.push_str(&format!("<lora:{name}:{weights}>"));
    }
    prompt
}

/// The parameters key naming the UNet's quantization (absent: its dtype), so that a replay quantizes again.
pub const QUANTIZATION_KEY: &str = "Quantization";

fn quantization_entry(quantization: Option<Quantization>) -> Option<(String, String)> {
    quantization.map(|q| (QUANTIZATION_KEY.to_string(), q.name().to_string()))
}

/// The parameters key holding the audio length of an audio generation, in seconds.
pub const AUDIO_LENGTH_KEY: &str = "Audio length";

impl super::audio::AudioLdm {
    /// The parameters of each waveform of `generated`, made by `request` with `provenance`'s generator and
    /// weights, in A1111's format: "Size" is the generated spectrogram's as pictured (frames × mel bins) and "Audio length"
    /// the seconds returned; waveforms of one batch record the batch size and their position.
    pub fn audio_parameters(
        &self,
        request: &super::audio::AudioRequest,
        plan: &super::audio::AudioPlan,
        provenance: &Provenance,
    ) -> Vec<GenerationParameters> {
        let scheduler = request.scheduler.as_ref().unwrap_or(&self.scheduler);
        let (sampler, schedule_type) = a1111_sampler_of(scheduler, &self.scheduler);
        let n = request.num_waveforms;
        let f = self.vae_scale_factor();
        (0..n)
            .map(|i| {
                let mut extra = vec![(
                    AUDIO_LENGTH_KEY.to_string(),
                    plan.audio_length_s.to_string(),
                )];
                extra.extend(quantization_entry(self.unet.quantization()));
                if n > 1 {
                    extra.push(("Batch size".to_string(), n.to_string()));
                    extra.push(("Batch pos".to_string(), i.to_string()));
                }
                GenerationParameters {
                    prompt: request.prompt.clone(),
                    negative_prompt: request.negative_prompt.clone(),
                    steps: request.steps as u32,
                    sampler: sampler.clone(),
                    schedule_type: schedule_type.map(String::from),
                    cfg_scale: request.guidance_scale,
                    seed: provenance.seed,
                    width: plan.frames as u32,
                    height: (plan.latent_shape[3] * f) as u32,
                    model_hash: provenance.model_hash.clone(),
                    model: provenance.model.clone(),
                    denoising_strength: None,
                    clip_skip: None,
                    rng: provenance.rng,
                    extra,
                }
            })
            .collect()
    }
}
