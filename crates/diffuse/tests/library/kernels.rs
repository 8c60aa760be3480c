//! Parity of the CPU kernels with their references built from plain candle ops, on random inputs.

use candle_core::{DType, Device, Tensor};
use diffuse::internals::kernels::{attention, conv, conv1d, group_norm};
use diffuse::rng::{randn_tensor, TorchCpuRng};

fn randn(rng: &mut TorchCpuRng, shape: &[usize]) -> Tensor {
    randn_tensor(rng, shape, &Device::Cpu, DType::F32).unwrap()
}

/// Largest |a − b| over all elements, compared in f32.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
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

#[test]
fn attention_matches_reference() {
    let mut rng = TorchCpuRng::new(1);
    // (batch, q tokens, kv tokens, heads, head dim): self-attention shorter and longer than a key block,
    // cross-attention to 77 text tokens, a single wide head as in the VAE, token counts off the block grid.
    for (b, nq, nk, heads, d) in [
        (2, 300, 300, 4, 16),
        (1, 1100, 1100, 2, 40),
        (2, 130, 77, 8, 8),
        (1, 65, 600, 1, 96),
        // Head dimensions off the AVX-512 kernel's 5-row output step, a single query and a single key.
        (1, 70, 130, 3, 7),
        (2, 1, 5, 2, 12),
        (1, 3, 1, 1, 5),
    ] {
        let q = randn(&mut rng, &[b, nq, heads * d]);
        let k = randn(&mut rng, &[b, nk, heads * d]);
        let v = randn(&mut rng, &[b, nk, heads * d]);
        let scale = (d as f64).powf(-0.5);
        let want = attention::attention_reference(&q, &k, &v, heads, scale).unwrap();
        // The dispatched kernel (AVX-512 where the CPU has it) and the portable one.
        for (path, got) in [
            ("dispatched", attention::attention(&q, &k, &v, heads, scale)),
            (
                "portable",
                attention::attention_portable(&q, &k, &v, heads, scale),
            ),
        ] {
            let err = max_abs_diff(&got.unwrap(), &want);
            assert!(
                err < 2e-5,
                "f32 {path} {b}×{nq}×{nk} heads {heads} d {d}: {err}"
            );
        }
        // bf16 inputs: the reference computes in f32 and rounds once; the kernel (on AVX512-BF16 CPUs, for even
        // head dims) multiplies in bf16 with f32 sums and rounds the probabilities to bf16 as well. Both stay
        // within about one bf16 rounding step of the outputs (≤ 0.0039 measured; 2⁻⁸ at magnitudes 0.5–1).
        let (qb, kb, vb) = (
            q.to_dtype(DType::BF16).unwrap(),
            k.to_dtype(DType::BF16).unwrap(),
            v.to_dtype(DType::BF16).unwrap(),
        );
        let got = attention::attention(&qb, &kb, &vb, heads, scale).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let want = attention::attention_reference(&qb, &kb, &vb, heads, scale).unwrap();
        let err = max_abs_diff(&got, &want);
        assert!(err < 1e-2, "bf16 {b}×{nq}×{nk}: {err}");
    }
}

