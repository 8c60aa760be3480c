//! Parity of the CLIP text encoders, UNets and VAEs with diffusers/transformers, on the tiny random pipelines
//! written by `tools/fixtures/make_fixtures.py models`.

use crate::common::{assert_close, fixtures, get, load_reference};
use candle_core::{DType, Device, Tensor};
use diffuse::loaders::{LoadOptions, PipelineFolder};
use diffuse::models::unet::ExtraConditioning;

/// f32 parity: max abs error relative to the reference's max abs value.
const F32_TOLERANCE: f64 = 1e-4;
/// f16 compute rounds every activation to 11 significant bits.
const F16_TOLERANCE: f64 = 2e-2;
/// bf16 compute rounds every activation to 8 significant bits.
const BF16_TOLERANCE: f64 = 8e-2;

const PIPELINES: [&str; 3] = ["sd1", "sd2", "sdxl"];

fn opts(dtype: DType) -> LoadOptions {
    LoadOptions {
        dtype,
        device: Device::Cpu,
        ..Default::default()
    }
}

fn folder(name: &str) -> PipelineFolder {
    PipelineFolder::open(&fixtures("models").join(name)).unwrap()
}

fn check_text_encoders(dtype: DType, tolerance: f64) {
    for name in PIPELINES {
        let reference =
            load_reference(&fixtures("models").join(format!("{name}.reference.safetensors")));
        let folder = folder(name);
        for encoder in ["text_encoder", "text_encoder_2"] {
            if folder.index().class_of(encoder).is_none() {
                continue;
            }
            let model = folder.load_text_encoder(encoder, &opts(dtype)).unwrap();
            let ids = get(&reference, &format!("{encoder}.input_ids"))
                .to_dtype(DType::U32)
                .unwrap();
            let out = model.forward(&ids).unwrap();
            let what = |t: &str| format!("{name} {encoder} {t} ({dtype:?})");
            assert_close(
                &what("last_hidden_state"),
                &out.last_hidden_state,
                get(&reference, &format!("{encoder}.last_hidden_state")),
                tolerance,
            );
            assert_close(
                &what("pooled"),
                &out.pooled,
                get(&reference, &format!("{encoder}.pooled")),
                tolerance,
            );
            assert_eq!(
                out.hidden_states.len(),
                model.config().num_hidden_layers + 1
            );
            for (i, h) in out.hidden_states.iter().enumerate() {
                assert_close(
                    &what(&format!("hidden_states[{i}]")),
                    h,
                    get(&reference, &format!("{encoder}.hidden_states.{i}")),
                    tolerance,
                );
            }
            if let Some(expected) = reference.get(&format!("{encoder}.text_embeds")) {
                let actual = out.text_embeds.as_ref().expect("projection output");
                assert_close(&what("text_embeds"), actual, expected, tolerance);
            }
        }
    }
}

fn optional(
    reference: &std::collections::HashMap<String, Tensor>,
    key: &str,
    dtype: DType,
) -> Option<Tensor> {
    reference.get(key).map(|t| t.to_dtype(dtype).unwrap())
}

fn check_unet(name: &str, dtype: DType, tolerance: f64) {
    let root = fixtures("models");
    let reference = load_reference(&root.join(format!("{name}.reference.safetensors")));
    let unet = if name == "unet_variants" {
        let dir = root.join(name);
        let cfg: diffuse::models::unet::UNet2DConditionConfig =
            diffuse::loaders::json::read_json(&dir.join("config.json")).unwrap();
        let files = diffuse::loaders::weights::find_weight_files(
            &dir,
            "diffusion_pytorch_model",
            diffuse::loaders::Variant::Default,
        )
        .unwrap();
        let vb = diffuse::loaders::weights::WeightFiles::open(&files)
            .unwrap()
            .var_builder(dtype, &Device::Cpu);
        diffuse::models::unet::UNet2DConditionModel::new(vb, &cfg).unwrap()
    } else {
        folder(name).load_unet(&opts(dtype)).unwrap()
    };
    let mut cases = 0;
    for case in ["square.0", "square.1", "wide.0", "odd.0"] {
        let key = |t: &str| format!("unet.{case}.{t}");
        let extra = ExtraConditioning {
            text_embeds: optional(&reference, &key("text_embeds"), dtype),
            time_ids: optional(&reference, &key("time_ids"), DType::F32),
            timestep_cond: optional(&reference, &key("timestep_cond"), dtype),
            class_labels: None,
        };
        let out = unet
            .forward(
                &get(&reference, &key("sample")).to_dtype(dtype).unwrap(),
                get(&reference, &key("timestep")),
                Some(&get(&reference, &key("context")).to_dtype(dtype).unwrap()),
                &extra,
            )
            .unwrap();
        assert_close(
            &format!("{name} unet {case} ({dtype:?})"),
            &out,
            get(&reference, &key("output")),
            tolerance,
        );
        cases += 1;
    }
    assert_eq!(cases, 4);
}

