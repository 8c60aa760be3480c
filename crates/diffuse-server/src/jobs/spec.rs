//! What a job runs: a validated generation request on a loaded model, and how its noise is seeded.

use std::sync::Arc;

use diffuse::metadata::{GenerationParameters, RngSource};
use diffuse::pipelines::GenerationRequest;
use diffuse::rng::{NoiseSource, PhiloxRng, TorchCpuRng};

use crate::registry::LoadedModel;

/// Which generator draws the noise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RngKind {
    /// torch's CPU generator, as diffusers with `torch.Generator("cpu")` (A1111's "CPU").
    Cpu,
    /// torch's CUDA generator, as A1111's "GPU" and "NV" draw it.
    Philox,
}

/// How seeds map to images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedMode {
    /// diffusers: one generator seeded once draws the whole batch (`num_images_per_prompt`).
    Batch,
    /// A1111: image `i` is generated on its own with seed `seed + i`.
    PerImage,
}

/// A job's work.
pub struct JobSpec {
    /// The model.
    pub model: Arc<LoadedModel>,
    /// The request of one generation; in [`SeedMode::PerImage`], `num_images` is 1 and it runs `images` times.
    pub request: GenerationRequest,
    /// Images in all.
    pub images: usize,
    /// The first seed.
    pub seed: u64,
    /// How seeds map to images.
    pub seed_mode: SeedMode,
    /// The generator.
    pub rng: RngKind,
    /// The sampler's name as the PNG parameters record it.
    pub sampler: String,
    /// The schedule type as the PNG parameters record it (e.g. "Karras").
    pub schedule_type: Option<String>,
}

impl JobSpec {
    /// How many `generate` calls the job makes.
    pub fn generations(&self) -> usize {
        match self.seed_mode {
            SeedMode::Batch => 1,
            SeedMode::PerImage => self.images,
        }
    }

    /// The seed of generation `index`.
    pub fn generation_seed(&self, index: usize) -> u64 {
        match self.seed_mode {
            SeedMode::Batch => self.seed,
            SeedMode::PerImage => self.seed.wrapping_add(index as u64),
        }
    }

    /// A fresh generator for generation `index`.
    pub fn noise(&self, index: usize) -> Box<dyn NoiseSource> {
        let seed = self.generation_seed(index);
        match self.rng {
            RngKind::Cpu => Box::new(TorchCpuRng::new(seed)),
            RngKind::Philox => Box::new(PhiloxRng::new(seed)),
        }
    }

    /// Steps the whole job will run, as image-to-image's strength cuts the schedule (`int(N · strength)`).
    pub fn expected_steps(&self) -> usize {
        let steps = self.request.steps;
        let per_generation = match &self.request.init {
            Some(init) => ((steps as f64 * init.strength) as usize).min(steps),
            None => steps,
        };
        per_generation * self.generations()
    }

    /// The PNG parameters of an image drawn with `seed` at `width`×`height`.
    pub fn parameters(&self, seed: u64, width: usize, height: usize) -> GenerationParameters {
        let request = &self.request;
        GenerationParameters {
            prompt: request.prompt.clone(),
            negative_prompt: request.negative_prompt.clone(),
            steps: request.steps as u32,
            sampler: self.sampler.clone(),
            schedule_type: self.schedule_type.clone(),
            cfg_scale: request.guidance_scale,
            seed,
            width: width as u32,
            height: height as u32,
            model_hash: None,
            model: Some(self.model.name.clone()),
            denoising_strength: request.init.as_ref().map(|init| init.strength),
            clip_skip: request.clip_skip.map(|k| k as u32 + 1),
            rng: match self.rng {
                RngKind::Cpu => RngSource::Cpu,
                RngKind::Philox => RngSource::Nv,
            },
            extra: Vec::new(),
        }
    }
}
