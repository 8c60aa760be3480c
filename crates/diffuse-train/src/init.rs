//! Seeded initialization of freshly built networks, independent of the order the variables were created in.

use candle_core::{Tensor, Var};
use candle_nn::VarMap;

use super::shapes::{splitmix64, SplitMix};
use diffuse::rng::TorchCpuRng;
use diffuse::{Error, Result};

/// The variables of `vars`, sorted by name.
pub fn sorted_vars(vars: &VarMap) -> Result<Vec<(String, Var)>> {
    let data = vars
        .data()
        .lock()
        .map_err(|_| Error::invalid("variables", "a training thread panicked"))?;
    let mut all: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(all)
}

/// A stable 64-bit hash of a name (FNV-1a).
pub fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Initializes every variable of `vars` from `seed` as PyTorch's defaults do: weights of linear and
/// convolution layers uniform in ±1/√fan_in, norm scales 1, biases 0, token embeddings N(0, 0.02) and
/// position embeddings N(0, 0.01) (CLIP's initialization). With `zero_residual_outputs` the last
/// convolution of every residual block, the transformers' output projections and `conv_out` start at zero,
/// as in the latent diffusion UNet, so that the network starts as the identity on its skip paths.
pub fn initialize(vars: &VarMap, seed: u64, zero_residual_outputs: bool) -> Result<()> {
    for (name, var) in sorted_vars(vars)? {
        let stream = splitmix64(seed ^ name_hash(&name));
        let dims = var.dims().to_vec();
        let count = var.elem_count();
        let values: Vec<f32> = if name.ends_with("bias") {
            vec![0.0; count]
        } else if name.ends_with("token_embedding.weight") {
            normal(stream, count, 0.02)
        } else if name.ends_with("position_embedding.weight") {
            normal(stream, count, 0.01)
        } else if dims.len() < 2 {
            vec![1.0; count]
        } else if zero_residual_outputs && is_residual_output(&name) {
            vec![0.0; count]
        } else {
            let fan_in: usize = dims[1..].iter().product();
            let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
            let mut rng = SplitMix::new(stream);
            (0..count)
                .map(|_| (rng.unit() * 2.0 - 1.0) * bound)
                .collect()
        };
        let tensor =
            Tensor::from_vec(values, dims.as_slice(), var.device())?.to_dtype(var.dtype())?;
        var.set(&tensor)?;
    }
    Ok(())
}

fn is_residual_output(name: &str) -> bool {
    name.ends_with("conv2.weight") || name.ends_with("proj_out.weight") || name == "conv_out.weight"
}

fn normal(seed: u64, count: usize, std: f32) -> Vec<f32> {
    TorchCpuRng::new(seed)
        .randn_f32(&[count])
        .into_iter()
        .map(|x| x * std)
        .collect()
}
