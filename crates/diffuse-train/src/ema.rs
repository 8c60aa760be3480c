//! An exponential moving average of the trained weights, as diffusers' `EMAModel` keeps it.

use std::collections::HashMap;

use candle_core::{Tensor, Var};

use diffuse::{Error, Result};

/// The averaged copy of a set of named variables.
pub struct Ema {
    decay: f64,
    updates: usize,
    shadow: Vec<(String, Tensor)>,
}

impl Ema {
    /// Starts the average at the current values of `vars`.
    pub fn new(vars: &[(String, Var)], decay: f64) -> Result<Self> {
        let shadow = vars
            .iter()
            .map(|(name, var)| Ok((name.clone(), var.as_tensor().copy()?.detach())))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            decay,
            updates: 0,
            shadow,
        })
    }

    /// The decay used at the next update, as `EMAModel.get_decay` gives it: 0 for the first update (the
    /// average starts at the weights after the first optimizer step), then `min(decay, (1 + n) / (10 + n))`
    /// after n ≥ 1 updates (warm-up).
    pub fn current_decay(&self) -> f64 {
        if self.updates == 0 {
            return 0.0;
        }
        let n = self.updates as f64;
        self.decay.min((1.0 + n) / (10.0 + n))
    }

    /// Moves the average towards the current values of `vars` (the same variables, in the same order).
    pub fn update(&mut self, vars: &[(String, Var)]) -> Result<()> {
        let d = self.current_decay();
        for ((_, shadow), (_, var)) in self.shadow.iter_mut().zip(vars) {
            *shadow = ((&*shadow * d)? + (var.as_tensor().detach() * (1.0 - d))?)?;
        }
        self.updates += 1;
        Ok(())
    }

    /// Updates done so far.
    pub fn updates(&self) -> usize {
        self.updates
    }

    /// The averaged weights by name.
    pub fn weights(&self) -> &[(String, Tensor)] {
        &self.shadow
    }

    /// Restores averaged weights saved from [`Ema::weights`] (keys `ema.<name>`) and the update count.
    pub fn load(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        updates: usize,
        source: &str,
    ) -> Result<()> {
        for (name, shadow) in &mut self.shadow {
            let key = format!("ema.{name}");
            let t = tensors.get(&key).ok_or_else(|| Error::Weights {
                file: source.into(),
                tensor: key.clone(),
                message: "missing from the checkpoint's EMA weights".into(),
            })?;
            if t.dims() != shadow.dims() {
                return Err(Error::Weights {
                    file: source.into(),
                    tensor: key,
                    message: format!("shape {:?}, expected {:?}", t.dims(), shadow.dims()),
                });
            }
            *shadow = t.to_dtype(shadow.dtype())?;
        }
        self.updates = updates;
        Ok(())
    }
}
