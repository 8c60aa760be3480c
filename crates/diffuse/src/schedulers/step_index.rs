//! diffusers' step-index bookkeeping (`_step_index`, `_begin_index`, `index_for_timestep`), which img2img
//! depends on: the first `step` or `scale_model_input` finds its index from the timestep unless the pipeline
//! set a begin index, and every `step` advances it by one.

use super::ops::{index_for_timestep, unknown_timestep};
use crate::Result;

/// What `index_for_timestep` does with a timestep that is not in the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missing {
    /// Fail (the k-diffusion ports raise an IndexError).
    Error,
    /// Use the last index (the DPM-Solver family, UniPC, DEIS).
    Last,
}

/// The step index and begin index of one generation.
#[derive(Debug, Clone, Default)]
pub(crate) struct StepIndex {
    step: Option<usize>,
    begin: Option<usize>,
}

impl StepIndex {
    /// `set_begin_index`.
    pub(crate) fn set_begin(&mut self, begin: usize) {
        self.begin = Some(begin);
    }

    /// The current step index, found from `t` on first use (`_init_step_index`).
    pub(crate) fn get_or_init(
        &mut self,
        timesteps: &[f64],
        t: f64,
        missing: Missing,
    ) -> Result<usize> {
        if let Some(i) = self.step {
            return Ok(i);
        }
        let i = match self.begin {
            Some(b) => b,
            None => lookup(timesteps, t, missing)?,
        };
        self.step = Some(i);
        Ok(i)
    }

    /// Advances by one step.
    pub(crate) fn advance(&mut self) {
        self.step = self.step.map(|i| i + 1);
    }

    /// The index `add_noise` uses: looked up from `t` without a begin index, else the current step index,
    /// else the begin index.
    pub(crate) fn for_add_noise(
        &self,
        timesteps: &[f64],
        t: f64,
        missing: Missing,
    ) -> Result<usize> {
        match (self.begin, self.step) {
            (None, _) => lookup(timesteps, t, missing),
            (Some(_), Some(step)) => Ok(step),
            (Some(begin), None) => Ok(begin),
        }
    }
}

/// `index_for_timestep` with the class's handling of a missing timestep.
pub(crate) fn lookup(timesteps: &[f64], t: f64, missing: Missing) -> Result<usize> {
    match (index_for_timestep(timesteps, t), missing) {
        (Some(i), _) => Ok(i),
        (None, Missing::Last) => Ok(timesteps.len().saturating_sub(1)),
        (None, Missing::Error) => Err(unknown_timestep(t)),
    }
}