/// Both Winograd tilings against the direct convolution, called directly (the dispatcher picks F(4×4) only on
/// planes of 64×64 and more): odd sides (partial tiles at the right and bottom), bands of several images (three
/// images in bands of two: a band of two, then one), two images in several bands of tile rows each, and a 64×64
/// plane with SD 1.5's first-level channels. F(2×2) to 2e-6 of the output's largest value, F(4×4) to 4e-5
/// (its transforms' coefficients run from 1/24 to 8; measured 1.5e-5 at 320 channels).
#[test]
fn winograd_tilings_match_reference() {
    use diffuse::internals::kernels::winograd::{conv3x3_tiled, OutputTile, Shape};
    let mut rng = TorchCpuRng::new(9);
    for (b, cin, cout, h, w) in [
        (2, 24, 20, 33, 37),
        (1, 17, 5, 9, 6),
        (3, 240, 160, 32, 32),
        (2, 256, 96, 90, 70),
        (1, 320, 64, 64, 64),
    ] {
        let x = randn(&mut rng, &[b, cin, h, w]);
        let weight = (randn(&mut rng, &[cout, cin, 3, 3]) * 0.05).unwrap();
        let bias = randn(&mut rng, &[cout]);
        let want = conv::conv2d_reference(&x, &weight, &bias, 1, 1).unwrap();
        let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let scale = scale.to_scalar::<f32>().unwrap();
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let shape = Shape {
            batch: b,
            cin,
            cout,
            h,
            w,
        };
        for (tile, bound) in [(OutputTile::Two, 2e-6), (OutputTile::Four, 4e-5)] {
            let mut out = vec![f32::NAN; b * cout * h * w];
            let (xs, ws, bs) = (values(&x), values(&weight), values(&bias));
            conv3x3_tiled(tile, &shape, &xs, &ws, &bs, &mut out, 2).unwrap();
            let got = Tensor::from_vec(out, &[b, cout, h, w], &Device::Cpu).unwrap();
            let err = max_abs_diff(&got, &want);
            assert!(
                err <= bound * scale,
                "{tile:?} {cin}→{cout} {h}×{w}: {err} (scale {scale})"
            );
        }
    }
}

#[test]
fn bf16_residual_additions_equal_candles() {
    use diffuse::internals::kernels::residual;
    let mut rng = TorchCpuRng::new(13);
    // Odd sizes (a partial last task and vector), values of every magnitude, and the specials.
    let n = 70_001;
    let a = (randn(&mut rng, &[n]) * 300.0).unwrap();
    let b = (randn(&mut rng, &[n]) * 0.01).unwrap();
    let specials = Tensor::new(
        &[
            f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            0.0,
            -0.0,
            1e-40,
            3.0e38,
            -3.0e38,
        ],
        &Device::Cpu,
    )
    .unwrap();
    let a = Tensor::cat(&[&a, &specials], 0)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let b = Tensor::cat(&[&b, &specials], 0)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let bits = |t: &Tensor| {
        t.to_vec1::<half::bf16>()
            .unwrap()
            .iter()
            .map(|v| if v.is_nan() { u16::MAX } else { v.to_bits() })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        bits(&residual::add(&a, &b).unwrap()),
        bits(&(&a + &b).unwrap())
    );
    // What the kernel does not take goes to candle: f32, broadcasting.
    let wide = a.to_dtype(DType::F32).unwrap();
    assert_eq!(residual::add(&wide, &wide).unwrap().dtype(), DType::F32);
    let row = b.narrow(0, 0, 1).unwrap();
    assert!(residual::add(&a, &row).is_err());
}

