//! The scheduler name tables: diffusers class names to builders, and A1111 sampler names to a class plus
//! option overrides, as diffusers' scheduler overview maps them.

use super::config::{SchedulerConfig, TimestepRequest};
use super::{
    ddim, ddpm, deis, dpm_multistep, dpm_singlestep, euler, euler_ancestral, heun, kdpm2,
    kdpm2_ancestral, lcm, lms, pndm, unipc, Scheduler,
};
use crate::{Error, Result};

/// Makes a scheduler for one generation.
pub(crate) type BuildFn = fn(&SchedulerConfig, &TimestepRequest) -> Result<Box<dyn Scheduler>>;

/// One row per scheduler: the diffusers class name, its builder, and the defaults of the two keys that
/// diffusers' Stable Diffusion pipelines rewrite (`steps_offset`, `clip_sample`), where the class has them.
struct Class {
    name: &'static str,
    build: BuildFn,
    /// Whether `__init__` takes `steps_offset` (its default is always 0).
    has_steps_offset: bool,
    /// `clip_sample`'s default, where `__init__` takes it.
    clip_sample: Option<bool>,
}

/// Shorthand for a row of [`CLASSES`].
const fn class(
    name: &'static str,
    build: BuildFn,
    has_steps_offset: bool,
    clip_sample: Option<bool>,
) -> Class {
    Class {
        name,
        build,
        has_steps_offset,
        clip_sample,
    }
}

/// Every scheduler diffuse has.
const CLASSES: &[Class] = &[
    class("DDIMScheduler", ddim::build, true, Some(true)),
    class("DDPMScheduler", ddpm::build, true, Some(true)),
    class("PNDMScheduler", pndm::build, true, None),
    class("LMSDiscreteScheduler", lms::build, true, None),
    class("EulerDiscreteScheduler", euler::build, true, None),
    class(
        "EulerAncestralDiscreteScheduler",
        euler_ancestral::build,
        true,
        None,
    ),
    class("HeunDiscreteScheduler", heun::build, true, Some(false)),
    class("KDPM2DiscreteScheduler", kdpm2::build, true, None),
    class(
        "KDPM2AncestralDiscreteScheduler",
        kdpm2_ancestral::build,
        true,
        None,
    ),
    class(
        "DPMSolverMultistepScheduler",
        dpm_multistep::build,
        true,
        None,
    ),
    class(
        "DPMSolverSinglestepScheduler",
        dpm_singlestep::build,
        false,
        None,
    ),
    class("UniPCMultistepScheduler", unipc::build, true, None),
    class("DEISMultistepScheduler", deis::build, true, None),
    class("LCMScheduler", lcm::build, true, Some(false)),
];

/// An A1111 sampler name: its class, whether it uses Karras sigmas, DPM-Solver's algorithm type, and
/// whether it is PNDM without the Runge-Kutta warm-up (PLMS).
struct Sampler {
    name: &'static str,
    class: &'static str,
    karras: bool,
    algorithm: Option<&'static str>,
    plms: bool,
}

/// Shorthand for a row of [`A1111`].
const fn sampler(
    name: &'static str,
    class: &'static str,
    karras: bool,
    algorithm: Option<&'static str>,
) -> Sampler {
    Sampler {
        name,
        class,
        karras,
        algorithm,
        plms: false,
    }
}

const DPM_MULTI: &str = "DPMSolverMultistepScheduler";
const DPM_SINGLE: &str = "DPMSolverSinglestepScheduler";
const DPM_PP: Option<&str> = Some("dpmsolver++");
const SDE_DPM_PP: Option<&str> = Some("sde-dpmsolver++");

