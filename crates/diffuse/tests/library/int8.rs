//! The int8 (VNNI) products: exactly the dequantized arithmetic they stand for (per-row activations and
//! per-channel weights for linear layers, per-image activations for convolutions), and within a stated distance of
//! the unquantized f32 result. Skipped, with a message, on a CPU without AVX512-VNNI.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::common::relative_error;
use diffuse::device::Quantization;
use diffuse::internals::kernels::{attention, attention_int8, int8, int8_gemm};
use diffuse::models::conv::Conv2d;
use diffuse::rng::{randn_tensor, TorchCpuRng};

fn randn(rng: &mut TorchCpuRng, shape: &[usize]) -> Tensor {
    randn_tensor(rng, shape, &Device::Cpu, DType::F32).unwrap()
}

fn vnni() -> bool {
    if !int8_gemm::available() {
        eprintln!("skipped: this CPU has no AVX512-VNNI");
    }
    int8_gemm::available()
}

/// `values` as the kernel quantizes them, dequantized: q · s with s = max|values| / 127 and
/// q = trunc(clamp(v · (127 / max) + 128.5, 1, 255)) − 128.
fn fake_quant(values: &[f32]) -> Vec<f32> {
    let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
    values
        .iter()
        .map(|&v| ((v * inv + 128.5).clamp(1.0, 255.0) as i32 - 128) as f32 * (max / 127.0))
        .collect()
}

/// Each `len`-long run of `t`'s values quantized on its own.
fn fake_quant_runs(t: &Tensor, len: usize) -> Tensor {
    let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let out: Vec<f32> = values.chunks(len).flat_map(fake_quant).collect();
    Tensor::from_vec(out, t.dims(), &Device::Cpu).unwrap()
}

/// ‖a − b‖ / ‖b‖.
fn relative_l2(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b).unwrap().sqr().unwrap().sum_all().unwrap();
    let norm = b.sqr().unwrap().sum_all().unwrap();
    (diff.to_scalar::<f32>().unwrap() / norm.to_scalar::<f32>().unwrap()).sqrt()
}

/// A linear layer built for int8 multiplies like the dequantized operands (tokens per row, weights per output
/// channel) to f32 rounding, and stays within 3 % (relative L2) of the f32 product on Gaussian data; shapes off
/// the 64-column panels, the 6-row blocks and the 4-byte groups; a layer with too few inputs stays in f32.
#[test]
fn int8_linear_is_the_dequantized_product() {
    if !vnni() {
        return;
    }
    let mut rng = TorchCpuRng::new(8);
    for (b, n, k, out, with_bias) in [
        (2, 77, 96, 130, true),
        (1, 13, 70, 64, false),
        (2, 200, 320, 70, true),
    ] {
        let x = randn(&mut rng, &[b, n, k]);
        let w = randn(&mut rng, &[out, k]);
        let bias = randn(&mut rng, &[out]);
        let build = || crate::common::linear_layer(&w, with_bias.then_some(&bias));
        let layer = int8::building(Some(Quantization::Int8), build);
        let got = layer.forward(&x).unwrap();
        assert_eq!(got.dims(), &[b, n, out]);
        let product = |x: &Tensor, w: &Tensor| {
            let y = x.broadcast_matmul(&w.t().unwrap()).unwrap();
            if with_bias {
                y.broadcast_add(&bias).unwrap()
            } else {
                y
            }
        };
        let want = product(&fake_quant_runs(&x, k), &fake_quant_runs(&w, k));
        let err = relative_error(&got, &want);
        assert!(
            err <= 1e-5,
            "{b}×{n}×{k}→{out}: {err} from the dequantized product"
        );
        let exact = product(&x, &w);
        let distance = relative_l2(&got, &exact);
        assert!(
            (1e-4..0.03).contains(&distance),
            "{b}×{n}×{k}→{out}: {distance} from the f32 product"
        );
        // The same layer built outside the scope is f32.
        let plain = build().forward(&x).unwrap();
        assert!(relative_l2(&plain, &exact) < 1e-6);
    }
    // Fewer than 64 inputs: f32 even inside the scope.
    let x = randn(&mut rng, &[1, 5, 40]);
    let w = randn(&mut rng, &[32, 40]);
    let layer = int8::building(Some(Quantization::Int8), || {
        crate::common::linear_layer(&w, None)
    });
    let exact = x.broadcast_matmul(&w.t().unwrap()).unwrap();
    assert!(relative_l2(&layer.forward(&x).unwrap(), &exact) < 1e-6);
}

/// A convolution built for int8 is the convolution of the dequantized input (one scale per image) and kernel
/// (one scale per output channel) to f32 rounding, within 3 % of the f32 convolution: 3×3 with padding, a
/// stride-2 downsampler, a 1×1 projection; channel counts off the 4-byte groups and the 64-column panels.
#[test]
fn int8_conv2d_is_the_dequantized_convolution() {
    if !vnni() {
        return;
    }
    let mut rng = TorchCpuRng::new(9);
    // (batch, in, out, height, width, kernel, padding, stride)
    for (b, cin, cout, h, w, kernel, pad, stride) in [
        (2, 70, 20, 9, 11, 3, 1, 1),
        (1, 64, 130, 8, 8, 3, 1, 2),
        (2, 96, 64, 7, 5, 1, 0, 1),
    ] {
        let x = randn(&mut rng, &[b, cin, h, w]);
        let weight = (randn(&mut rng, &[cout, cin, kernel, kernel]) * 0.1).unwrap();
        let bias = randn(&mut rng, &[cout]);
        let tensors = HashMap::from([
            ("weight".to_string(), weight.clone()),
            ("bias".to_string(), bias.clone()),
        ]);
        let layer = int8::building(Some(Quantization::Int8), || {
            let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
            Conv2d::new(vb, cin, cout, kernel, pad, stride).unwrap()
        });
        let got = layer.forward(&x).unwrap();
        let convolve = |x: &Tensor, w: &Tensor| {
            x.conv2d(w, pad, stride, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, cout, 1, 1)).unwrap())
                .unwrap()
        };
        let want = convolve(
            &fake_quant_runs(&x, cin * h * w),
            &fake_quant_runs(&weight, cin * kernel * kernel),
        );
        assert_eq!(got.dims(), want.dims());
        let err = relative_error(&got, &want);
        let case =
            format!("{b}×{cin}×{h}×{w} → {cout}, {kernel}×{kernel} pad {pad} stride {stride}");
        assert!(
            err <= 1e-5,
            "{case}: {err} from the dequantized convolution"
        );
        let distance = relative_l2(&got, &convolve(&x, &weight));
        assert!(
            (1e-4..0.03).contains(&distance),
            "{case}: {distance} from the f32 convolution"
        );
    }
}

