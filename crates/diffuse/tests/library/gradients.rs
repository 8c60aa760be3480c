//! The layers that switch to other kernels when a gradient is tracked (convolution through im2col, the training
//! softmax, layer norm and GEGLU) compute the same values and the same gradients as candle's reference ops.

use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use diffuse::internals::kernels::geglu::geglu_reference;
use diffuse::internals::kernels::group_norm::group_norm;
use diffuse::internals::kernels::train_conv::conv2d_tracked;
use diffuse::internals::kernels::train_geglu::geglu_tracked;
use diffuse::internals::kernels::train_layer_norm::layer_norm_tracked;
use diffuse::internals::kernels::train_softmax::softmax_last_dim_tracked;
use diffuse::models::activations::Activation;
use diffuse::models::attention::scaled_dot_product_attention;
use diffuse::models::conv::Conv2d;
use diffuse::models::layer_norm::layer_norm;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = diffuse::rng::TorchCpuRng::new(seed);
    Tensor::from_vec(rng.randn_f32(shape), shape, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Tolerance for f32 sums of a few hundred products of N(0, 1) values taken in another order.
const TOL: f32 = 1e-4;

#[test]
fn im2col_convolution_matches_candle_values_and_gradients() {
    for (kernel, padding, stride, size) in [(3, 1, 1, 9), (3, 1, 2, 8), (3, 0, 2, 9), (1, 0, 1, 5)]
    {
        let x = Var::from_tensor(&randn(&[2, 3, size, size], 1)).unwrap();
        let w = Var::from_tensor(&randn(&[4, 3, kernel, kernel], 2)).unwrap();
        let b = Var::from_tensor(&randn(&[4], 3)).unwrap();
        let ours = conv2d_tracked(&x, &w, &b, padding, stride).unwrap();
        let reference = x
            .conv2d(&w, padding, stride, 1, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
            .unwrap();
        let case = format!("k{kernel} p{padding} s{stride} {size}×{size}");
        assert!(max_abs_diff(&ours, &reference) < TOL, "{case}: values");
        // A loss that weighs every output differently, so that each gradient entry is checked.
        let weights = randn(ours.dims(), 4);
        let g_ours = (&ours * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g_ref = (&reference * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, var) in [("input", &x), ("weight", &w), ("bias", &b)] {
            let a = g_ours.get(var).unwrap();
            let r = g_ref.get(var).unwrap();
            assert!(max_abs_diff(a, r) < TOL, "{case}: gradient of the {name}");
        }
    }
}

#[test]
fn conv2d_layer_trains_through_im2col_and_infers_through_candle() {
    let vars = VarMap::new();
    let conv = Conv2d::new(
        VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
        3,
        5,
        3,
        1,
        1,
    )
    .unwrap();
    for var in vars.all_vars() {
        var.set(&randn(var.dims(), 9)).unwrap();
    }
    let x = randn(&[1, 3, 6, 6], 5);
    let tracked = conv.forward(&x).unwrap();
    let frozen = x
        .conv2d(&conv.weight().detach(), 1, 1, 1, 1)
        .unwrap()
        .broadcast_add(
            &vars
                .all_vars()
                .iter()
                .find(|v| v.rank() == 1)
                .unwrap()
                .as_tensor()
                .detach()
                .reshape((1, 5, 1, 1))
                .unwrap(),
        )
        .unwrap();
    assert!(max_abs_diff(&tracked, &frozen) < TOL);
    let grads = tracked
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(vars.all_vars().iter().all(|v| grads.get(v).is_some()));
}

#[test]
fn tracked_softmax_and_layer_norm_match_the_fused_kernels() {
    let q = randn(&[2, 2, 5, 4], 11);
    let k = randn(&[2, 2, 5, 4], 12);
    let v = randn(&[2, 2, 5, 4], 13);
    let fused = scaled_dot_product_attention(&q, &k, &v, 0.5, None, false).unwrap();
    let qv = Var::from_tensor(&q).unwrap();
    let composed = scaled_dot_product_attention(&qv, &k, &v, 0.5, None, false).unwrap();
    assert!(max_abs_diff(&fused, &composed) < 1e-6);
    let grads = composed.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&qv).is_some(), "no gradient reached the queries");
    let reference = candle_nn::ops::softmax(
        &(q.matmul(&k.t().unwrap()).unwrap() * 0.5).unwrap(),
        D::Minus1,
    )
    .unwrap()
    .matmul(&v)
    .unwrap();
    assert!(max_abs_diff(&fused, &reference) < 1e-6);

    let vars = VarMap::new();
    let norm = layer_norm(
        4,
        1e-5,
        VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
    )
    .unwrap();
    for (i, var) in vars.all_vars().iter().enumerate() {
        var.set(&randn(var.dims(), 20 + i as u64)).unwrap();
    }
    let x = randn(&[3, 7, 4], 30);
    let tracked = norm.forward(&x).unwrap();
    let weights: Vec<Tensor> = {
        let data = vars.data().lock().unwrap();
        ["weight", "bias"]
            .map(|n| data[n].as_tensor().detach())
            .to_vec()
    };
    let fused = candle_nn::ops::layer_norm(&x, &weights[0], &weights[1], 1e-5).unwrap();
    assert!(max_abs_diff(&tracked, &fused) < 1e-5);
    let grads = tracked
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(vars.all_vars().iter().all(|v| grads.get(v).is_some()));
}

/// The training softmax against candle's composed one: values within 1e-6 (probabilities ≤ 1, exponentials
/// that differ by an ulp), gradients within 1e-5 (a sum over the row of products of N(0, 1) weights).
#[test]
fn training_softmax_matches_candle_values_and_gradients() {
    for shape in [vec![2, 3, 7, 33], vec![1, 2, 1000], vec![5, 1]] {
        let x = Var::from_tensor(&(randn(&shape, 40) * 4.0).unwrap()).unwrap();
        let w = randn(&shape, 41);
        let ours = softmax_last_dim_tracked(x.as_tensor()).unwrap();
        let reference = candle_nn::ops::softmax(x.as_tensor(), D::Minus1).unwrap();
        assert!(max_abs_diff(&ours, &reference) < 1e-6, "{shape:?}: values");
        let loss = |p: &Tensor| (p * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (g_ours, g_ref) = (loss(&ours), loss(&reference));
        let diff = max_abs_diff(g_ours.get(&x).unwrap(), g_ref.get(&x).unwrap());
        assert!(diff < 1e-5, "{shape:?}: gradients differ by {diff}");
    }
}

/// The training LayerNorm against candle's composed one: values within 1e-4, and the gradients of input,
/// weight and bias within 1e-5 of their largest value (or of 1) (the weight and bias gradients are sums over up to 2100
/// rows of products of N(0, 1) values, taken in another order).
#[test]
fn training_layer_norm_matches_candle_values_and_gradients() {
    for (shape, n) in [
        (vec![2, 5, 16], 16),
        (vec![3, 700, 64], 64),
        (vec![4, 1], 1),
    ] {
        let x = Var::from_tensor(&randn(&shape, 50)).unwrap();
        let w = Var::from_tensor(&randn(&[n], 51)).unwrap();
        let b = Var::from_tensor(&randn(&[n], 52)).unwrap();
        let probe = randn(&shape, 53);
        let ours = layer_norm_tracked(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5).unwrap();
        let reference =
            candle_nn::ops::layer_norm_slow(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)
                .unwrap();
        assert!(max_abs_diff(&ours, &reference) < 1e-4, "{shape:?}: values");
        let loss = |y: &Tensor| (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let (g_ours, g_ref) = (loss(&ours), loss(&reference));
        for (name, var) in [("input", &x), ("weight", &w), ("bias", &b)] {
            let (ours, reference) = (g_ours.get(var).unwrap(), g_ref.get(var).unwrap());
            let scale = max_abs_diff(reference, &reference.zeros_like().unwrap());
            let diff = max_abs_diff(ours, reference);
            assert!(
                diff <= 1e-5 * scale.max(1.0),
                "{shape:?}: {name} gradients differ by {diff} (largest {scale})"
            );
        }
    }
}

#[test]
fn fused_group_norm_matches_candle_values_and_gradients() {
    let x = Var::from_tensor(&randn(&[2, 6, 3, 5], 40).affine(2.0, 0.5).unwrap()).unwrap();
    let vars = VarMap::new();
    let ours = group_norm(
        3,
        6,
        1e-5,
        VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
    )
    .unwrap();
    for (i, var) in vars.all_vars().iter().enumerate() {
        var.set(&randn(var.dims(), 41 + i as u64)).unwrap();
    }
    let (weight, bias) = {
        let data = vars.data().lock().unwrap();
        (data["weight"].clone(), data["bias"].clone())
    };
    let reference = candle_nn::GroupNorm::new(
        weight.as_tensor().clone(),
        bias.as_tensor().clone(),
        6,
        3,
        1e-5,
    )
    .unwrap();
    let (y, y_ref) = (ours.forward(&x).unwrap(), reference.forward(&x).unwrap());
    assert!(max_abs_diff(&y, &y_ref) < 1e-5, "values");
    let weights = randn(y.dims(), 44);
    let g = (&y * &weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g_ref = (&y_ref * &weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, var) in [
        ("input", x.as_tensor()),
        ("weight", weight.as_tensor()),
        ("bias", bias.as_tensor()),
    ] {
        let diff = max_abs_diff(g.get(var).unwrap(), g_ref.get(var).unwrap());
        assert!(diff < 1e-4, "gradient of the {name} differs by {diff}");
    }
}

#[test]
fn training_silu_matches_candle_values_and_gradients() {
    let x = Var::from_tensor(&randn(&[3, 4, 5], 50).affine(3.0, 0.0).unwrap()).unwrap();
    let ours = Activation::Silu.forward(&x).unwrap();
    let reference = candle_nn::ops::silu(x.as_tensor()).unwrap();
    assert!(max_abs_diff(&ours, &reference) < 1e-5);
    let weights = randn(ours.dims(), 51);
    let g = (&ours * &weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g_ref = (&reference * &weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(max_abs_diff(g.get(&x).unwrap(), g_ref.get(&x).unwrap()) < 1e-5);
}

/// The training GEGLU against candle's composition (chunk, GELU with erf, product): values and gradients within
/// 1e-5 (the vectorized erf is within 1.5e-7 of libm's; gates up to about ±8 reach both tails of the GELU).
#[test]
fn training_geglu_matches_candle_values_and_gradients() {
    for shape in [vec![2, 7, 24], vec![3, 2], vec![1, 5000]] {
        let h = Var::from_tensor(&(randn(&shape, 60) * 2.0).unwrap()).unwrap();
        let ours = geglu_tracked(h.as_tensor()).unwrap();
        let reference = geglu_reference(h.as_tensor()).unwrap();
        assert!(max_abs_diff(&ours, &reference) < 1e-5, "{shape:?}: values");
        let weights = randn(ours.dims(), 61);
        let loss = |y: &Tensor| {
            (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let (g_ours, g_ref) = (loss(&ours), loss(&reference));
        let diff = max_abs_diff(g_ours.get(&h).unwrap(), g_ref.get(&h).unwrap());
        assert!(diff < 1e-5, "{shape:?}: gradients differ by {diff}");
    }
    let odd = Var::from_tensor(&randn(&[2, 3], 62)).unwrap();
    let err = geglu_tracked(odd.as_tensor()).unwrap_err().to_string();
    assert!(err.contains("must be even"), "{err}");
}

#[test]
fn training_linear_matches_plain_ops_values_and_gradients() {
    let vars = VarMap::new();
    let layer = diffuse::internals::kernels::linear::linear(
        4,
        6,
        VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
    )
    .unwrap();
    for (i, var) in vars.all_vars().iter().enumerate() {
        var.set(&randn(var.dims(), 60 + i as u64)).unwrap();
    }
    let (weight, bias) = {
        let data = vars.data().lock().unwrap();
        (data["weight"].clone(), data["bias"].clone())
    };
    // A non-contiguous batched input, the case candle's own Linear gets wrong.
    let x = Var::from_tensor(&randn(&[3, 4, 5], 62)).unwrap();
    let input = x.transpose(1, 2).unwrap();
    let ours = layer.forward(&input).unwrap();
    let reference = input
        .contiguous()
        .unwrap()
        .broadcast_matmul(&weight.t().unwrap())
        .unwrap()
        .broadcast_add(bias.as_tensor())
        .unwrap();
    assert!(max_abs_diff(&ours, &reference) < 1e-5, "values");
    let weights = randn(ours.dims(), 63);
    let g = (&ours * &weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g_ref = (&reference * &weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, var) in [
        ("input", x.as_tensor()),
        ("weight", weight.as_tensor()),
        ("bias", bias.as_tensor()),
    ] {
        let diff = max_abs_diff(g.get(var).unwrap(), g_ref.get(var).unwrap());
        assert!(diff < 1e-4, "gradient of the {name} differs by {diff}");
    }
}

/// ‖a − b‖ / ‖b‖.
fn relative_l2(a: &Tensor, b: &Tensor) -> f32 {
    let norm = |t: &Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt()
    };
    norm(&(a - b).unwrap()) / norm(b)
}

/// bf16 keeps 8 significant bits: each operand is off by up to 2⁻⁹ relative, so sums of products of N(0, 1)
/// values accumulated in f32 land a few 1e-3 (relative L2) from the f32 products.
const BF16_TOL: f32 = 1e-2;

/// The values of `layer(x, w, b)` and the gradients of a weighted sum of them for x, w and b, with the products
/// in bf16 or f32.
fn values_and_gradients(
    bf16: bool,
    vars: [&Var; 3],
    weights: &Tensor,
    layer: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
) -> (Tensor, Vec<Tensor>) {
    diffuse::internals::kernels::train_products::with_mixed_precision(bf16, || {
        let y = layer(vars[0], vars[1], vars[2]);
        let g = (&y * weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let grads = vars
            .iter()
            .map(|v| g.get(v.as_tensor()).unwrap().clone())
            .collect();
        (y, grads)
    })
}

#[test]
fn mixed_precision_convolution_and_linear_stay_within_bf16_rounding_of_f32() {
    if !diffuse::internals::kernels::bf16_gemm::available() {
        eprintln!("this CPU has no AVX512-BF16: the products stay f32, nothing to compare");
        return;
    }
    let mut cases: Vec<(String, usize, [Var; 3], Tensor)> = Vec::new();
    // 3 input channels: 27 taps, an odd inner dimension (the f32-unfolded path with a zero-padded pair);
    // 6: the inference kernel's bf16 convolution; stride 2 as in the downsamplers.
    for (channels, out, stride) in [(3, 5, 1), (6, 4, 1), (6, 4, 2)] {
        let side = 9usize.div_ceil(stride);
        cases.push((
            format!("conv {channels}→{out} stride {stride}"),
            stride,
            [
                Var::from_tensor(&randn(&[2, channels, 9, 9], 70)).unwrap(),
                Var::from_tensor(&randn(&[out, channels, 3, 3], 71)).unwrap(),
                Var::from_tensor(&randn(&[out], 72)).unwrap(),
            ],
            randn(&[2, out, side, side], 73),
        ));
    }
    for (name, stride, [x, w, b], weights) in &cases {
        let conv =
            |x: &Tensor, w: &Tensor, b: &Tensor| conv2d_tracked(x, w, b, 1, *stride).unwrap();
        let (y16, g16) = values_and_gradients(true, [x, w, b], weights, conv);
        let (y32, g32) = values_and_gradients(false, [x, w, b], weights, conv);
        let err = relative_l2(&y16, &y32);
        assert!(err < BF16_TOL && err > 1e-5, "{name}: values {err}");
        for (part, (a, r)) in ["input", "weight", "bias"].iter().zip(g16.iter().zip(&g32)) {
            let err = relative_l2(a, r);
            assert!(err < BF16_TOL, "{name}: gradient of the {part} {err}");
        }
    }
    // 21 rows and 7 outputs: odd inner dimensions in the weight's and the input's gradients.
    let vars = [
        Var::from_tensor(&randn(&[3, 7, 10], 74)).unwrap(),
        Var::from_tensor(&randn(&[7, 10], 75)).unwrap(),
        Var::from_tensor(&randn(&[7], 76)).unwrap(),
    ];
    let weights = randn(&[3, 7, 7], 77);
    let linear = |x: &Tensor, w: &Tensor, b: &Tensor| {
        diffuse::internals::kernels::train_linear::linear_tracked(x, w, Some(b)).unwrap()
    };
    let [x, w, b] = &vars;
    let (y16, g16) = values_and_gradients(true, [x, w, b], &weights, linear);
    let (y32, g32) = values_and_gradients(false, [x, w, b], &weights, linear);
    let err = relative_l2(&y16, &y32);
    assert!(err < BF16_TOL && err > 1e-5, "linear: values {err}");
    for (part, (a, r)) in ["input", "weight", "bias"].iter().zip(g16.iter().zip(&g32)) {
        let err = relative_l2(a, r);
        assert!(err < BF16_TOL, "linear: gradient of the {part} {err}");
    }
}
