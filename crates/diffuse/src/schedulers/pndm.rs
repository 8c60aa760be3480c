//! `PNDMScheduler` (Liu et al. 2022): Runge-Kutta warm-up then linear multistep (PLMS), or PLMS alone with
//! `skip_prk_steps`.

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig, TimestepRequest, TimestepSpacing};
use super::ops::{self, alpha_at, div, lincomb, scale, vp_add_noise};
use super::schedule::{self, LINEAR_PLAIN};
use super::{Scheduler, SchedulerOutput};
use crate::rng::NoiseSource;
use crate::{Error, Result};

/// diffusers' `PNDMScheduler`.
struct Pndm {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    /// `num_train_timesteps // num_inference_steps`.
    step_ratio: f64,
    prk_timesteps: Vec<f64>,
    timesteps: Vec<f64>,
    prediction: PredictionType,
    skip_prk: bool,
    counter: usize,
    ets: Vec<Tensor>,
    cur_model_output: Option<Tensor>,
    cur_sample: Option<Tensor>,
}

/// Builds a PNDM scheduler from `config`, its timesteps set by `request`.
pub(crate) fn build(
    config: &SchedulerConfig,
    request: &TimestepRequest,
) -> Result<Box<dyn Scheduler>> {
    let n = config.steps_only("PNDMScheduler", request)?;
    let n_train = config.train_timesteps()?;
    schedule::check_steps(n, n_train)?;
    let alphas_cumprod = schedule::alphas_cumprod_for(config, LINEAR_PLAIN, n_train)?;
    let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(false) {
        1.0
    } else {
        alphas_cumprod[0]
    };
    let prediction = config.prediction(&[PredictionType::Epsilon, PredictionType::VPrediction])?;
    let spacing = config.spacing(TimestepSpacing::Leading)?;
    // `_timesteps`, ascending.
    let mut base = schedule::spaced_timesteps(spacing, n_train, n, config.offset(), true);
    base.reverse();
    let skip_prk = config.skip_prk_steps.unwrap_or(false);
    let (prk_timesteps, plms) = if skip_prk {
        let last = base.len() - 1;
        let mut plms: Vec<f64> = base[..last].to_vec();
        if last >= 1 {
            plms.push(base[last - 1]);
        }
        plms.push(base[last]);
        plms.reverse();
        (Vec::new(), plms)
    } else {
        if base.len() < 4 {
            return Err(Error::invalid(
                "steps",
                format!(
                    "{n}: PNDM's Runge-Kutta warm-up needs at least 4 steps (or skip_prk_steps)"
                ),
            ));
        }
        let half = ((n_train / n) / 2) as f64;
        let tail = &base[base.len() - 4..];
        let pairs: Vec<f64> = tail.iter().flat_map(|&t| [t, t + half]).collect();
        let repeated: Vec<f64> = pairs[..pairs.len() - 1]
            .iter()
            .flat_map(|&t| [t, t])
            .collect();
        let mut prk = repeated[1..repeated.len() - 1].to_vec();
        prk.reverse();
        let mut plms = base[..base.len() - 3].to_vec();
        plms.reverse();
        (prk, plms)
    };
    let timesteps = prk_timesteps.iter().chain(&plms).copied().collect();
    Ok(Box::new(Pndm {
        alphas_cumprod,
        final_alpha_cumprod,
        step_ratio: (n_train / n) as f64,
        prk_timesteps,
        timesteps,
        prediction,
        skip_prk,
        counter: 0,
        ets: Vec::new(),
        cur_model_output: None,
        cur_sample: None,
    }))
}

impl Pndm {
    /// `_get_prev_sample`: formula (9) of the PNDM paper.
    fn prev_sample(
        &self,
        sample: &Tensor,
        t: f64,
        prev_t: f64,
        model_output: &Tensor,
    ) -> Result<Tensor> {
        let a_t = alpha_at(&self.alphas_cumprod, t)?;
        let a_prev = if prev_t >= 0.0 {
            alpha_at(&self.alphas_cumprod, prev_t)?
        } else {
            self.final_alpha_cumprod
        };
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let eps = match self.prediction {
            PredictionType::VPrediction => {
                lincomb(&[(a_t.sqrt(), model_output), (b_t.sqrt(), sample)])?
            }
            _ => model_output.clone(),
        };
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        let eps_term = div(&scale(&eps, a_prev - a_t)?, denom)?;
        Ok((scale(sample, sample_coeff)? - eps_term)?)
    }

