//! The sampler names people type, mapped to the diffusers configuration that reproduces them: AUTOMATIC1111's
//! sampler names (with a schedule type after them, "DPM++ 2M Karras", as A1111 accepts them), ComfyUI's
//! sampler and scheduler names ("dpmpp_2m_sde karras"), and diffusers' class names; and back, as A1111 names
//! a configuration in its PNG parameters.
//!
//! The mapping follows diffusers' scheduler overview. Names diffusers has no scheduler for (DPM++ 2S a,
//! DPM fast, DPM adaptive, Restart, Euler a with Karras sigmas, ...) are refused with the reason: there is no
//! reference to be equal to.

use super::config::SchedulerConfig;
use super::names::{class_list, class_named, class_names, has_sigma_options, has_spacing};
use crate::{Error, Result};

const DPM_MULTI: &str = "DPMSolverMultistepScheduler";
const DPM_SINGLE: &str = "DPMSolverSinglestepScheduler";
const UNIPC: &str = "UniPCMultistepScheduler";

/// DPM-Solver multistep's identity: algorithm, solver type and order.
type Dpm = (&'static str, &'static str, usize);

/// What a sampler fixes beyond its class.
#[derive(Clone, Copy, PartialEq)]
enum Fixes {
    /// Nothing: every option comes from the model.
    Nothing,
    /// DPM-Solver multistep's algorithm, solver type and order.
    Dpm(Dpm),
    /// DPM-Solver singlestep's algorithm.
    Algorithm(&'static str),
    /// PNDM without the Runge-Kutta warm-up.
    Plms,
    /// UniPC's variant; bh1 ends at sigma_min, since at a final sigma of zero its last step divides by
    /// zero (diffusers' result is NaN).
    UniPc(&'static str),
}

/// A sampler: its A1111 name (as PNG parameters record it), other names it goes by (ComfyUI's, A1111's
/// `k_` aliases), its diffusers class and what it fixes.
struct Sampler {
    name: &'static str,
    aliases: &'static [&'static str],
    class: &'static str,
    fixes: Fixes,
}

const fn sampler(
    name: &'static str,
    aliases: &'static [&'static str],
    class: &'static str,
    fixes: Fixes,
) -> Sampler {
    Sampler {
        name,
        aliases,
        class,
        fixes,
    }
}