#[test]
fn winograd_transform_rows_on_avx512_equal_the_portable_arithmetic() {
    use diffuse::internals::kernels::winograd_avx512::{available, horizontal, output};
    if !available() {
        eprintln!("skipped: this CPU has no AVX-512");
        return;
    }
    let mut rng = TorchCpuRng::new(12);
    let values = |n: usize, rng: &mut TorchCpuRng| randn(rng, &[n]).to_vec1::<f32>().unwrap();
    // 37 tiles: two whole chunks of 16 and a rest the caller finishes.
    let tw = 37;
    let row = values(2 * tw + 2, &mut rng);
    let mut h: [Vec<f32>; 4] = std::array::from_fn(|_| vec![f32::NAN; tw]);
    let done = horizontal(&row, h.each_mut().map(|v| v.as_mut_slice()), tw);
    assert_eq!(done, 32);
    for tx in 0..done {
        let d = &row[2 * tx..2 * tx + 4];
        let want = [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]];
        for (b, w) in want.iter().enumerate() {
            assert_eq!(
                h[b][tx].to_bits(),
                w.to_bits(),
                "horizontal, tile {tx}, entry {b}"
            );
        }
    }
    let products: Vec<Vec<f32>> = (0..16).map(|_| values(tw, &mut rng)).collect();
    let mm: [&[f32]; 16] = std::array::from_fn(|i| products[i].as_slice());
    let bias = 0.37;
    let (mut top, mut bottom) = (vec![f32::NAN; 2 * tw], vec![f32::NAN; 2 * tw]);
    assert_eq!(output(&mm, bias, &mut top, &mut bottom, tw), 32);
    for tx in 0..32 {
        let e = |a: usize, b: usize| mm[4 * a + b][tx];
        let r0: [f32; 4] = std::array::from_fn(|b| e(0, b) + e(1, b) + e(2, b));
        let r1: [f32; 4] = std::array::from_fn(|b| e(1, b) - e(2, b) - e(3, b));
        let want = [
            bias + r0[0] + r0[1] + r0[2],
            bias + r0[1] - r0[2] - r0[3],
            bias + r1[0] + r1[1] + r1[2],
            bias + r1[1] - r1[2] - r1[3],
        ];
        let got = [
            top[2 * tx],
            top[2 * tx + 1],
            bottom[2 * tx],
            bottom[2 * tx + 1],
        ];
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.to_bits(), w.to_bits(), "output, tile {tx}");
        }
    }
}

