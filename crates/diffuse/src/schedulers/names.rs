//! The diffusers scheduler classes diffuse has: their builders and the defaults and options that differ
//! between them. The names people type (A1111's, ComfyUI's) are in `sampler_names`.

use super::config::{SchedulerConfig, TimestepRequest};
use super::{
    ddim, ddpm, deis, dpm_multistep, dpm_singlestep, euler, euler_ancestral, heun, kdpm2,
    kdpm2_ancestral, lcm, lms, pndm, tcd, unipc, Scheduler,
};
use crate::Result;

/// Makes a scheduler for one generation.
pub(crate) type BuildFn = fn(&SchedulerConfig, &TimestepRequest) -> Result<Box<dyn Scheduler>>;

/// One row per scheduler: the diffusers class name, its builder, the defaults of the two keys that
/// diffusers' Stable Diffusion pipelines rewrite (`steps_offset`, `clip_sample`), where the class has them,
/// and which schedule options its `__init__` takes.
struct Class {
    name: &'static str,
    build: BuildFn,
    /// Whether `__init__` takes `steps_offset` (its default is always 0).
    has_steps_offset: bool,
    /// `clip_sample`'s default, where `__init__` takes it.
    clip_sample: Option<bool>,
    /// Whether `__init__` takes `use_karras_sigmas`, `use_exponential_sigmas` and `use_beta_sigmas`.
    sigma_options: bool,
    /// Whether `__init__` takes `timestep_spacing`.
    spacing: bool,
}

/// Shorthand for a row of [`CLASSES`]: most classes take `steps_offset` and `timestep_spacing`.
const fn class(
    name: &'static str,
    build: BuildFn,
    clip_sample: Option<bool>,
    sigma_options: bool,
) -> Class {
    Class {
        name,
        build,
        has_steps_offset: true,
        clip_sample,
        sigma_options,
        spacing: true,
    }
}

/// Every scheduler diffuse has.
const CLASSES: &[Class] = &[
    class("DDIMScheduler", ddim::build, Some(true), false),
    class("DDPMScheduler", ddpm::build, Some(true), false),
    class("PNDMScheduler", pndm::build, None, false),
    class("LMSDiscreteScheduler", lms::build, None, true),
    class("EulerDiscreteScheduler", euler::build, None, true),
    class(
        "EulerAncestralDiscreteScheduler",
        euler_ancestral::build,
        None,
        false,
    ),
    class("HeunDiscreteScheduler", heun::build, Some(false), true),
    class("KDPM2DiscreteScheduler", kdpm2::build, None, true),
    class(
        "KDPM2AncestralDiscreteScheduler",
        kdpm2_ancestral::build,
        None,
        true,
    ),
    class(
        "DPMSolverMultistepScheduler",
        dpm_multistep::build,
        None,
        true,
    ),
    Class {
        has_steps_offset: false,
        spacing: false,
        ..class(
            "DPMSolverSinglestepScheduler",
            dpm_singlestep::build,
            None,
            true,
        )
    },
    class("UniPCMultistepScheduler", unipc::build, None, true),
    class("DEISMultistepScheduler", deis::build, None, true),
    // LCM's and TCD's timesteps come from their distillation schedule: they take no timestep spacing.
    Class {
        spacing: false,
        ..class("LCMScheduler", lcm::build, Some(false), false)
    },
    Class {
        spacing: false,
        ..class("TCDScheduler", tcd::build, Some(false), false)
    },
];

/// The builder of a diffusers class, if diffuse has it.
pub(crate) fn builder_for_class(class: &str) -> Option<BuildFn> {
    row(class).map(|c| c.build)
}

/// The row of a diffusers class, if diffuse has it.
fn row(class: &str) -> Option<&'static Class> {
    CLASSES.iter().find(|c| c.name == class)
}

/// Whether diffusers' `class` takes `steps_offset` (default 0).
pub(crate) fn has_steps_offset(class: &str) -> bool {
    row(class).is_some_and(|c| c.has_steps_offset)
}

/// `clip_sample`'s default in diffusers' `class`, where the class takes it.
pub(crate) fn clip_sample_default(class: &str) -> Option<bool> {
    row(class).and_then(|c| c.clip_sample)
}

/// Whether diffusers' `class` takes `use_karras_sigmas`, `use_exponential_sigmas` and `use_beta_sigmas`.
pub(crate) fn has_sigma_options(class: &str) -> bool {
    row(class).is_some_and(|c| c.sigma_options)
}

/// Whether diffusers' `class` takes `timestep_spacing`.
pub(crate) fn has_spacing(class: &str) -> bool {
    row(class).is_some_and(|c| c.spacing)
}

/// The diffusers class named `name` in any case, with its exact spelling.
pub(crate) fn class_named(name: &str) -> Option<&'static str> {
    CLASSES
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case(name))
        .map(|c| c.name)
}

/// Every class name, in table order.
pub(crate) fn class_names() -> impl Iterator<Item = &'static str> {
    CLASSES.iter().map(|c| c.name)
}

/// The supported class names, comma-separated, for error messages.
pub(crate) fn class_list() -> String {
    CLASSES
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}
