//! The math every scheduler shares, computed as diffusers computes it: betas and alphas_cumprod in torch's
//! float32 (with its FMA linspace and double-accumulated cumprod), timestep spacing and sigma schedules in
//! numpy's float64 (half-to-even rounding, numpy's `arange`, `linspace` and `interp`).

use super::config::{SchedulerConfig, SigmaSchedule, TimestepSpacing};
use crate::Result;

/// A class's beta-schedule defaults (for keys the configuration leaves out) and the options it registers.
#[derive(Debug, Clone, Copy)]
pub struct BetaDefaults {
    /// Default `beta_start`.
    pub beta_start: f64,
    /// Default `beta_end`.
    pub beta_end: f64,
    /// Default `beta_schedule`.
    pub schedule: &'static str,
    /// Whether the class has `rescale_betas_zero_snr` (the others ignore the key, as diffusers does).
    pub zero_snr: bool,
    /// Whether the class accepts the `sigmoid` schedule (DDPM).
    pub sigmoid: bool,
}

/// Linear from 1e-4 to 0.02, with zero-SNR rescaling (DDIM, Euler, Euler Ancestral, DPM-Solver multistep,
/// UniPC).
pub const LINEAR_DEFAULTS: BetaDefaults = BetaDefaults {
    beta_start: 0.0001,
    beta_end: 0.02,
    schedule: "linear",
    zero_snr: true,
    sigmoid: false,
};

/// Linear from 1e-4 to 0.02, without zero-SNR rescaling (PNDM, LMS, DEIS, DPM-Solver singlestep).
pub const LINEAR_PLAIN: BetaDefaults = BetaDefaults {
    zero_snr: false,
    ..LINEAR_DEFAULTS
};

/// DDPM: linear from 1e-4 to 0.02, zero-SNR rescaling and the sigmoid schedule.
pub const DDPM_DEFAULTS: BetaDefaults = BetaDefaults {
    sigmoid: true,
    ..LINEAR_DEFAULTS
};

/// The k-diffusion ports (Heun, KDPM2, KDPM2 Ancestral): linear from 0.00085 to 0.012.
pub const K_DEFAULTS: BetaDefaults = BetaDefaults {
    beta_start: 0.00085,
    beta_end: 0.012,
    schedule: "linear",
    zero_snr: false,
    sigmoid: false,
};

/// LCM: scaled_linear from 0.00085 to 0.012, with zero-SNR rescaling.
pub const LCM_DEFAULTS: BetaDefaults = BetaDefaults {
    beta_start: 0.00085,
    beta_end: 0.012,
    schedule: "scaled_linear",
    zero_snr: true,
    sigmoid: false,
};

/// `torch.linspace(a, b, n, dtype=torch.float32)`, bit for bit (torch evaluates it with fused multiply-adds).
pub fn torch_linspace_f32(a: f64, b: f64, n: usize) -> Vec<f32> {
    let (a, b) = (a as f32, b as f32);
    if n == 1 {
        return vec![a];
    }
    let step = (b - a) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, a)
            } else {
                (-step).mul_add((n - 1 - i) as f32, b)
            }
        })
        .collect()
}

/// `numpy.linspace(a, b, n)` in float64.
pub fn np_linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![a];
    }
    let step = (b - a) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + a).collect();
    v[n - 1] = b;
    v
}

/// `numpy.arange(start, stop, step)` for floats.
pub fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let delta = (start + step) - start;
    (0..len as usize)
        .map(|i| start + i as f64 * delta)
        .collect()
}

/// `numpy.interp(x, arange(len(fp)), fp)`.
pub fn np_interp(x: f64, fp: &[f64]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return fp[0];
    }
    if x >= last as f64 {
        return fp[last];
    }
    let j = x.floor() as usize;
    if j as f64 == x {
        return fp[j];
    }
    (fp[j + 1] - fp[j]) * (x - j as f64) + fp[j]
}