    /// One Runge-Kutta (PRK) step.
    fn step_prk(&mut self, model_output: &Tensor, t: f64, sample: &Tensor) -> Result<Tensor> {
        let diff_to_prev = if self.counter % 2 == 1 {
            0.0
        } else {
            (self.step_ratio / 2.0).floor()
        };
        let prev_t = t - diff_to_prev;
        let t = self.prk_timesteps[self.counter / 4 * 4];
        let accumulate = |acc: &Option<Tensor>, term: Tensor| -> Result<Tensor> {
            match acc {
                Some(a) => Ok((a + term)?),
                None => Ok(term),
            }
        };
        let model_output = match self.counter % 4 {
            0 => {
                self.cur_model_output = Some(accumulate(
                    &self.cur_model_output,
                    scale(model_output, 1.0 / 6.0)?,
                )?);
                self.ets.push(model_output.clone());
                self.cur_sample = Some(sample.clone());
                model_output.clone()
            }
            1 | 2 => {
                self.cur_model_output = Some(accumulate(
                    &self.cur_model_output,
                    scale(model_output, 1.0 / 3.0)?,
                )?);
                model_output.clone()
            }
            _ => {
                let combined = accumulate(&self.cur_model_output, scale(model_output, 1.0 / 6.0)?)?;
                self.cur_model_output = None;
                combined
            }
        };
        let cur_sample = self.cur_sample.clone().unwrap_or_else(|| sample.clone());
        let prev = self.prev_sample(&cur_sample, t, prev_t, &model_output)?;
        self.counter += 1;
        Ok(prev)
    }

    /// One linear multistep (PLMS) step.
    fn step_plms(&mut self, model_output: &Tensor, t: f64, sample: &Tensor) -> Result<Tensor> {
        let mut prev_t = t - self.step_ratio;
        let mut t = t;
        if self.counter != 1 {
            let keep = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep);
            self.ets.push(model_output.clone());
        } else {
            prev_t = t;
            t += self.step_ratio;
        }
        let mut sample = sample.clone();
        let ets = self.ets.clone();
        let e = |k: usize| &ets[ets.len() - k];
        let combined = match (ets.len(), self.counter) {
            (1, 0) => {
                self.cur_sample = Some(sample.clone());
                model_output.clone()
            }
            (1, 1) => {
                let avg = div(&(model_output + e(1))?, 2.0)?;
                if let Some(cur) = self.cur_sample.take() {
                    sample = cur;
                }
                avg
            }
            (2, _) => div(&(scale(e(1), 3.0)? - e(2))?, 2.0)?,
            (3, _) => div(
                &((scale(e(1), 23.0)? - scale(e(2), 16.0)?)? + scale(e(3), 5.0)?)?,
                12.0,
            )?,
            _ => {
                let sum = (((scale(e(1), 55.0)? - scale(e(2), 59.0)?)? + scale(e(3), 37.0)?)?
                    - scale(e(4), 9.0)?)?;
                scale(&sum, (1.0f64 / 24.0) as f32)?
            }
        };
        let prev = self.prev_sample(&sample, t, prev_t, &combined)?;
        self.counter += 1;
        Ok(prev)
    }
}

impl Scheduler for Pndm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &[]
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn order(&self) -> usize {
        1
    }

    fn set_begin_index(&mut self, _begin_index: usize) {}

    fn scale_model_input(&mut self, sample: &Tensor, _t: f64) -> Result<Tensor> {
        Ok(sample.clone())
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<SchedulerOutput> {
        let dtype = sample.dtype();
        let (model_output, sample) = (ops::f32(model_output)?, ops::f32(sample)?);
        let prev = if self.counter < self.prk_timesteps.len() && !self.skip_prk {
            self.step_prk(&model_output, t, &sample)?
        } else {
            self.step_plms(&model_output, t, &sample)?
        };
        Ok(SchedulerOutput {
            prev_sample: prev.to_dtype(dtype)?,
            pred_original_sample: None,
        })
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor> {
        vp_add_noise(&self.alphas_cumprod, original, noise, t)
    }
}
