//! Which training timesteps the denoiser sees most: diffusers' timestep bias (`--timestep_bias_strategy` of
//! `train_text_to_image_sdxl.py`). Every timestep starts with weight 1; the biased ones (the earliest or latest
//! `portion` of the schedule, or `[begin, end)`) are multiplied by `multiplier`, and timesteps are drawn in
//! proportion to the weights. Earlier timesteps are the less noisy ones, where a small image's details (a
//! shape's corners) are settled.

use diffuse::rng::TorchCpuRng;
use diffuse::{Error, Result};

/// Which timesteps get the multiplier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BiasStrategy {
    /// Uniform timesteps (diffusers' `"none"`).
    #[default]
    None,
    /// The first `portion` of the timesteps (the least noisy).
    Earlier,
    /// The last `portion` of the timesteps (the noisiest).
    Later,
    /// Timesteps in `[begin, end)`.
    Range,
}

/// The timestep distribution of the denoiser's training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimestepBias {
    /// Which timesteps are biased.
    pub strategy: BiasStrategy,
    /// The factor on the biased timesteps' weight (> 0; above 1 favors them).
    pub multiplier: f64,
    /// For `Earlier` and `Later`: the biased fraction of the schedule, in (0, 1].
    pub portion: f64,
    /// For `Range`: the first biased timestep.
    pub begin: usize,
    /// For `Range`: one past the last biased timestep.
    pub end: usize,
}

impl Default for TimestepBias {
    /// diffusers' defaults: no bias (multiplier 1, portion 0.25, range `[0, 1000)`).
    fn default() -> Self {
        Self {
            strategy: BiasStrategy::None,
            multiplier: 1.0,
            portion: 0.25,
            begin: 0,
            end: 1000,
        }
    }
}

impl TimestepBias {
    /// Rejects a multiplier or portion out of range, naming the field.
    pub fn validate(&self) -> Result<()> {
        if !self.multiplier.is_finite() || self.multiplier <= 0.0 {
            return Err(Error::invalid(
                "denoiser.timestep_bias.multiplier",
                format!(
                    "{}: must be positive (use `denoiser.timestep_bias.strategy = none` for no bias)",
                    self.multiplier
                ),
            ));
        }
        if matches!(self.strategy, BiasStrategy::Earlier | BiasStrategy::Later)
            && !(self.portion > 0.0 && self.portion <= 1.0)
        {
            return Err(Error::invalid(
                "denoiser.timestep_bias.portion",
                format!("{}: must be in (0, 1]", self.portion),
            ));
        }
        if self.strategy == BiasStrategy::Range && self.begin >= self.end {
            return Err(Error::invalid(
                "denoiser.timestep_bias.begin",
                format!(
                    "{} is not below `denoiser.timestep_bias.end` {}",
                    self.begin, self.end
                ),
            ));
        }
        Ok(())
    }

    /// The sampling probability of each of `num_timesteps` timesteps (they sum to 1), as diffusers'
    /// `generate_timestep_weights` computes them; `None` when the strategy is `None` (uniform).
    pub fn weights(&self, num_timesteps: usize) -> Result<Option<Vec<f64>>> {
        self.validate()?;
        let biased = match self.strategy {
            BiasStrategy::None => return Ok(None),
            BiasStrategy::Earlier | BiasStrategy::Later => {
                let count = (self.portion * num_timesteps as f64) as usize;
                if self.strategy == BiasStrategy::Earlier {
                    0..count
                } else {
                    num_timesteps - count..num_timesteps
                }
            }
            BiasStrategy::Range => {
                if self.end > num_timesteps {
                    return Err(Error::invalid(
                        "denoiser.timestep_bias.end",
                        format!("{}: the schedule has {num_timesteps} timesteps", self.end),
                    ));
                }
                self.begin..self.end
            }
        };
        let mut weights = vec![1.0; num_timesteps];
        for w in &mut weights[biased] {
            *w *= self.multiplier;
        }
        let total: f64 = weights.iter().sum();
        Ok(Some(weights.into_iter().map(|w| w / total).collect()))
    }
}

/// Draws training timesteps from the bias's distribution.
#[derive(Debug, Clone)]
pub struct TimestepSampler {
    /// Timesteps are drawn from `0..num_timesteps`.
    num_timesteps: usize,
    /// Cumulative probabilities; empty for uniform sampling.
    cumulative: Vec<f64>,
}

impl TimestepSampler {
    /// A sampler over `num_timesteps` timesteps with `bias`.
    pub fn new(bias: &TimestepBias, num_timesteps: usize) -> Result<Self> {
        let cumulative = bias
            .weights(num_timesteps)?
            .map(|w| {
                w.iter()
                    .scan(0.0, |sum, p| {
                        *sum += p;
                        Some(*sum)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            num_timesteps,
            cumulative,
        })
    }

    /// A sampler drawing uniformly from the `max_timestep` least noisy of `num_timesteps` timesteps (the
    /// refinement phase; `denoiser.refinement.max_timestep` names the limit).
    pub fn below(max_timestep: usize, num_timesteps: usize) -> Result<Self> {
        if max_timestep == 0 || max_timestep > num_timesteps {
            return Err(Error::invalid(
                "denoiser.refinement.max_timestep",
                format!("{max_timestep}: must be in 1..={num_timesteps}, the schedule's timesteps"),
            ));
        }
        Ok(Self {
            num_timesteps: max_timestep,
            cumulative: Vec::new(),
        })
    }

    /// One timestep in `0..num_timesteps`, from one 32-bit draw of `rng` (uniform: the draw modulo the count).
    pub fn sample(&self, rng: &mut TorchCpuRng) -> usize {
        let bits = rng.next_u32();
        if self.cumulative.is_empty() {
            return bits as usize % self.num_timesteps;
        }
        let u = (f64::from(bits) + 0.5) / 4_294_967_296.0;
        self.cumulative
            .partition_point(|&c| c <= u)
            .min(self.num_timesteps - 1)
    }
}