fn check_vae(name: &str, dtype: DType, tolerance: f64) {
    let reference =
        load_reference(&fixtures("models").join(format!("{name}.reference.safetensors")));
    let vae = folder(name).load_vae(&opts(dtype)).unwrap();
    let image = get(&reference, "vae.encoder.image")
        .to_dtype(dtype)
        .unwrap();
    let dist = vae.encode(&image).unwrap();
    let what = |t: &str| format!("{name} vae {t} ({dtype:?})");
    assert_close(
        &what("mean"),
        &dist.mean,
        get(&reference, "vae.encoder.mean"),
        tolerance,
    );
    assert_close(
        &what("logvar"),
        &dist.logvar,
        get(&reference, "vae.encoder.logvar"),
        tolerance,
    );
    let latents = get(&reference, "vae.decoder.latents")
        .to_dtype(dtype)
        .unwrap();
    let decoded = vae.decode(&latents).unwrap();
    assert_close(
        &what("decoded"),
        &decoded,
        get(&reference, "vae.decoder.output"),
        tolerance,
    );
}

#[test]
fn text_encoders_match_transformers_f32() {
    check_text_encoders(DType::F32, F32_TOLERANCE);
}

#[test]
fn text_encoders_match_transformers_f16_bf16() {
    check_text_encoders(DType::F16, F16_TOLERANCE);
    check_text_encoders(DType::BF16, BF16_TOLERANCE);
}

#[test]
fn unets_match_diffusers_f32() {
    for name in PIPELINES.into_iter().chain(["unet_variants"]) {
        check_unet(name, DType::F32, F32_TOLERANCE);
    }
}

#[test]
fn unets_match_diffusers_f16_bf16() {
    for name in PIPELINES {
        check_unet(name, DType::F16, F16_TOLERANCE);
        check_unet(name, DType::BF16, BF16_TOLERANCE);
    }
}

#[test]
fn vaes_match_diffusers_f32() {
    for name in PIPELINES {
        check_vae(name, DType::F32, F32_TOLERANCE);
    }
}

#[test]
fn vaes_match_diffusers_f16_bf16() {
    for name in PIPELINES {
        check_vae(name, DType::F16, F16_TOLERANCE);
        check_vae(name, DType::BF16, BF16_TOLERANCE);
    }
}

/// Every item of a batch decodes as it would alone (candle 0.11's `Linear` on a transposed batched input
/// computes wrong values past the first item; the VAE attention must not feed it one).
#[test]
fn vae_decodes_each_batch_item_as_alone() {
    let reference = load_reference(&fixtures("models").join("sd1.reference.safetensors"));
    let vae = folder("sd1").load_vae(&opts(DType::F32)).unwrap();
    let one = get(&reference, "vae.decoder.latents");
    let other = (one * -0.5).unwrap();
    let batch = Tensor::cat(&[one, &other], 0).unwrap();
    let decoded = vae.decode(&batch).unwrap();
    let alone = vae.decode(&other).unwrap();
    assert_close(
        "second item",
        &decoded.narrow(0, 1, 1).unwrap(),
        &alone,
        1e-6,
    );
}

