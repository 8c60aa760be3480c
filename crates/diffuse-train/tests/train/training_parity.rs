//! The training arithmetic against PyTorch and diffusers 0.42.1 (fixtures from
//! tools/fixtures/fixtures_training.py): AdamW after gradient-norm clipping (`torch.optim.AdamW`,
//! `clip_grad_norm_`), the EMA of the weights (`EMAModel`), and the denoising objective of
//! `train_text_to_image.py` (`add_noise`, `get_velocity`, min-SNR-γ weights, the loss).

use std::collections::HashMap;

use crate::common::{assert_close, fixtures, get, load_reference};
use candle_core::{Device, Tensor, Var};
use diffuse::schedulers::{NoiseSchedule, SchedulerConfig};
use diffuse_train::ema::Ema;
use diffuse_train::objectives::{DenoisingObjective, NoisedBatch, Prediction};
use diffuse_train::optimizer::{clip_scale, grad_norm, AdamW, AdamWSettings};
use diffuse_train::timestep_bias::{TimestepBias, TimestepSampler};
use serde_json::Value;

/// Six f32 AdamW steps on values of order 1 agree with torch's to a few ulps; 1e-6 relative leaves room for
/// the order of the sums in the gradient norm and still catches any change of formula (a wrong bias
/// correction, weight decay or EMA warm-up moves the values by 1e-3 or more).
const OPTIMIZER_TOLERANCE: f64 = 1e-6;
/// The objective is a few f32 products per value; `relative_error` of 1e-6 is a handful of ulps.
const OBJECTIVE_TOLERANCE: f64 = 1e-6;

fn reference() -> (HashMap<String, Tensor>, Value) {
    let dir = fixtures("training");
    let cases = std::fs::read_to_string(dir.join("cases.json")).expect("cases.json");
    (
        load_reference(&dir.join("reference.safetensors")),
        serde_json::from_str(&cases).expect("cases.json parses"),
    )
}

#[test]
fn adamw_with_clipping_and_ema_match_torch_and_diffusers() {
    let (reference, cases) = reference();
    let case = &cases["adamw"];
    let names = ["p0", "p1"];
    let vars: Vec<(String, Var)> = names
        .iter()
        .map(|n| {
            let init = get(&reference, &format!("adamw/{n}/init"));
            (n.to_string(), Var::from_tensor(init).unwrap())
        })
        .collect();
    let mut optimizer = AdamW::new(vars.clone(), AdamWSettings::default()).unwrap();
    let mut ema = Ema::new(&vars, case["ema_decay"].as_f64().unwrap()).unwrap();
    let max_norm = case["max_norm"].as_f64();
    for (k, lr) in case["lrs"].as_array().unwrap().iter().enumerate() {
        // A loss whose gradient with respect to each variable is the recorded gradient.
        let loss = names
            .iter()
            .zip(&vars)
            .map(|(n, (_, var))| {
                let g = get(&reference, &format!("adamw/{n}/grad/{k}"));
                (var.as_tensor() * g).unwrap().sum_all().unwrap()
            })
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        let grads = loss.backward().unwrap();
        let scale = clip_scale(grad_norm(&grads, &vars).unwrap(), max_norm);
        assert!(
            scale < 1.0,
            "step {k}: the fixture's gradients are meant to be clipped"
        );
        optimizer.step(&grads, lr.as_f64().unwrap(), scale).unwrap();
        ema.update(&vars).unwrap();
        for (i, n) in names.iter().enumerate() {
            assert_close(
                &format!("step {k}: {n}"),
                vars[i].1.as_tensor(),
                get(&reference, &format!("adamw/{n}/{k}")),
                OPTIMIZER_TOLERANCE,
            );
            assert_close(
                &format!("step {k}: EMA of {n}"),
                &ema.weights()[i].1,
                get(&reference, &format!("ema/{n}/{k}")),
                OPTIMIZER_TOLERANCE,
            );
        }
    }
}

#[test]
fn denoising_objective_matches_diffusers_training_script() {
    let (reference, cases) = reference();
    for name in ["epsilon", "v", "v_zero_snr"] {
        let case = &cases[name];
        let config = SchedulerConfig::from_json_str(&case["scheduler"].to_string()).unwrap();
        let prediction =
            Prediction::parse(case["prediction"].as_str().unwrap(), "cases.json").unwrap();
        let objective = DenoisingObjective {
            schedule: NoiseSchedule::from_config(&config).unwrap(),
            prediction,
            min_snr_gamma: case["min_snr_gamma"].as_f64(),
            noise_offset: 0.0,
            timesteps: TimestepSampler::new(&TimestepBias::default(), 1000).unwrap(),
        };
        let steps: Vec<usize> = case["timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as usize)
            .collect();
        let t = |part: &str| get(&reference, &format!("{name}/{part}")).clone();
        let (x0, noise) = (t("x0"), t("noise"));
        let noisy = objective.schedule.add_noise(&x0, &noise, &steps).unwrap();
        assert_close(
            &format!("{name}: noisy"),
            &noisy,
            &t("noisy"),
            OBJECTIVE_TOLERANCE,
        );
        let target = match prediction {
            Prediction::Epsilon => noise.clone(),
            Prediction::VPrediction => objective.schedule.velocity(&x0, &noise, &steps).unwrap(),
        };
        assert_close(
            &format!("{name}: target"),
            &target,
            &t("target"),
            OBJECTIVE_TOLERANCE,
        );
        let weights = objective.loss_weights(&steps, &Device::Cpu).unwrap();
        assert_close(
            &format!("{name}: weights"),
            &weights,
            &t("weights"),
            OBJECTIVE_TOLERANCE,
        );
        let batch = NoisedBatch {
            noisy,
            timesteps: Tensor::new(
                steps.iter().map(|&s| s as f32).collect::<Vec<_>>(),
                &Device::Cpu,
            )
            .unwrap(),
            target,
            weights,
        };
        let loss = objective
            .loss(&t("predicted"), &batch)
            .unwrap()
            .reshape(1)
            .unwrap();
        assert_close(
            &format!("{name}: loss"),
            &loss,
            &t("loss"),
            OBJECTIVE_TOLERANCE,
        );
    }
}