/// The training betas for `config`: `trained_betas`, or the `beta_schedule` with the class's defaults.
pub fn betas(config: &SchedulerConfig, defaults: BetaDefaults, n_train: usize) -> Result<Vec<f32>> {
    if let Some(trained) = &config.trained_betas {
        if trained.len() != n_train {
            return Err(config.unsupported(
                "trained_betas",
                format!("{} values", trained.len()),
                &format!("num_train_timesteps ({n_train}) values"),
            ));
        }
        return Ok(trained.iter().map(|&b| b as f32).collect());
    }
    let start = config.beta_start.unwrap_or(defaults.beta_start);
    let end = config.beta_end.unwrap_or(defaults.beta_end);
    let schedule = config.beta_schedule.as_deref().unwrap_or(defaults.schedule);
    match schedule {
        "linear" => Ok(torch_linspace_f32(start, end, n_train)),
        "scaled_linear" => Ok(torch_linspace_f32(start.sqrt(), end.sqrt(), n_train)
            .into_iter()
            .map(|b| b * b)
            .collect()),
        "squaredcos_cap_v2" => Ok(cosine_betas(n_train)),
        "sigmoid" if defaults.sigmoid => Ok(torch_linspace_f32(-6.0, 6.0, n_train)
            .into_iter()
            .map(|x| (1.0 / (1.0 + (-x).exp())) * (end - start) as f32 + start as f32)
            .collect()),
        other => Err(config.unsupported(
            "beta_schedule",
            other,
            if defaults.sigmoid {
                "linear, scaled_linear, squaredcos_cap_v2, sigmoid"
            } else {
                "linear, scaled_linear, squaredcos_cap_v2"
            },
        )),
    }
}

/// `betas_for_alpha_bar` with the cosine alpha-bar, in floating point throughout (max beta 0.999).
pub fn cosine_betas(n_train: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        let c = ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos();
        c * c
    };
    (0..n_train)
        .map(|i| {
            let t1 = i as f64 / n_train as f64;
            let t2 = (i + 1) as f64 / n_train as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// `torch.cumprod` of a float32 vector (torch accumulates in double and rounds each output).
pub fn cumprod_f32(values: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    values
        .iter()
        .map(|&v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// `alphas_cumprod = cumprod(1 - betas)`.
pub fn alphas_cumprod(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|&b| 1.0 - b).collect();
    cumprod_f32(&alphas)
}

/// `rescale_zero_terminal_snr`: rescales betas so the last timestep has zero SNR (Lin et al. 2023).
pub fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let mut sqrt_bar: Vec<f32> = alphas_cumprod(betas).iter().map(|a| a.sqrt()).collect();
    let first = sqrt_bar[0];
    let last = sqrt_bar[sqrt_bar.len() - 1];
    let scale = first / (first - last);
    for v in &mut sqrt_bar {
        *v = (*v - last) * scale;
    }
    let bar: Vec<f32> = sqrt_bar.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    for i in 1..bar.len() {
        out.push(1.0 - bar[i] / bar[i - 1]);
    }
    out
}

/// The alphas_cumprod of the betas, rescaled to zero terminal SNR when the class has the option and
/// `rescale_betas_zero_snr` is set.
pub fn alphas_cumprod_for(
    config: &SchedulerConfig,
    defaults: BetaDefaults,
    n_train: usize,
) -> Result<Vec<f32>> {
    let mut b = betas(config, defaults, n_train)?;
    if defaults.zero_snr && config.rescale_betas_zero_snr == Some(true) {
        b = rescale_zero_terminal_snr(&b);
    }
    Ok(alphas_cumprod(&b))
}

/// The training sigmas `sqrt((1 - ac) / ac)`, in float32 as torch computes them, in timestep order.
pub fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|&a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// `numpy.log` of the float32 training sigmas (float32 results).
pub fn log_sigmas(sigmas: &[f32]) -> Vec<f32> {
    sigmas.iter().map(|s| s.ln()).collect()
}

/// `_sigma_to_t`: the fractional timestep whose log-sigma is `sigma`'s, by linear interpolation.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    let low_idx = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l as f64 >= 0.0)
        .unwrap_or(0)
        .min(n - 2);
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx];
    let high = log_sigmas[high_idx];
    let w = ((low as f64 - log_sigma) / (low - high) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// Karras et al.'s sigmas (rho = 7) from `sigma_max` down to `sigma_min`.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0f64;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// Log-uniform sigmas from `sigma_max` down to `sigma_min`.
pub fn exponential_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    np_linspace(sigma_max.ln(), sigma_min.ln(), n)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// Sigmas at the Beta(0.6, 0.6) quantiles of `1 - linspace(0, 1, n)`, from `sigma_max` down to `sigma_min`.
pub fn beta_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|x| sigma_min + super::beta_ppf::beta_ppf(1.0 - x, 0.6, 0.6) * (sigma_max - sigma_min))
        .collect()
}