/// f32 weights loaded as bf16 are rounded straight from the file; the result must be bit for bit what
/// loading in f32 and converting with candle gives (round to nearest, ties to even), ties and subnormals
/// included.
#[test]
fn bf16_loading_rounds_like_candle() {
    let mut values: Vec<f32> = (0..70_000)
        .map(|i| (i as f32 * 0.7351).sin() * 3.0)
        .collect();
    // Exact ties between two bf16 values (low 16 bits 0x8000), below and above an even mantissa.
    values.extend(
        [
            0x3f80_8000u32,
            0x3f81_8000,
            0xbf80_8000,
            0x0000_8001,
            0x7f7f_ffff,
        ]
        .map(f32::from_bits),
    );
    let tensor = Tensor::new(values.as_slice(), &Device::Cpu).unwrap();
    let dir = std::env::temp_dir().join(format!("diffuse-bf16-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("w.safetensors");
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("w", tensor.clone())]),
        &file,
    )
    .unwrap();
    let vb = diffuse::loaders::weights::WeightFiles::open(std::slice::from_ref(&file))
        .unwrap()
        .var_builder(DType::BF16, &Device::Cpu);
    let loaded = vb.get(values.len(), "w").unwrap();
    let bits = |t: &Tensor| -> Vec<u16> {
        t.to_vec1::<half::bf16>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect()
    };
    assert_eq!(bits(&loaded), bits(&tensor.to_dtype(DType::BF16).unwrap()));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A CLIP text encoder with heads of 64 (the shape whose causal attention runs on the f32 kernel, which bf16
/// and f16 models widen their projections for): in bf16 and f16 its output stays within those dtypes' rounding of
/// the same weights in f32 (random weights, two layers, two heads).
#[test]
fn text_encoder_with_heads_of_64_keeps_its_precision_in_bf16_and_f16() {
    use candle_nn::VarBuilder;
    use diffuse::models::clip::config::ClipTextConfig;
    use diffuse::models::clip::text_model::ClipTextModel;
    use diffuse::rng::{randn_tensor, TorchCpuRng};
    use std::collections::HashMap;

    let config: ClipTextConfig = serde_json::from_str(
        r#"{"vocab_size": 99, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
            "eos_token_id": 2}"#,
    )
    .unwrap();
    let mut rng = TorchCpuRng::new(64);
    let mut randn = |shape: &[usize], scale: f64| {
        (randn_tensor(&mut rng, shape, &Device::Cpu, DType::F32).unwrap() * scale).unwrap()
    };
    let (h, inner) = (config.hidden_size, config.intermediate_size);
    let mut tensors = HashMap::new();
    tensors.insert(
        "embeddings.token_embedding.weight".to_string(),
        randn(&[99, h], 1.0),
    );
    tensors.insert(
        "embeddings.position_embedding.weight".to_string(),
        randn(&[77, h], 1.0),
    );
    let mut norm = |tensors: &mut HashMap<String, Tensor>, name: String| {
        tensors.insert(format!("{name}.weight"), (randn(&[h], 0.1) + 1.0).unwrap());
        tensors.insert(format!("{name}.bias"), randn(&[h], 0.1));
    };
    for layer in 0..config.num_hidden_layers {
        let at = format!("encoder.layers.{layer}");
        norm(&mut tensors, format!("{at}.layer_norm1"));
        norm(&mut tensors, format!("{at}.layer_norm2"));
    }
    norm(&mut tensors, "final_layer_norm".to_string());
    for layer in 0..config.num_hidden_layers {
        let at = format!("encoder.layers.{layer}");
        for (name, (rows, cols)) in [
            ("self_attn.q_proj", (h, h)),
            ("self_attn.k_proj", (h, h)),
            ("self_attn.v_proj", (h, h)),
            ("self_attn.out_proj", (h, h)),
            ("mlp.fc1", (inner, h)),
            ("mlp.fc2", (h, inner)),
        ] {
            let scale = (cols as f64).powf(-0.5);
            tensors.insert(format!("{at}.{name}.weight"), randn(&[rows, cols], scale));
            tensors.insert(format!("{at}.{name}.bias"), randn(&[rows], 0.1));
        }
    }
    // A prompt of 9 tokens padded to 77 with the end-of-text id, two rows.
    let mut ids: Vec<u32> = (0..2 * 77)
        .map(|i| {
            if i % 77 < 9 {
                (i * 7 % 90 + 3) as u32
            } else {
                2
            }
        })
        .collect();
    ids[0] = 1;
    ids[77] = 1;
    let ids = Tensor::from_vec(ids, (2, 77), &Device::Cpu).unwrap();
    let encode = |dtype: DType| {
        let vb = VarBuilder::from_tensors(tensors.clone(), dtype, &Device::Cpu);
        let model = ClipTextModel::new(vb, &config, false).unwrap();
        model.forward(&ids).unwrap().last_hidden_state
    };
    let f32 = encode(DType::F32);
    for (dtype, tolerance) in [(DType::BF16, 3e-2), (DType::F16, 4e-3)] {
        let out = encode(dtype);
        assert_eq!(out.dtype(), dtype);
        assert_close(&format!("{dtype:?} text encoder"), &out, &f32, tolerance);
    }
}