/// Weights are packed once, at the first product: a second call on other inputs reuses them and still matches.
#[test]
fn int8_weights_are_packed_once_and_reused() {
    if !vnni() {
        return;
    }
    let mut rng = TorchCpuRng::new(10);
    let w = randn(&mut rng, &[96, 128]);
    let state = int8::Int8Weights::default();
    let bias = randn(&mut rng, &[96]);
    for seed in 0..2 {
        let x = randn(&mut TorchCpuRng::new(20 + seed), &[3, 128]);
        let got = int8::linear(&state, &x, &w, Some(&bias)).unwrap().unwrap();
        let want = fake_quant_runs(&x, 128)
            .matmul(&fake_quant_runs(&w, 128).t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        assert!(relative_error(&got, &want) <= 1e-5);
    }
    // Not for a bf16 input: the int8 path is f32 only.
    let x = randn(&mut rng, &[3, 128]).to_dtype(DType::BF16).unwrap();
    assert!(
        int8::linear(&state, &x, &w.to_dtype(DType::BF16).unwrap(), None)
            .unwrap()
            .is_none()
    );
}

/// int8 attention scores (models built for int8, at least `MIN_KEYS` keys) equal softmax(q̂·k̂ᵀ)·v, q̂ the
/// queries times the scale and k̂ the keys less their mean over the tokens, each quantized per token and head and
/// dequantized, to 1e-4 of the largest output (f32 sums in another order); they stay within 2 % (relative L2) of
/// f32 attention, and with fewer keys the f32 kernel runs, bit for bit.
#[test]
fn int8_attention_equals_its_dequantized_arithmetic() {
    if !vnni() {
        return;
    }
    let mut rng = TorchCpuRng::new(9);
    // (batch, queries, keys, heads, head dim): a query block and a key block cut short, a head dimension off
    // the 4-byte groups.
    for (b, nq, nk, heads, d) in [(1, 70, 2100, 2, 40), (2, 65, 2048, 1, 18)] {
        assert!(nk >= attention_int8::MIN_KEYS);
        let (q, k, v) = (
            randn(&mut rng, &[b, nq, heads * d]),
            randn(&mut rng, &[b, nk, heads * d]),
            randn(&mut rng, &[b, nk, heads * d]),
        );
        let scale = (d as f64).powf(-0.5);
        let got = attention::attention_int8(&q, &k, &v, heads, scale).unwrap();
        // The reference's quantized operands, each step as the kernel takes it (f32 arithmetic, sums in
        // token order).
        let q_hat = fake_quant_runs(&(&q * f64::from(scale as f32)).unwrap(), d);
        let c = heads * d;
        let mut keys = k.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for item in keys.chunks_mut(nk * c) {
            for ch in 0..c {
                let mean = (0..nk).map(|t| item[t * c + ch]).fold(0f32, |s, x| s + x) / nk as f32;
                (0..nk).for_each(|t| item[t * c + ch] -= mean);
            }
        }
        let centred = Tensor::from_vec(keys, (b, nk, c), &Device::Cpu).unwrap();
        let k_hat = fake_quant_runs(&centred, d);
        let want = attention::attention_reference(&q_hat, &k_hat, &v, heads, 1.0).unwrap();
        let err = relative_error(&got, &want);
        assert!(
            err <= 1e-4,
            "{b}×{nq}×{nk}, {heads}×{d}: {err} from the dequantized arithmetic"
        );
        let exact = attention::attention(&q, &k, &v, heads, scale).unwrap();
        let l2 = relative_l2(&got, &exact);
        assert!(
            l2 > 0.0 && l2 <= 0.02,
            "{b}×{nq}×{nk}, {heads}×{d}: {l2} from f32"
        );
    }
    // A key that is not finite makes the output NaN, as in f32, rather than a finite guess.
    let (q, mut keys) = (randn(&mut rng, &[1, 3, 8]), vec![0.5f32; 2048 * 8]);
    keys[8 * 100 + 3] = f32::NAN;
    let k = Tensor::from_vec(keys, (1, 2048, 8), &Device::Cpu).unwrap();
    let v = randn(&mut rng, &[1, 2048, 8]);
    let out = attention::attention_int8(&q, &k, &v, 1, 0.3).unwrap();
    let values = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(values.iter().all(|v| v.is_nan()), "{values:?}");
    let few = attention_int8::MIN_KEYS - 1;
    let (q, k) = (
        randn(&mut rng, &[1, 40, 64]),
        randn(&mut rng, &[1, few, 64]),
    );
    let int8 = attention::attention_int8(&q, &k, &k, 2, 0.125).unwrap();
    let f32 = attention::attention(&q, &k, &k, 2, 0.125).unwrap();
    assert_eq!(relative_error(&int8, &f32), 0.0);
}
