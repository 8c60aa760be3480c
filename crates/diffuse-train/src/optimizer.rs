//! AdamW (PyTorch's formulation, decoupled weight decay) with state that can be saved and restored, the
//! learning-rate schedules, and gradient-norm clipping.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use diffuse::{Error, Result};

/// AdamW's hyperparameters besides the learning rate.
#[derive(Debug, Clone, Copy)]
pub struct AdamWSettings {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay λ (θ ← θ − lr·λ·θ).
    pub weight_decay: f64,
}

impl Default for AdamWSettings {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

struct Param {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    lr_scale: f64,
}

/// AdamW over named variables.
pub struct AdamW {
    params: Vec<Param>,
    steps: usize,
    settings: AdamWSettings,
}

impl AdamW {
    /// An optimizer over `vars` with zero moments.
    pub fn new(vars: Vec<(String, Var)>, settings: AdamWSettings) -> Result<Self> {
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                let zeros = var.as_tensor().zeros_like()?;
                Ok(Param {
                    name,
                    var,
                    m: zeros.clone(),
                    v: zeros,
                    lr_scale: 1.0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            params,
            steps: 0,
            settings,
        })
    }

    /// Multiplies the learning rate of every variable whose name starts with `prefix` by `scale`.
    pub fn scale_learning_rate(&mut self, prefix: &str, scale: f64) {
        for p in self
            .params
            .iter_mut()
            .filter(|p| p.name.starts_with(prefix))
        {
            p.lr_scale = scale;
        }
    }

    /// Updates done so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// One update with learning rate `lr`; every gradient is first multiplied by `grad_scale` (clipping).
    /// Variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.steps += 1;
        let s = self.settings;
        let t = self.steps as i32;
        let bias1 = 1.0 - s.beta1.powi(t);
        let bias2 = 1.0 - s.beta2.powi(t);
        for p in &mut self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let g = if grad_scale == 1.0 {
                g.clone()
            } else {
                (g * grad_scale)?
            };
            p.m = ((&p.m * s.beta1)? + (&g * (1.0 - s.beta1))?)?;
            p.v = ((&p.v * s.beta2)? + (g.sqr()? * (1.0 - s.beta2))?)?;
            let denom = ((&p.v / bias2)?.sqrt()? + s.eps)?;
            let update = ((&p.m / bias1)? / denom)?;
            let lr = lr * p.lr_scale;
            let theta = (p.var.as_tensor() * (1.0 - lr * s.weight_decay))?;
            p.var.set(&(theta - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// The moments as tensors named `m.<name>` and `v.<name>`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .flat_map(|p| {
                [
                    (format!("m.{}", p.name), p.m.clone()),
                    (format!("v.{}", p.name), p.v.clone()),
                ]
            })
            .collect()
    }

    /// Restores the moments saved by [`AdamW::state`] and the update count; `source` names the file in errors.
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        steps: usize,
        source: &str,
    ) -> Result<()> {
        for p in &mut self.params {
            for (prefix, slot) in [("m", &mut p.m), ("v", &mut p.v)] {
                let key = format!("{prefix}.{}", p.name);
                let t = tensors.get(&key).ok_or_else(|| Error::Weights {
                    file: source.into(),
                    tensor: key.clone(),
                    message: "missing from the checkpoint's optimizer state".into(),
                })?;
                if t.dims() != p.var.dims() {
                    return Err(Error::Weights {
                        file: source.into(),
                        tensor: key,
                        message: format!(
                            "shape {:?}, but the variable is {:?}",
                            t.dims(),
                            p.var.dims()
                        ),
                    });
                }
                *slot = t.to_dtype(p.var.dtype())?.to_device(p.var.device())?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// The global L2 norm of the gradients of `vars`.
pub fn grad_norm(grads: &GradStore, vars: &[(String, Var)]) -> Result<f64> {
    let mut total = 0f64;
    for (_, var) in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    Ok(total.sqrt())
}

/// The factor that scales gradients of norm `norm` down to `max_norm` (1 when already within it).
pub fn clip_scale(norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(max) if norm.is_finite() && norm > max => max / (norm + 1e-6),
        _ => 1.0,
    }
}

/// How the learning rate evolves after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrShape {
    /// Constant.
    Constant,
    /// Half a cosine from the base rate down to 0 at the last step.
    Cosine,
}

/// A learning-rate schedule: linear warm-up from 0, then constant or cosine decay.
#[derive(Debug, Clone, Copy)]
pub struct LrSchedule {
    /// The rate after warm-up.
    pub base: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Steps in all.
    pub total: usize,
    /// The shape after warm-up.
    pub shape: LrShape,
}

impl LrSchedule {
    /// The rate at `step` (0-based), as diffusers' `get_scheduler` computes it.
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.base * step as f64 / self.warmup.max(1) as f64;
        }
        match self.shape {
            LrShape::Constant => self.base,
            LrShape::Cosine => {
                let span = self.total.saturating_sub(self.warmup).max(1) as f64;
                let progress = ((step - self.warmup) as f64 / span).min(1.0);
                self.base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}
