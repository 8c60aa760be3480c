//! Schedulers: the diffusers family, each equal to its diffusers 0.42 class.
//!
//! A loaded pipeline holds an immutable [`SchedulerConfig`] (read from `scheduler/scheduler_config.json`);
//! every generation calls [`SchedulerConfig::build`] to get its own [`Scheduler`], so per-generation state
//! (step index, multistep history) never lives in the loaded model.
//!
//! Classes: DDIM, DDPM, PNDM (PLMS with `skip_prk_steps`), LMS, Euler, Euler Ancestral, Heun, KDPM2,
//! KDPM2 Ancestral, DPM-Solver multistep and singlestep (`dpmsolver++`, `sde-dpmsolver++`), UniPC, DEIS, LCM
//! and TCD, with Karras, exponential and beta sigmas where diffusers offers them. [`scheduler_config_for`] maps
//! A1111 and ComfyUI sampler names with a schedule type ("Euler a", "DPM++ 2M Karras", "dpmpp_2m_sde
//! exponential", ...) and class names onto a model's configuration.
//!
//! Scalars are computed in float32 where diffusers computes them on float32 tensors, and in float64 where
//! it uses numpy, so trajectories match diffusers to 1e-5 (see `crates/diffuse/tests/library/schedulers.rs`).
//!
//! Adding a scheduler means adding one file and one row in the class table of `names.rs`.

mod beta_ppf;
mod config;
mod ddim;
mod ddpm;
mod deis;
mod dpm_common;
mod dpm_multistep;
mod dpm_singlestep;
mod euler;
mod euler_ancestral;
mod heun;
mod k_common;
mod kdpm2;
mod kdpm2_ancestral;
mod lcm;
mod lms;
pub(crate) mod names;
mod noise_schedule;
mod ops;
mod pndm;
mod sampler_names;
mod schedule;
mod step_index;
mod tcd;
mod unipc;

use candle_core::Tensor;

pub use config::{PredictionType, SchedulerConfig, TimestepRequest, TimestepSpacing};
pub use noise_schedule::NoiseSchedule;
pub use sampler_names::{
    a1111_sampler_of, a1111_samplers, known_scheduler_names, schedule_types, scheduler_config_for,
};

use crate::rng::NoiseSource;
use crate::Result;

/// The diffusers scheduler classes diffuse implements, by their diffusers names.
pub fn scheduler_classes() -> impl Iterator<Item = &'static str> {
    names::class_names()
}

/// What one scheduler step returns.
#[derive(Debug, Clone)]
pub struct SchedulerOutput {
    /// The sample at the previous (less noisy) timestep.
    pub prev_sample: Tensor,
    /// The model's estimate of the clean sample, for the schedulers that compute one.
    pub pred_original_sample: Option<Tensor>,
}

/// One generation's scheduler: the timesteps and the state that carries from step to step.
///
/// Call order, as diffusers' pipelines do: `init_noise_sigma` scales the initial noise; for img2img,
/// `set_begin_index` then `add_noise`; then for each `t` in `timesteps()`: `scale_model_input`, the model,
/// `step`. Timesteps are `f64` because the sigma-based schedulers produce fractional ones.
pub trait Scheduler: Send {
    /// The timesteps to visit, in order (diffusers' `scheduler.timesteps`).
    fn timesteps(&self) -> &[f64];

    /// diffusers' `scheduler.sigmas` for the sigma-based schedulers (one per timestep plus the final one;
    /// interleaved like the timesteps for Heun and KDPM2); empty for the others.
    fn sigmas(&self) -> &[f64];

    /// The factor the initial noise is multiplied by.
    fn init_noise_sigma(&self) -> f64;

    /// How many model evaluations one "step" of the algorithm takes (2 for Heun and KDPM2).
    ///
    /// img2img starts at `timesteps()[(N - init_timestep) * order]`, as diffusers' pipelines do.
    fn order(&self) -> usize;

    /// Sets the index of the first timestep used (img2img); a no-op where diffusers has none.
    fn set_begin_index(&mut self, begin_index: usize);

    /// Scales the denoising model's input for timestep `t`.
    fn scale_model_input(&mut self, sample: &Tensor, t: f64) -> Result<Tensor>;

    /// One step back from timestep `t`: from the model's output and the current sample to the previous sample.
    ///
    /// Stochastic schedulers draw their noise from `noise` in the order and shapes diffusers draws it.
    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<SchedulerOutput>;

    /// Noises a clean sample to timestep `t` (img2img's starting point).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor>;
}