/// A1111 sampler names, as diffusers' scheduler overview maps them. A name fixes the sigma schedule (Karras
/// or the model's default spacing) and the DPM-Solver algorithm; every other option comes from the model.
const A1111: &[Sampler] = &[
    sampler("DPM++ 2M", DPM_MULTI, false, DPM_PP),
    sampler("DPM++ 2M Karras", DPM_MULTI, true, DPM_PP),
    sampler("DPM++ 2M SDE", DPM_MULTI, false, SDE_DPM_PP),
    sampler("DPM++ 2M SDE Karras", DPM_MULTI, true, SDE_DPM_PP),
    sampler("DPM++ SDE", DPM_SINGLE, false, DPM_PP),
    sampler("DPM++ SDE Karras", DPM_SINGLE, true, DPM_PP),
    sampler("DPM2", "KDPM2DiscreteScheduler", false, None),
    sampler("DPM2 Karras", "KDPM2DiscreteScheduler", true, None),
    sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", false, None),
    sampler(
        "DPM2 a Karras",
        "KDPM2AncestralDiscreteScheduler",
        true,
        None,
    ),
    sampler("Euler", "EulerDiscreteScheduler", false, None),
    sampler("Euler a", "EulerAncestralDiscreteScheduler", false, None),
    sampler("Heun", "HeunDiscreteScheduler", false, None),
    sampler("LMS", "LMSDiscreteScheduler", false, None),
    sampler("LMS Karras", "LMSDiscreteScheduler", true, None),
    sampler("DDIM", "DDIMScheduler", false, None),
    Sampler {
        plms: true,
        ..sampler("PLMS", "PNDMScheduler", false, None)
    },
    sampler("DDPM", "DDPMScheduler", false, None),
    sampler("UniPC", "UniPCMultistepScheduler", false, None),
    sampler("DEIS", "DEISMultistepScheduler", false, None),
    sampler("LCM", "LCMScheduler", false, None),
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

/// The supported class names, comma-separated, for error messages.
pub(crate) fn class_list() -> String {
    CLASSES
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every name [`scheduler_config_for`] accepts: the A1111 sampler names, then the diffusers class names.
pub fn known_scheduler_names() -> Vec<&'static str> {
    A1111
        .iter()
        .map(|s| s.name)
        .chain(CLASSES.iter().map(|c| c.name))
        .collect()
}

/// The configuration for scheduler `name` (an A1111 sampler name or a diffusers class name, any case) on top
/// of the model's `base` configuration, as diffusers' `Class.from_config(pipe.scheduler.config, **overrides)`
/// does: the base's options carry over, the class changes, and the sampler's overrides are applied.
pub fn scheduler_config_for(name: &str, base: &SchedulerConfig) -> Result<SchedulerConfig> {
    let wanted = name.trim();
    let mut config = base.for_from_config();
    if let Some(s) = A1111.iter().find(|s| s.name.eq_ignore_ascii_case(wanted)) {
        config.class_name = Some(s.class.to_string());
        config.use_karras_sigmas = Some(s.karras);
        if s.karras {
            config.use_exponential_sigmas = None;
            config.use_beta_sigmas = None;
        }
        if let Some(algorithm) = s.algorithm {
            config.algorithm_type = Some(algorithm.to_string());
        }
        if s.plms {
            config.skip_prk_steps = Some(true);
        }
        return Ok(config);
    }
    if let Some(class) = CLASSES.iter().find(|c| c.name.eq_ignore_ascii_case(wanted)) {
        config.class_name = Some(class.name.to_string());
        return Ok(config);
    }
    Err(Error::invalid(
        "scheduler",
        format!(
            "unknown scheduler {name:?}; known: {}",
            known_scheduler_names().join(", ")
        ),
    ))
}

/// How AUTOMATIC1111 names the sampler of `config` in its PNG metadata: the sampler name without the schedule
/// suffix, and the schedule type ("Karras") when there is one. A config no A1111 sampler stands for is named by
/// its diffusers class.
pub fn a1111_sampler_of(config: &SchedulerConfig) -> (String, Option<&'static str>) {
    let class = config.class_name.as_deref().unwrap_or("PNDMScheduler");
    let karras = config.use_karras_sigmas.unwrap_or(false);
    let plms = config.skip_prk_steps.unwrap_or(false);
    let algorithm = config.algorithm_type.as_deref().unwrap_or("dpmsolver++");
    let found = A1111.iter().find(|s| {
        s.class == class
            && s.karras == karras
            && s.plms == (class == "PNDMScheduler" && plms)
            && s.algorithm.is_none_or(|a| a == algorithm)
    });
    match found {
        Some(s) if s.karras => (
            s.name.trim_end_matches(" Karras").to_string(),
            Some("Karras"),
        ),
        Some(s) => (s.name.to_string(), None),
        None => (class.to_string(), None),
    }
}
