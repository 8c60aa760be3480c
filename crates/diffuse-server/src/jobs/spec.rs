//! What a job runs: a validated generation request on a loaded model, and how its noise is seeded.

use std::sync::Arc;

use diffuse::metadata::{GenerationParameters, RngSource};
use diffuse::pipelines::{Generated, GenerationRequest, Provenance};
use diffuse::rng::{NoiseSource, PhiloxRng, TorchCpuRng};
use diffuse::schedulers::a1111_sampler_of;

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

    /// Steps the whole job will run: the library's plan of one generation (after image-to-image's strength cut),
    /// times the generations. A request the plan refuses fails when it runs; until then it counts its steps.
    pub fn expected_steps(&self) -> usize {
        let per_generation = self
            .model
            .pipeline
            .plan(&self.request)
            .map(|plan| plan.steps())
            .unwrap_or(self.request.steps);
        per_generation * self.generations()
    }

    /// The sampler and schedule type as A1111 names them.
    pub fn sampler(&self) -> (String, Option<&'static str>) {
        let model = &self.model.pipeline.scheduler;
        a1111_sampler_of(self.request.scheduler.as_ref().unwrap_or(model), model)
    }

    /// The PNG parameters of each image `generated` holds, drawn with `seed` (see
    /// [`StableDiffusion::image_parameters`](diffuse::pipelines::StableDiffusion::image_parameters)).
    pub fn image_parameters(&self, seed: u64, generated: &Generated) -> Vec<GenerationParameters> {
        let provenance = Provenance {
            seed,
            rng: match self.rng {
                RngKind::Cpu => RngSource::Cpu,
                RngKind::Philox => RngSource::Nv,
            },
            model: Some(self.model.name.clone()),
            model_hash: self.model.hash.clone(),
        };
        self.model
            .pipeline
            .image_parameters(&self.request, generated, &provenance)
    }
}