/// The samplers, as diffusers' scheduler overview maps A1111's names, with ComfyUI's names for the same.
const SAMPLERS: &[Sampler] = &[
    sampler(
        "DPM++ 2M",
        &["k_dpmpp_2m", "dpmpp_2m"],
        DPM_MULTI,
        Fixes::Dpm(("dpmsolver++", "midpoint", 2)),
    ),
    sampler(
        "DPM++ 2M SDE",
        &["k_dpmpp_2m_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu"],
        DPM_MULTI,
        Fixes::Dpm(("sde-dpmsolver++", "midpoint", 2)),
    ),
    sampler(
        "DPM++ 2M SDE Heun",
        &[
            "k_dpmpp_2m_sde_heun",
            "dpmpp_2m_sde_heun",
            "dpmpp_2m_sde_heun_gpu",
        ],
        DPM_MULTI,
        Fixes::Dpm(("sde-dpmsolver++", "heun", 2)),
    ),
    // diffusers' third-order SDE DPM-Solver; its third-order term is not k-diffusion's, so the images are
    // close to A1111's and ComfyUI's, not equal.
    sampler(
        "DPM++ 3M SDE",
        &["k_dpmpp_3m_sde", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu"],
        DPM_MULTI,
        Fixes::Dpm(("sde-dpmsolver++", "heun", 3)),
    ),
    sampler(
        "DPM++ SDE",
        &["k_dpmpp_sde", "dpmpp_sde", "dpmpp_sde_gpu"],
        DPM_SINGLE,
        Fixes::Algorithm("dpmsolver++"),
    ),
    sampler(
        "DPM2",
        &["k_dpm_2", "dpm_2"],
        "KDPM2DiscreteScheduler",
        Fixes::Nothing,
    ),
    sampler(
        "DPM2 a",
        &["k_dpm_2_a", "dpm_2_ancestral"],
        "KDPM2AncestralDiscreteScheduler",
        Fixes::Nothing,
    ),
    sampler(
        "Euler",
        &["k_euler", "euler"],
        "EulerDiscreteScheduler",
        Fixes::Nothing,
    ),
    sampler(
        "Euler a",
        &["k_euler_a", "k_euler_ancestral", "euler_ancestral"],
        "EulerAncestralDiscreteScheduler",
        Fixes::Nothing,
    ),
    sampler(
        "Heun",
        &["k_heun", "heun"],
        "HeunDiscreteScheduler",
        Fixes::Nothing,
    ),
    sampler(
        "LMS",
        &["k_lms", "lms"],
        "LMSDiscreteScheduler",
        Fixes::Nothing,
    ),
    sampler("DDIM", &["ddim"], "DDIMScheduler", Fixes::Nothing),
    sampler("PLMS", &["plms"], "PNDMScheduler", Fixes::Plms),
    sampler("DDPM", &["ddpm"], "DDPMScheduler", Fixes::Nothing),
    sampler(
        "UniPC",
        &["unipc", "uni_pc_bh2"],
        UNIPC,
        Fixes::UniPc("bh2"),
    ),
    sampler("UniPC bh1", &["uni_pc"], UNIPC, Fixes::UniPc("bh1")),
    sampler("DEIS", &["deis"], "DEISMultistepScheduler", Fixes::Nothing),
    sampler("LCM", &["k_lcm", "lcm"], "LCMScheduler", Fixes::Nothing),
    // Trajectory consistency distillation (TCD-LoRA); `eta` is its gamma.
    sampler("TCD", &["tcd"], "TCDScheduler", Fixes::Nothing),
];

/// Sampler names people type that diffusers has no scheduler for, and what to use instead.
const NO_REFERENCE: &[(&[&str], &str)] = &[
    (
        &["DPM++ 2S a", "k_dpmpp_2s_a", "dpmpp_2s_ancestral"],
        "diffusers' scheduler overview lists it as N/A; DPM++ SDE (DPMSolverSinglestepScheduler) is the closest",
    ),
    (&["DPM fast", "k_dpm_fast", "dpm_fast"], "diffusers has no DPM fast"),
    (&["DPM adaptive", "k_dpm_ad", "dpm_adaptive"], "diffusers has no DPM adaptive"),
    (&["Restart", "restart"], "diffusers has no Restart sampler"),
    (&["DDIM CFG++", "ddim_cfgpp"], "diffusers has no CFG++ sampler"),
];

/// What a schedule type changes.
#[derive(Clone, Copy, PartialEq)]
enum Schedule {
    /// The sampler's own schedule ("Automatic").
    Automatic,
    /// `use_karras_sigmas`.
    Karras,
    /// `use_exponential_sigmas`, with linspace timesteps (diffusers' overview).
    Exponential,
    /// `use_beta_sigmas`, with linspace timesteps.
    Beta,
    /// A timestep spacing (and `steps_offset`, where it sets one).
    Spacing(&'static str, Option<i64>),
}

/// Schedule types by A1111's label first (as PNG parameters record them), then their other names (A1111's
/// lower-case names, ComfyUI's scheduler names).
const SCHEDULES: &[(&str, &[&str], Schedule)] = &[
    ("Automatic", &["automatic"], Schedule::Automatic),
    ("Karras", &["karras"], Schedule::Karras),
    ("Exponential", &["exponential"], Schedule::Exponential),
    ("Beta", &["beta"], Schedule::Beta),
    // ComfyUI's "simple" differs from trailing spacing by one timestep at some step counts.
    (
        "SGM Uniform",
        &["sgm_uniform", "SGMUniform", "Simple", "simple"],
        Schedule::Spacing("trailing", None),
    ),
    (
        "Uniform",
        &["uniform", "Normal", "normal"],
        Schedule::Spacing("linspace", None),
    ),
    (
        "DDIM",
        &["ddim", "ddim_uniform"],
        Schedule::Spacing("leading", Some(1)),
    ),
];

/// Schedule types people type that diffusers has no option for.
const NO_REFERENCE_SCHEDULES: &[&str] = &[
    "Polyexponential",
    "KL Optimal",
    "kl_optimal",
    "Align Your Steps",
    "align_your_steps",
    "linear_quadratic",
];

/// Every name [`scheduler_config_for`] accepts on its own: the sampler names, each with "Karras" where its
/// class takes Karras sigmas, then the diffusers class names. Any sampler also takes any schedule type its
/// class can honor ("DPM++ 2M SGM Uniform", "euler karras").
pub fn known_scheduler_names() -> Vec<String> {
    let samplers = SAMPLERS.iter().map(|s| s.name.to_string());
    let karras = SAMPLERS
        .iter()
        .filter(|s| has_sigma_options(s.class))
        .map(|s| format!("{} Karras", s.name));
    samplers
        .chain(karras)
        .chain(class_names().map(String::from))
        .collect()
}

/// A1111's sampler names and their aliases, as `/sdapi/v1/samplers` lists them.
pub fn a1111_samplers() -> Vec<(&'static str, &'static [&'static str])> {
    SAMPLERS.iter().map(|s| (s.name, s.aliases)).collect()
}

/// The schedule types, by A1111's label, with their other names.
pub fn schedule_types() -> Vec<(&'static str, &'static [&'static str])> {
    SCHEDULES
        .iter()
        .map(|(label, names, _)| (*label, *names))
        .collect()
}

/// The configuration for scheduler `name` on top of the model's `base` configuration, as diffusers'
/// `Class.from_config(pipe.scheduler.config, **overrides)` does: the base's options carry over, the class
/// changes, and the sampler's and schedule's overrides are applied. `name` is a sampler name (A1111's or
/// ComfyUI's, any case) optionally followed by a schedule type ("DPM++ 2M Karras", "dpmpp_2m_sde
/// exponential"), or a diffusers class name. A sampler without a schedule type has none of the Karras,
/// exponential or beta sigmas, and the model's timestep spacing.
pub fn scheduler_config_for(name: &str, base: &SchedulerConfig) -> Result<SchedulerConfig> {
    let wanted = name.trim();
    let mut config = base.for_from_config();
    if let Some(class) = class_named(wanted) {
        config.class_name = Some(class.to_string());
        return Ok(config);
    }
    let (sampler, schedule) = split(wanted)?;
    config.class_name = Some(sampler.class.to_string());
    apply_fixes(&mut config, sampler.fixes);
    if has_sigma_options(sampler.class) {
        config.use_karras_sigmas = Some(false);
        config.use_exponential_sigmas = Some(false);
        config.use_beta_sigmas = Some(false);
    }
    apply_schedule(&mut config, sampler, schedule)?;
    Ok(config)
}

/// `wanted` as a sampler and a schedule type.
fn split(wanted: &str) -> Result<(&'static Sampler, Schedule)> {
    if let Some(sampler) = find_sampler(wanted)? {
        return Ok((sampler, Schedule::Automatic));
    }
    // The longest schedule name the text ends with, after a space or an underscore.
    let suffix = SCHEDULES
        .iter()
        .flat_map(|(label, names, schedule)| {
            std::iter::once(*label)
                .chain(names.iter().copied())
                .map(move |n| (n, *schedule))
        })
        .filter(|(n, _)| ends_with_word(wanted, n))
        .max_by_key(|(n, _)| n.len());
    if let Some((n, schedule)) = suffix {
        let head = wanted[..wanted.len() - n.len()].trim_end_matches([' ', '_']);
        if let Some(sampler) = find_sampler(head)? {
            return Ok((sampler, schedule));
        }
    }
    if let Some(n) = NO_REFERENCE_SCHEDULES
        .iter()
        .find(|n| ends_with_word(wanted, n))
    {
        return Err(Error::invalid(
            "scheduler",
            format!("{wanted:?}: diffusers has no {n} schedule, so there is no reference to match"),
        ));
    }
    Err(Error::invalid(
        "scheduler",
        format!(
            "unknown scheduler {wanted:?}; known: {}, each optionally followed by a schedule type ({}), or a \
             diffusers class ({})",
            SAMPLERS.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
            SCHEDULES.iter().map(|(l, _, _)| *l).collect::<Vec<_>>().join(", "),
            class_list()
        ),
    ))
}

/// Whether `text` ends with `word` (any case) after a space or an underscore.
fn ends_with_word(text: &str, word: &str) -> bool {
    let (t, w) = (text.to_ascii_lowercase(), word.to_ascii_lowercase());
    t.len() > w.len()
        && t.ends_with(&w)
        && matches!(t.as_bytes()[t.len() - w.len() - 1], b' ' | b'_')
}

/// The sampler named `name` (any case); an error for one diffusers has no reference for.
fn find_sampler(name: &str) -> Result<Option<&'static Sampler>> {
    let name = name.trim();
    if let Some((_, why)) = NO_REFERENCE
        .iter()
        .find(|(names, _)| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
    {
        return Err(Error::invalid(
            "scheduler",
            format!("{name:?}: {why}, so there is no reference to match"),
        ));
    }
    Ok(SAMPLERS.iter().find(|s| {
        s.name.eq_ignore_ascii_case(name) || s.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }))
}

fn apply_fixes(config: &mut SchedulerConfig, fixes: Fixes) {
    match fixes {
        Fixes::Nothing => {}
        Fixes::Dpm((algorithm, solver_type, order)) => {
            config.algorithm_type = Some(algorithm.to_string());
            config.solver_type = Some(solver_type.to_string());
            config.solver_order = Some(order);
        }
        Fixes::Algorithm(algorithm) => config.algorithm_type = Some(algorithm.to_string()),
        Fixes::Plms => config.skip_prk_steps = Some(true),
        Fixes::UniPc(variant) => {
            config.solver_type = Some(variant.to_string());
            if variant == "bh1" {
                config.final_sigmas_type = Some("sigma_min".into());
            }
        }
    }
}

fn apply_schedule(
    config: &mut SchedulerConfig,
    sampler: &Sampler,
    schedule: Schedule,
) -> Result<()> {
    let refuse = |what: &str| {
        Err(Error::invalid(
            "scheduler",
            format!(
                "{} has no {what} in diffusers ({} takes no such option), so there is no reference to match",
                sampler.name, sampler.class
            ),
        ))
    };
    let sigmas = |config: &mut SchedulerConfig, karras: bool, exponential: bool, beta: bool| {
        config.use_karras_sigmas = Some(karras);
        config.use_exponential_sigmas = Some(exponential);
        config.use_beta_sigmas = Some(beta);
    };
    match schedule {
        Schedule::Automatic => {}
        Schedule::Karras | Schedule::Exponential | Schedule::Beta
            if !has_sigma_options(sampler.class) =>
        {
            return refuse("Karras, exponential or beta schedule")
        }
        Schedule::Spacing(..) if !has_spacing(sampler.class) => return refuse("timestep spacing"),
        Schedule::Karras => sigmas(config, true, false, false),
        Schedule::Exponential | Schedule::Beta => {
            let exponential = schedule == Schedule::Exponential;
            sigmas(config, false, exponential, !exponential);
            if has_spacing(sampler.class) {
                config.timestep_spacing = Some("linspace".into());
            }
        }
        Schedule::Spacing(spacing, offset) => {
            config.timestep_spacing = Some(spacing.into());
            if offset.is_some() {
                config.steps_offset = offset;
            }
        }
    }
    Ok(())
}

/// How A1111 names `config` in its PNG parameters: the sampler name and the schedule type, if the schedule is
/// not the one `model` (the model's own scheduler configuration) gives. A configuration no sampler stands for
/// is named by its diffusers class. [`scheduler_config_for`] maps the name back to the same configuration.
pub fn a1111_sampler_of(
    config: &SchedulerConfig,
    model: &SchedulerConfig,
) -> (String, Option<&'static str>) {
    let class = config.class_name.as_deref().unwrap_or("PNDMScheduler");
    let Some(sampler) = SAMPLERS
        .iter()
        .find(|s| s.class == class && fixes_hold(config, s.fixes))
    else {
        return (class.to_string(), None);
    };
    let label = |wanted: Schedule| {
        SCHEDULES
            .iter()
            .find(|(_, _, s)| *s == wanted)
            .map(|(label, _, _)| *label)
    };
    let schedule = if config.use_karras_sigmas == Some(true) {
        label(Schedule::Karras)
    } else if config.use_exponential_sigmas == Some(true) {
        label(Schedule::Exponential)
    } else if config.use_beta_sigmas == Some(true) {
        label(Schedule::Beta)
    } else if config.timestep_spacing != model.timestep_spacing
        || config.steps_offset != model.steps_offset
    {
        SCHEDULES
            .iter()
            .find(|(_, _, s)| match s {
                Schedule::Spacing(spacing, offset) => {
                    config.timestep_spacing.as_deref() == Some(*spacing)
                        && offset.is_none_or(|o| config.steps_offset == Some(o))
                }
                _ => false,
            })
            .map(|(label, _, _)| *label)
    } else {
        None
    };
    (sampler.name.to_string(), schedule)
}

/// Whether `config` is what `fixes` makes it (missing keys at the class defaults).
fn fixes_hold(config: &SchedulerConfig, fixes: Fixes) -> bool {
    let or =
        |value: &Option<String>, default: &str| value.as_deref().unwrap_or(default).to_string();
    match fixes {
        Fixes::Nothing => true,
        Fixes::Dpm((algorithm, solver_type, order)) => {
            or(&config.algorithm_type, "dpmsolver++") == algorithm
                && or(&config.solver_type, "midpoint") == solver_type
                && config.solver_order.unwrap_or(2) == order
        }
        Fixes::Algorithm(algorithm) => or(&config.algorithm_type, "dpmsolver++") == algorithm,
        Fixes::Plms => config.skip_prk_steps == Some(true),
        Fixes::UniPc(variant) => {
            or(&config.solver_type, "bh2") == variant
                && (variant != "bh1" || or(&config.final_sigmas_type, "zero") == "sigma_min")
        }
    }
}
