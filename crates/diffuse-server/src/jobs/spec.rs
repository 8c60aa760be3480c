//! What a job runs: a validated generation request (image or audio) on a loaded model, and how its noise is
//! seeded.

use std::sync::Arc;

use diffuse::metadata::{GenerationParameters, RngSource};
use diffuse::pipelines::{
    AudioLdm, AudioRequest, Generated, GenerationRequest, Provenance, StableDiffusion,
};
use diffuse::rng::{NoiseSource, PhiloxRng, TorchCpuRng};
use diffuse::schedulers::a1111_sampler_of;

use crate::registry::{LoadedModel, Pipeline};

/// Which generator draws the noise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RngKind {
    /// torch's CPU generator, as diffusers with `torch.Generator("cpu")` (A1111's "CPU").
    Cpu,
    /// torch's CUDA generator, as A1111's "GPU" and "NV" draw it.
    Philox,
}

/// How seeds map to images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedMode {
    /// diffusers: one generator seeded once draws the whole batch (`num_images_per_prompt`).
    Batch,
    /// A1111: image `i` is generated on its own with seed `seed + i`.
    PerImage,
}

/// The request of a job's generations.
pub enum Work {
    /// Images; in [`SeedMode::PerImage`], `num_images` is 1 and it runs `images` times.
    Image(GenerationRequest),
    /// Audio: `num_waveforms` waveforms from one generator.
    Audio(AudioRequest),
}

/// A job's work.
pub struct JobSpec {
    /// The model.
    pub model: Arc<LoadedModel>,
    /// The request of one generation.
    pub work: Work,
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
    /// The prompt.
    pub fn prompt(&self) -> &str {
        match &self.work {
            Work::Image(request) => &request.prompt,
            Work::Audio(request) => &request.prompt,
        }
    }

    /// The image request and its pipeline, if this is an image job on an image model.
    pub fn image(&self) -> Option<(&GenerationRequest, &StableDiffusion)> {
        match (&self.work, &self.model.pipeline) {
            (Work::Image(request), Pipeline::Image(pipeline)) => Some((request, pipeline.as_ref())),
            _ => None,
        }
    }

    /// The audio request and its pipeline, if this is an audio job on an audio model.
    pub fn audio(&self) -> Option<(&AudioRequest, &AudioLdm)> {
        match (&self.work, &self.model.pipeline) {
            (Work::Audio(request), Pipeline::Audio(pipeline)) => Some((request, pipeline.as_ref())),
            _ => None,
        }
    }

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
        let per_generation = match (self.image(), self.audio(), &self.work) {
            (Some((request, pipeline)), _, _) => pipeline
                .plan(request)
                .map(|plan| plan.steps())
                .unwrap_or(request.steps),
            (_, Some((request, pipeline)), _) => pipeline
                .plan(request)
                .map(|plan| plan.timesteps.len())
                .unwrap_or(request.steps),
            (None, None, Work::Image(request)) => request.steps,
            (None, None, Work::Audio(request)) => request.steps,
        };
        per_generation * self.generations()
    }

    /// The sampler and schedule type as A1111 names them.
    pub fn sampler(&self) -> (String, Option<&'static str>) {
        let model = self.model.scheduler();
        let chosen = match &self.work {
            Work::Image(request) => request.scheduler.as_ref(),
            Work::Audio(request) => request.scheduler.as_ref(),
        };
        a1111_sampler_of(chosen.unwrap_or(model), model)
    }

    /// What the parameters record of where the noise and weights came from, for a generation seeded `seed`.
    pub fn provenance(&self, seed: u64) -> Provenance {
        Provenance {
            seed,
            rng: match self.rng {
                RngKind::Cpu => RngSource::Cpu,
                RngKind::Philox => RngSource::Nv,
            },
            model: Some(self.model.name.clone()),
            model_hash: self.model.hash.clone(),
        }
    }

    /// The PNG parameters of each image `generated` holds, drawn with `seed` (see
    /// [`StableDiffusion::image_parameters`](diffuse::pipelines::StableDiffusion::image_parameters)).
    pub fn image_parameters(&self, seed: u64, generated: &Generated) -> Vec<GenerationParameters> {
        match self.image() {
            Some((request, pipeline)) => {
                pipeline.image_parameters(request, generated, &self.provenance(seed))
            }
            None => Vec::new(),
        }
    }
}