#[test]
fn winograd_bf16_matches_the_f32_convolution_of_its_rounded_operands() {
    use diffuse::internals::kernels::winograd::Shape;
    use diffuse::internals::kernels::{bf16_gemm, winograd_bf16};
    if !bf16_gemm::available() {
        eprintln!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    let mut rng = TorchCpuRng::new(11);
    for (b, cin, cout, h, w) in [
        // Odd sides (partial tiles) and a last panel of the product part-filled.
        (2, 34, 40, 33, 37),
        // Two bands of tile rows.
        (1, 256, 96, 90, 70),
        // The UNet's first level.
        (1, 320, 320, 64, 64),
    ] {
        let round = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
        let x = round(randn(&mut rng, &[b, cin, h, w]));
        let weight = round((randn(&mut rng, &[cout, cin, 3, 3]) * 0.05).unwrap());
        let bias = randn(&mut rng, &[cout]);
        let widen = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let want = conv::conv2d_reference(&widen(&x), &widen(&weight), &bias, 1, 1).unwrap();
        let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let scale = scale.to_scalar::<f32>().unwrap();
        let shape = Shape {
            batch: b,
            cin,
            cout,
            h,
            w,
        };
        let bf16s = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<half::bf16>().unwrap();
        let bs = bias.to_vec1::<f32>().unwrap();
        let mut out = vec![f32::NAN; b * cout * h * w];
        winograd_bf16::conv3x3(&shape, &bf16s(&x), &bf16s(&weight), None, &bs, &mut out).unwrap();
        let got = Tensor::from_vec(out, &[b, cout, h, w], &Device::Cpu).unwrap();
        let err = max_abs_diff(&got, &want);
        // The transformed operands rounded to bf16 (relative step 2⁻⁸), the products summed in f32: measured
        // 3.0e-3–3.6e-3 of the largest output here (the unfolded bf16 product of the same operands: f32 rounding
        // only).
        assert!(
            err <= 5e-3 * scale,
            "{cin}→{cout} {h}×{w}: {err} (scale {scale})"
        );
        // A kept kernel gives the same values, the first call and every later one; a kernel kept for another
        // shape is refused, not misread.
        let kept = winograd_bf16::TransformedKernel::default();
        for _ in 0..2 {
            let mut again = vec![f32::NAN; b * cout * h * w];
            winograd_bf16::conv3x3(
                &shape,
                &bf16s(&x),
                &bf16s(&weight),
                Some(&kept),
                &bs,
                &mut again,
            )
            .unwrap();
            assert!(again
                .iter()
                .zip(got.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                .all(|(a, g)| a.to_bits() == g.to_bits()));
        }
        if cout > 2 {
            let fewer = Shape {
                cout: cout - 2,
                ..shape
            };
            let mut out = vec![0f32; b * (cout - 2) * h * w];
            let weight = bf16s(&weight);
            let err = winograd_bf16::conv3x3(
                &fewer,
                &bf16s(&x),
                &weight[..(cout - 2) * cin * 9],
                Some(&kept),
                &bs[..cout - 2],
                &mut out,
            )
            .unwrap_err();
            assert!(err.to_string().contains("another shape"), "{err}");
        }
        // The same through `conv2d`, rounded to bf16 at the end.
        let through = conv::conv2d(&x, &weight, &round(bias.clone()), 1, 1).unwrap();
        assert_eq!(through.dtype(), DType::BF16);
        assert!(max_abs_diff(&widen(&through), &want) <= 8e-3 * scale);
    }
}

#[test]
fn conv2d_matches_reference() {
    let mut rng = TorchCpuRng::new(2);
    // (batch, in, out, h, w, kernel, padding, stride)
    for (b, cin, cout, h, w, k, pad, stride) in [
        (2, 5, 6, 7, 9, 3, 1, 1),
        (1, 4, 3, 8, 8, 3, 1, 2),
        (2, 3, 5, 9, 7, 3, 0, 2),
        (2, 6, 4, 5, 6, 1, 0, 1),
        (1, 3, 2, 6, 5, 3, 0, 1),
        // Several unfolded tiles per image (stride 2: never Winograd).
        (1, 64, 16, 260, 128, 3, 1, 2),
        // Winograd in f32: F(2×2, 3×3) (fewer than 32 input channels; odd sides, so partial tiles), and
        // F(4×4, 3×3) (planes of 32×32 and more), within its bound of winograd_tilings_match_reference.
        (2, 24, 20, 33, 37, 3, 1, 1),
        (1, 256, 256, 40, 66, 3, 1, 1),
    ] {
        let x = randn(&mut rng, &[b, cin, h, w]);
        let weight = randn(&mut rng, &[cout, cin, k, k]);
        let bias = randn(&mut rng, &[cout]);
        let got = conv::conv2d(&x, &weight, &bias, pad, stride).unwrap();
        let want = conv::conv2d_reference(&x, &weight, &bias, pad, stride).unwrap();
        let err = max_abs_diff(&got, &want);
        let mut bound = 1e-6 * (cin * k * k) as f32;
        if (k, pad, stride) == (3, 1, 1) {
            let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            bound = bound.max(4e-5 * scale.to_scalar::<f32>().unwrap());
        }
        assert!(
            err < bound.max(1e-5),
            "conv {cin}→{cout} {h}×{w} k{k} p{pad} s{stride}: {err}"
        );
        let to = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let got = conv::conv2d(&to(&x), &to(&weight), &to(&bias), pad, stride).unwrap();
        let want = conv::conv2d_reference(&to(&x), &to(&weight), &to(&bias), pad, stride).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let scale = want
            .to_dtype(DType::F32)
            .unwrap()
            .abs()
            .unwrap()
            .max_keepdim(0)
            .unwrap();
        let scale = scale
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(max_abs_diff(&got, &want) <= scale * 8e-3, "bf16 conv");
    }
}

#[test]
fn conv1d_and_its_transpose_match_reference() {
    let mut rng = TorchCpuRng::new(5);
    // (batch, in, out, len, kernel, padding, dilation): HiFi-GAN's residual convolutions, the 7-tap ends, edges
    // wider than the input, and several unfolded tiles.
    for (b, cin, cout, len, k, pad, dil) in [
        (2, 6, 6, 37, 3, 1, 1),
        (1, 8, 8, 40, 7, 15, 5),
        (2, 5, 3, 9, 11, 25, 5),
        (1, 4, 7, 20, 7, 3, 1),
        (1, 3, 2, 6, 5, 0, 1),
        (1, 96, 96, 500, 11, 15, 3),
    ] {
        let x = randn(&mut rng, &[b, cin, len]);
        let weight = randn(&mut rng, &[cout, cin, k]);
        let bias = randn(&mut rng, &[cout]);
        for leaky_slope in [None, Some(0.1)] {
            let p = conv1d::Conv1dParams {
                padding: pad,
                step: dil,
                leaky_slope,
            };
            let got = conv1d::conv1d(&x, &weight, &bias, p).unwrap();
            let want = conv1d::conv1d_reference(&x, &weight, &bias, p).unwrap();
            let err = max_abs_diff(&got, &want);
            let bound = (1e-6 * (cin * k) as f32).max(1e-5);
            assert!(
                err < bound,
                "conv1d {cin}→{cout} len {len} k{k} {p:?}: {err}"
            );
        }
    }
    // (batch, in, out, len, kernel, padding, stride): the vocoder's upsamplings (k16 s5 p5 makes 5·len + 1).
    for (b, cin, cout, len, k, pad, stride) in [
        (2, 6, 4, 11, 16, 5, 5),
        (1, 8, 4, 13, 16, 6, 4),
        (1, 4, 2, 17, 8, 3, 2),
        (2, 4, 2, 9, 4, 1, 2),
        (1, 3, 5, 1, 4, 0, 2),
    ] {
        let x = randn(&mut rng, &[b, cin, len]);
        let weight = randn(&mut rng, &[cin, cout, k]);
        let bias = randn(&mut rng, &[cout]);
        for leaky_slope in [None, Some(0.01)] {
            let p = conv1d::Conv1dParams {
                padding: pad,
                step: stride,
                leaky_slope,
            };
            let got = conv1d::conv_transpose1d(&x, &weight, &bias, p).unwrap();
            let want = conv1d::conv_transpose1d_reference(&x, &weight, &bias, p).unwrap();
            let err = max_abs_diff(&got, &want);
            let bound = 1e-5 * (cin * k) as f32;
            assert!(
                err < bound,
                "conv_transpose1d {cin}→{cout} len {len} k{k} {p:?}: {err}"
            );
        }
    }
    let x = randn(&mut rng, &[1, 3, 4]);
    let weight = randn(&mut rng, &[2, 4, 3]);
    let p = conv1d::Conv1dParams {
        padding: 1,
        step: 1,
        leaky_slope: None,
    };
    assert!(conv1d::conv1d(&x, &weight, &randn(&mut rng, &[2]), p).is_err());
}

#[test]
fn conv2d_rejects_mismatched_shapes() {
    let x = Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((4, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
    let err = conv::conv2d(&x, &w, &b, 1, 1).unwrap_err().to_string();
    assert!(err.contains("conv2d"), "{err}");
}

#[test]
fn group_norm_matches_reference() {
    let mut rng = TorchCpuRng::new(3);
    for (shape, groups) in [
        (vec![2, 12, 7, 5], 3),
        (vec![1, 32, 16, 16], 32),
        (vec![2, 8, 77], 4),
        // Groups of 16384 values: many blocks of f32 sums.
        (vec![1, 8, 64, 64], 2),
    ] {
        let channels = shape[1];
        // Offset inputs: a naive one-pass variance would lose digits here.
        let x = randn(&mut rng, &shape).affine(3.0, 5.0).unwrap();
        let weight = randn(&mut rng, &[channels]);
        let bias = randn(&mut rng, &[channels]);
        let want = group_norm::group_norm_reference(&x, &weight, &bias, groups, 1e-5).unwrap();
        let got = group_norm::group_norm_silu(&x, &weight, &bias, groups, 1e-5, false).unwrap();
        assert!(max_abs_diff(&got, &want) < 2e-5, "{shape:?}");
        let got = group_norm::group_norm_silu(&x, &weight, &bias, groups, 1e-5, true).unwrap();
        let want_silu = candle_nn::ops::silu(&want).unwrap();
        assert!(max_abs_diff(&got, &want_silu) < 2e-5, "{shape:?} silu");
        let xb = x.to_dtype(DType::BF16).unwrap();
        let (wb, bb) = (
            weight.to_dtype(DType::BF16).unwrap(),
            bias.to_dtype(DType::BF16).unwrap(),
        );
        let got = group_norm::group_norm_silu(&xb, &wb, &bb, groups, 1e-5, true).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let want = candle_nn::ops::silu(
            &group_norm::group_norm_reference(
                &xb.to_dtype(DType::F32).unwrap(),
                &wb.to_dtype(DType::F32).unwrap(),
                &bb.to_dtype(DType::F32).unwrap(),
                groups,
                1e-5,
            )
            .unwrap(),
        )
        .unwrap();
        let err = max_abs_diff(&got, &want);
        assert!(err < 4e-2, "{shape:?} bf16: {err}");
    }
}

#[test]
fn bf16_linear_matches_f32_product() {
    use candle_core::Module;
    let mut rng = TorchCpuRng::new(4);
    // (batch, tokens, in, out): widths off the 64-column panel and 6-row block grid, with and without bias.
    for (b, n, k, out, with_bias) in [
        (2, 77, 96, 130, true),
        (1, 13, 40, 64, false),
        (2, 200, 320, 70, true),
    ] {
        let x = randn(&mut rng, &[b, n, k]).to_dtype(DType::BF16).unwrap();
        let w = randn(&mut rng, &[out, k]).to_dtype(DType::BF16).unwrap();
        let bias = randn(&mut rng, &[out]).to_dtype(DType::BF16).unwrap();
        let layer = crate::common::linear_layer(&w, with_bias.then_some(&bias));
        let got = layer.forward(&x).unwrap();
        assert_eq!(got.dims(), &[b, n, out]);
        assert_eq!(got.dtype(), DType::BF16);
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let mut want = f(&x).broadcast_matmul(&f(&w).t().unwrap()).unwrap();
        if with_bias {
            want = want.broadcast_add(&f(&bias)).unwrap();
        }
        let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let scale = scale.to_scalar::<f32>().unwrap();
        // Same products, f32 sums in another order, one rounding to bf16 (relative step 2⁻⁸).
        let err = max_abs_diff(&got, &want);
        assert!(err <= scale * 5e-3, "{b}×{n}×{k}→{out}: {err} of {scale}");
        // A second product reuses the weights packed by the first: the first token's row again, bit for bit.
        let first = x.narrow(1, 0, 1).unwrap();
        let again = layer.forward(&first).unwrap();
        assert_eq!(max_abs_diff(&again, &got.narrow(1, 0, 1).unwrap()), 0.0);
    }
}

/// f32 linear layers over few rows (the text encoder's; [`few_rows_gemm`]) equal the product computed in f64 to
/// 1e-5 of the largest output: row counts off the 32-row panels and the kernel's row range's ends, widths off
/// the 12-column blocks, inner sizes across the 256-wide slices, with and without bias.
#[test]
fn f32_linear_over_few_rows_matches_f64_product() {
    use candle_core::Module;
    use diffuse::internals::kernels::few_rows_gemm;
    let mut rng = TorchCpuRng::new(5);
    // (batch, tokens, in, out, bias): 16 and 384 rows (the kernel's range), 77 and 154 (a prompt, a prompt and
    // its negative), 8 and 400 rows (the general product).
    for (b, n, k, out, with_bias) in [
        (1, 16, 17, 13, true),
        (2, 77, 300, 130, true),
        (1, 77, 40, 12, false),
        (3, 128, 64, 25, true),
        (1, 8, 96, 30, true),
        (1, 400, 33, 14, false),
    ] {
        let x = randn(&mut rng, &[b, n, k]);
        let w = randn(&mut rng, &[out, k]);
        let bias = randn(&mut rng, &[out]);
        let layer = crate::common::linear_layer(&w, with_bias.then_some(&bias));
        let got = layer.forward(&x).unwrap();
        let f = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let mut want = f(&x).broadcast_matmul(&f(&w).t().unwrap()).unwrap();
        if with_bias {
            want = want.broadcast_add(&f(&bias)).unwrap();
        }
        let err = crate::common::relative_error(&got, &want);
        assert!(err <= 1e-5, "{b}×{n}×{k}→{out}: relative error {err}");
    }
    // The kernel itself refuses buffers that do not fit the shapes, naming them, instead of reading past them.
    if few_rows_gemm::available() {
        let mut y = vec![0f32; 16 * 3];
        let err = few_rows_gemm::linear(
            &[0.0; 16 * 4],
            16,
            &[0.0; 3 * 5],
            3,
            4,
            Default::default(),
            &mut y,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("W of 15 for 3×4"), "{err}");
    }
}

/// The text encoder's causal attention equals candle's masked attention (the path parity-tested against
/// transformers) to 2e-6 of the largest output: one token, token counts on and off the 16-key blocks, 77 tokens
/// of 12 heads for a prompt and its negative. A NaN key makes every query that sees it NaN, as in candle;
/// heads other than 64 wide are refused by name.
#[test]
fn causal_attention_matches_reference() {
    use diffuse::internals::kernels::causal_attention::{
        causal_attention, causal_attention_reference, suits, HEAD_DIM,
    };
    if !suits(HEAD_DIM, 1) {
        return;
    }
    let mut rng = TorchCpuRng::new(7);
    for (batch, tokens, heads) in [(1, 1, 1), (1, 16, 2), (3, 17, 1), (2, 77, 12), (1, 70, 3)] {
        let shape = [batch, tokens, heads * HEAD_DIM];
        let (q, k, v) = (
            randn(&mut rng, &shape),
            randn(&mut rng, &shape),
            randn(&mut rng, &shape),
        );
        let got = causal_attention(&q, &k, &v, heads, 0.125).unwrap();
        let want = causal_attention_reference(&q, &k, &v, heads, 0.125).unwrap();
        let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let err = max_abs_diff(&got, &want);
        assert!(
            err <= 2e-6 * scale.to_scalar::<f32>().unwrap(),
            "{batch}×{tokens}, {heads} heads: {err}"
        );
    }
    // Key 3 of the only head is NaN: queries 0..3 do not see it, the others do.
    let shape = [1, 8, HEAD_DIM];
    let (q, v) = (randn(&mut rng, &shape), randn(&mut rng, &shape));
    let mut keys = randn(&mut rng, &shape)
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    keys[3 * HEAD_DIM] = f32::NAN;
    let k = Tensor::from_vec(keys, &shape, &Device::Cpu).unwrap();
    let got = causal_attention(&q, &k, &v, 1, 0.125)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    for (i, row) in got[0].iter().enumerate() {
        assert_eq!(row.iter().all(|x| x.is_nan()), i >= 3, "query {i}: {row:?}");
        assert!(i >= 3 || row.iter().all(|x| x.is_finite()), "query {i}");
    }
    let x = randn(&mut rng, &[1, 4, 40]);
    let err = causal_attention(&x, &x, &x, 1, 0.125)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("heads of 64") && err.contains("width 40"),
        "{err}"
    );
}

/// A linear layer with its activation applied as the few-row kernel writes the product gives the same values
/// as the activation applied after it (to 1e-6 of the largest), on the kernel's rows and off them.
#[test]
fn linear_with_fused_activation_matches_separate_activation() {
    use candle_core::Module;
    use diffuse::internals::kernels::activation::{apply, Pointwise};
    let mut rng = TorchCpuRng::new(8);
    for (rows, k, n) in [(154, 40, 30), (77, 33, 13), (8, 16, 5)] {
        let x = randn(&mut rng, &[rows, k]);
        let w = randn(&mut rng, &[n, k]);
        let bias = randn(&mut rng, &[n]);
        let layer = crate::common::linear_layer(&w, Some(&bias));
        for f in [Pointwise::QuickGelu, Pointwise::Silu, Pointwise::GeluErf] {
            let want = apply(&layer.forward(&x).unwrap(), f).unwrap();
            let fused = layer.forward_activated(&x, f).unwrap();
            // Fused exactly where the few-row kernel runs the product.
            assert_eq!(
                fused.is_some(),
                rows >= 16 && diffuse::internals::kernels::few_rows_gemm::available()
            );
            if let Some(got) = fused {
                let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
                let err = max_abs_diff(&got, &want);
                assert!(
                    err <= 1e-6 * scale.to_scalar::<f32>().unwrap(),
                    "{rows}×{k}→{n} {f:?}: {err}"
                );
            }
        }
    }
}

/// SiLU, quick GELU and exact GELU in one pass match candle's compositions: f32 to 1e-6 of the largest value
/// (the vectorized exp and erf), bf16 to one bf16 rounding; a transposed input is made contiguous first.
#[test]
fn activations_match_reference() {
    use diffuse::internals::kernels::activation::{apply, reference, Pointwise};
    let mut rng = TorchCpuRng::new(6);
    for f in [Pointwise::Silu, Pointwise::QuickGelu, Pointwise::GeluErf] {
        for shape in [[2usize, 77, 3072], [1, 3, 5]] {
            let x = (randn(&mut rng, &shape) * 4.0).unwrap();
            let want = reference(&x, f).unwrap();
            let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            let scale = scale.to_scalar::<f32>().unwrap();
            let got = apply(&x, f).unwrap();
            assert_eq!(got.dims(), want.dims());
            let err = max_abs_diff(&got, &want);
            assert!(err <= 1e-6 * scale, "{f:?} {shape:?}: {err}");
            let xt = x.transpose(1, 2).unwrap();
            let err = max_abs_diff(
                &apply(&xt, f).unwrap(),
                &reference(&xt, f).unwrap().contiguous().unwrap(),
            );
            assert!(err <= 1e-6 * scale, "{f:?} {shape:?} transposed: {err}");
            let xb = x.to_dtype(DType::BF16).unwrap();
            let got = apply(&xb, f).unwrap();
            assert_eq!(got.dtype(), DType::BF16);
            let want = reference(&xb.to_dtype(DType::F32).unwrap(), f).unwrap();
            assert!(
                max_abs_diff(&got, &want) <= scale * 4e-3,
                "{f:?} {shape:?} bf16"
            );
        }
    }
}

#[test]
fn geglu_matches_reference() {
    use diffuse::internals::kernels::geglu;
    let mut rng = TorchCpuRng::new(5);
    for shape in [[2usize, 77, 64], [1, 3, 2]] {
        let h = (randn(&mut rng, &shape) * 3.0).unwrap();
        let got = geglu::geglu(&h).unwrap();
        let want = geglu::geglu_reference(&h).unwrap();
        assert_eq!(got.dims(), want.dims());
        let err = max_abs_diff(&got, &want);
        assert!(err < 5e-6 * 9.0, "{shape:?}: {err}");
        let hb = h.to_dtype(DType::BF16).unwrap();
        let got = geglu::geglu(&hb).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let want = geglu::geglu_reference(&hb.to_dtype(DType::F32).unwrap()).unwrap();
        // One rounding to bf16 (relative step 2⁻⁸) of values up to `scale`.
        let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let scale = scale.to_scalar::<f32>().unwrap();
        assert!(max_abs_diff(&got, &want) <= scale * 4e-3, "{shape:?} bf16");
    }
    assert!(geglu::geglu(&Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap()).is_err());
}