/// `round()` as numpy does it: half to even.
pub fn np_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// "leading" spacing, `(arange(n) * (T // n)).round()[::-1] + offset`.
pub fn leading_timesteps(n_train: usize, n: usize, offset: i64) -> Vec<i64> {
    let ratio = (n_train / n) as i64;
    (0..n as i64).rev().map(|i| i * ratio + offset).collect()
}

/// "trailing" spacing, `arange(T, 0, -T / n).round() - 1`.
pub fn trailing_timesteps(n_train: usize, n: usize) -> Vec<f64> {
    np_arange(n_train as f64, 0.0, -(n_train as f64 / n as f64))
        .into_iter()
        .map(|t| np_round(t) - 1.0)
        .collect()
}

/// The common `set_timesteps` spacing: linspace (rounded, or left fractional as Euler leaves it), leading
/// (plus `offset`) or trailing, descending.
pub fn spaced_timesteps(
    spacing: TimestepSpacing,
    n_train: usize,
    n: usize,
    offset: i64,
    round_linspace: bool,
) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (n_train - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|t| {
                if round_linspace {
                    np_round(t)
                } else {
                    t as f32 as f64
                }
            })
            .collect(),
        TimestepSpacing::Leading => leading_timesteps(n_train, n, offset)
            .into_iter()
            .map(|t| t as f64)
            .collect(),
        TimestepSpacing::Trailing => trailing_timesteps(n_train, n),
    }
}

/// Checks a requested step count against the training timesteps.
pub fn check_steps(n: usize, n_train: usize) -> Result<()> {
    if n == 0 || n > n_train {
        return Err(crate::Error::invalid(
            "steps",
            format!("{n}: must be between 1 and num_train_timesteps ({n_train})"),
        ));
    }
    Ok(())
}

/// The sigmas of a Karras, exponential or beta schedule between `sigma_min` and `sigma_max`.
pub fn converted_sigmas(kind: SigmaSchedule, sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    match kind {
        SigmaSchedule::Karras => karras_sigmas(sigma_min, sigma_max, n),
        SigmaSchedule::Exponential => exponential_sigmas(sigma_min, sigma_max, n),
        SigmaSchedule::Beta => beta_sigmas(sigma_min, sigma_max, n),
        SigmaSchedule::Interpolated => Vec::new(),
    }
}

/// `(sigma_min, sigma_max)` for a converted schedule: the configuration's `sigma_min`/`sigma_max` where the
/// class registers them (`honors_bounds`), else the last and first of `in_sigmas` (descending).
pub fn sigma_bounds(
    config: &SchedulerConfig,
    honors_bounds: bool,
    in_sigmas: &[f64],
) -> (f64, f64) {
    let (cfg_min, cfg_max) = if honors_bounds {
        (config.sigma_min, config.sigma_max)
    } else {
        (None, None)
    };
    (
        cfg_min.unwrap_or(in_sigmas[in_sigmas.len() - 1]),
        cfg_max.unwrap_or(in_sigmas[0]),
    )
}

/// Rounds each value to float32 (numpy's `.astype(np.float32)`), kept as f64.
pub fn as_f32(values: &[f64]) -> Vec<f64> {
    values.iter().map(|&v| v as f32 as f64).collect()
}

/// `_sigma_to_t` as the KDPM2 schedulers evaluate it on float32 tensors: entirely in float32 (NaN for a
/// NaN sigma).
pub fn sigma_to_t_f32(sigma: f32, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    let low_idx = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l >= 0.0)
        .unwrap_or(0)
        .min(n - 2);
    let (low, high) = (log_sigmas[low_idx], log_sigmas[low_idx + 1]);
    let w = (low - log_sigma) / (low - high);
    let w = if w.is_nan() { w } else { w.clamp(0.0, 1.0) };
    ((1.0 - w) * low_idx as f32 + w * (low_idx + 1) as f32) as f64
}
