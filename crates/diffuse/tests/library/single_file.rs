//! Single-file (LDM layout) checkpoints: the files `tools/fixtures/make_fixtures.py single_file` writes from
//! the tiny pipelines (and checks diffusers' `from_single_file` loads back to the same weights) must load to
//! exactly the weights and outputs of the diffusers folders; detection, built-in configurations and bad input.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crate::common::{assert_close, fixtures, get, load_reference, ScratchDir};
use candle_core::{DType, Device, Shape, Tensor};
use diffuse::loaders::hub::{resolve_config, resolve_model};
use diffuse::loaders::json::parse_json;
use diffuse::loaders::single_file::detect::{detect, Header};
use diffuse::loaders::single_file::{builtin, clip_keys, unet_keys, vae_keys};
use diffuse::loaders::summary::PipelineSummary;
use diffuse::loaders::weights::Transform;
use diffuse::loaders::{ConfigSource, LoadOptions, PipelineFolder, Variant};
use diffuse::models::unet::ExtraConditioning;
use diffuse::pipelines::{GenerationRequest, StableDiffusion};
use diffuse::rng::TorchCpuRng;

/// f32 parity with the references diffusers computed from the same (float16) weights.
const F32_TOLERANCE: f64 = 1e-4;

/// (name, the diffusers folder it was written from, the single file).
fn cases() -> [(&'static str, PathBuf, PathBuf); 3] {
    let single = fixtures("single_file");
    [
        (
            "sd1",
            fixtures("models").join("sd1"),
            single.join("sd1.safetensors"),
        ),
        (
            "sd2",
            fixtures("models").join("sd2"),
            single.join("sd2.safetensors"),
        ),
        (
            "sdxl",
            single.join("sdxl_wide"),
            single.join("sdxl.safetensors"),
        ),
    ]
}

fn open_single(file: &Path, config: &Path) -> PipelineFolder {
    PipelineFolder::open_single_file(file, Some(ConfigSource::Folder(config.to_path_buf())))
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn models(folder: &PipelineFolder) -> Vec<&'static str> {
    ["unet", "vae", "text_encoder", "text_encoder_2"]
        .into_iter()
        .filter(|c| folder.index().class_of(c).is_some())
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
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

#[test]
fn every_weight_equals_the_folder_weight() {
    for (name, dir, file) in cases() {
        let folder = PipelineFolder::open(&dir).unwrap();
        let single = open_single(&file, &dir);
        for component in models(&folder) {
            let from_folder = folder.weight_files(component, Variant::Default).unwrap();
            let stored = from_folder.stored();
            let folder_vb = from_folder.var_builder(DType::F32, &Device::Cpu);
            let single_vb = single
                .weight_files(component, Variant::Default)
                .unwrap()
                .var_builder(DType::F32, &Device::Cpu);
            for (tensor, shape, _) in &stored {
                // transformers 5 saves CLIPTextModel without `text_model.`; the LDM layout has it.
                let asked = [tensor.clone(), format!("text_model.{tensor}")]
                    .into_iter()
                    .find(|n| single_vb.contains_tensor(n))
                    .unwrap_or_else(|| {
                        panic!("{name} {component}: no `{tensor}` in the single file")
                    });
                let shape = Shape::from_dims(shape);
                let expected = folder_vb.get(shape.clone(), tensor).unwrap();
                let actual = single_vb.get(shape, &asked).unwrap();
                assert_eq!(
                    max_abs_diff(&actual, &expected),
                    0.0,
                    "{name} {component} {tensor}"
                );
            }
            assert!(
                stored.len() > 60,
                "{name} {component}: {} tensors",
                stored.len()
            );
        }
    }
}

fn opts() -> LoadOptions {
    LoadOptions::default()
}

#[test]
fn models_match_the_diffusers_references() {
    for (name, dir, file) in cases().into_iter().take(2) {
        let reference =
            load_reference(&fixtures("models").join(format!("{name}.reference.safetensors")));
        let folder = PipelineFolder::open(&dir).unwrap();
        let single = open_single(&file, &dir);

        let ids = get(&reference, "text_encoder.input_ids")
            .to_dtype(DType::U32)
            .unwrap();
        let encoded = single
            .load_text_encoder("text_encoder", &opts())
            .unwrap()
            .forward(&ids)
            .unwrap();
        let from_folder = folder
            .load_text_encoder("text_encoder", &opts())
            .unwrap()
            .forward(&ids)
            .unwrap();
        for (what, actual, folder_value, key) in [
            (
                "last_hidden_state",
                &encoded.last_hidden_state,
                &from_folder.last_hidden_state,
                "text_encoder.last_hidden_state",
            ),
            (
                "pooled",
                &encoded.pooled,
                &from_folder.pooled,
                "text_encoder.pooled",
            ),
        ] {
            assert_close(
                &format!("{name} text encoder {what}"),
                actual,
                get(&reference, key),
                F32_TOLERANCE,
            );
            assert_eq!(max_abs_diff(actual, folder_value), 0.0, "{name} {what}");
        }

        let key = |t: &str| format!("unet.square.0.{t}");
        let run_unet = |source: &PipelineFolder| {
            source
                .load_unet(&opts())
                .unwrap()
                .forward(
                    get(&reference, &key("sample")),
                    get(&reference, &key("timestep")),
                    Some(get(&reference, &key("context"))),
                    &ExtraConditioning::default(),
                )
                .unwrap()
        };
        let out = run_unet(&single);
        assert_close(
            &format!("{name} unet"),
            &out,
            get(&reference, &key("output")),
            F32_TOLERANCE,
        );
        assert_eq!(max_abs_diff(&out, &run_unet(&folder)), 0.0, "{name} unet");

        let run_vae = |source: &PipelineFolder| {
            source
                .load_vae(&opts())
                .unwrap()
                .decode(get(&reference, "vae.decoder.latents"))
                .unwrap()
        };
        let decoded = run_vae(&single);
        assert_close(
            &format!("{name} vae decoder"),
            &decoded,
            get(&reference, "vae.decoder.output"),
            F32_TOLERANCE,
        );
        assert_eq!(max_abs_diff(&decoded, &run_vae(&folder)), 0.0, "{name} vae");
    }
}

#[test]
fn generations_equal_the_folder_generations() {
    for (name, dir, file) in cases() {
        let request = GenerationRequest {
            prompt: "a red circle on a blue square".into(),
            negative_prompt: "blurry".into(),
            steps: 3,
            ..Default::default()
        };
        let generate = |source: &PipelineFolder| {
            StableDiffusion::load(source, &opts())
                .unwrap()
                .generate(&request, &mut TorchCpuRng::new(42), &mut |_| {
                    ControlFlow::Continue(())
                })
                .unwrap()
        };
        let from_folder = generate(&PipelineFolder::open(&dir).unwrap());
        let from_file = generate(&open_single(&file, &dir));
        assert_eq!(
            max_abs_diff(&from_file.latents, &from_folder.latents),
            0.0,
            "{name}"
        );
        assert_eq!(from_file.images, from_folder.images, "{name}");
    }
}

/// Writes a safetensors file whose tensors are all empty (a zero-sized dimension) but for their shapes:
/// enough for detection, which reads only names and shapes.
fn write_markers(path: &Path, tensors: &[(&str, &[usize])]) {
    let mut header = serde_json::Map::new();
    for (name, shape) in tensors {
        assert!(shape.contains(&0), "{name}: marker tensors must be empty");
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [0, 0]}),
        );
    }
    let json = serde_json::to_vec(&header).unwrap();
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend(json);
    std::fs::write(path, bytes).unwrap();
}

const CONV_IN: &str = "model.diffusion_model.input_blocks.0.0.weight";
const V2: &str = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight";
const XL: &str = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias";
const CLIP: &str = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight";

fn kind_of(dir: &Path, name: &str, tensors: &[(&str, &[usize])]) -> Result<String, String> {
    let path = dir.join(format!("{name}.safetensors"));
    write_markers(&path, tensors);
    diffuse::loaders::single_file::SingleFile::open(&path)
        .map(|f| f.kind().diffusers_type().to_string())
        .map_err(|e| e.to_string())
}

/// A marker file's name, its (name, shape) tensors, and what detection says about it.
type Marked<'a> = (&'a str, Vec<(&'a str, &'a [usize])>, &'a str);

#[test]
fn detection_follows_diffusers() {
    let scratch = ScratchDir::new("single-file-detect");
    let dir = scratch.path();
    let sd = [0usize, 4, 0, 0];
    let inpaint = [0usize, 9, 0, 0];
    let cases: [Marked; 8] = [
        ("sd1", vec![(CONV_IN, &sd), (CLIP, &[0, 768])], "v1"),
        ("unknown_ldm", vec![(CONV_IN, &sd)], "v1"),
        ("sd2", vec![(CONV_IN, &sd), (V2, &[0, 1024])], "v2"),
        ("sd2_narrow", vec![(CONV_IN, &sd), (V2, &[0, 768])], "v1"),
        ("sdxl", vec![(CONV_IN, &sd), (XL, &[0])], "xl_base"),
        ("inpaint", vec![(CONV_IN, &inpaint)], "inpainting"),
        (
            "inpaint_v2",
            vec![(CONV_IN, &inpaint), (V2, &[0, 1024])],
            "inpainting_v2",
        ),
        (
            "inpaint_xl",
            vec![(CONV_IN, &inpaint), (XL, &[0])],
            "xl_inpaint",
        ),
    ];
    for (name, tensors, expected) in cases {
        assert_eq!(
            kind_of(dir, name, &tensors).as_deref(),
            Ok(expected),
            "{name}"
        );
    }

    let refused: [Marked; 7] = [
        (
            "refiner",
            vec![
                (CONV_IN, &sd),
                (
                    "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias",
                    &[0],
                ),
            ],
            "SDXL refiner",
        ),
        (
            "playground",
            vec![(CONV_IN, &sd), (XL, &[0]), ("edm_mean", &[0])],
            "Playground",
        ),
        (
            "controlnet",
            vec![("control_model.time_embed.0.weight", &[0])],
            "ControlNet",
        ),
        (
            "flux",
            vec![(
                "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale",
                &[0],
            )],
            "FLUX",
        ),
        ("ip2p", vec![(CONV_IN, &[0, 8, 0, 0])], "InstructPix2Pix"),
        ("empty", vec![], "no tensors"),
        (
            "other",
            vec![("layers.0.attention.wq.weight", &[0])],
            "1 under `layers.`",
        ),
    ];
    for (name, tensors, expected) in refused {
        let err = kind_of(dir, name, &tensors).unwrap_err();
        assert!(
            err.contains(expected) && err.contains(&format!("{name}.safetensors")),
            "{name}: {err}"
        );
    }

    let diffusers_unet = fixtures("models").join("sd1/unet/diffusion_pytorch_model.safetensors");
    let err = diffuse::loaders::single_file::SingleFile::open(&diffusers_unet)
        .unwrap_err()
        .to_string();
    assert!(err.contains("a diffusers UNet weights file"), "{err}");
}

/// Opens a marker file of `tensors` with the configuration `config` (None: the built-in default).
fn marker_pipeline(
    dir: &Path,
    name: &str,
    tensors: &[(&str, &[usize])],
    config: Option<ConfigSource>,
) -> diffuse::Result<PipelineFolder> {
    let path = dir.join(format!("{name}.safetensors"));
    write_markers(&path, tensors);
    PipelineFolder::open_single_file(&path, config)
}

fn token_ids(folder: &PipelineFolder, tokenizer: &str) -> Vec<u32> {
    let ids = folder
        .load_tokenizer(tokenizer)
        .unwrap()
        .encode("a photo of a cat")
        .unwrap()
        .ids;
    ids[..8].to_vec()
}

#[test]
fn builtin_configurations_are_the_hub_repos() {
    let scratch = ScratchDir::new("single-file-builtin");
    let dir = scratch.path();
    let sd = [0usize, 4, 0, 0];
    // CLIP's ids for "a photo of a cat", then the pad token: <|endoftext|> (49407) or "!" (0).
    let prompt = [49406, 320, 1125, 539, 320, 2368, 49407];

    let sd1 = marker_pipeline(dir, "sd1", &[(CONV_IN, &sd)], None).unwrap();
    assert!(
        matches!(sd1.config_source(), ConfigSource::Builtin(c) if c.repo == builtin::SD15.repo)
    );
    let unet = sd1.unet_config().unwrap();
    assert_eq!(unet.sample_size_hw(), Some((64, 64)));
    assert_eq!(unet.block_out_channels, [320, 640, 1280, 1280]);
    assert!(!unet.use_linear_projection);
    let scheduler = sd1.scheduler_config().unwrap();
    assert_eq!(scheduler.class_name.as_deref(), Some("PNDMScheduler"));
    assert_eq!(sd1.vae_config().unwrap().scaling_factor, 0.18215);
    let te = sd1.text_encoder_config("text_encoder").unwrap();
    assert_eq!(
        (te.hidden_size, te.num_hidden_layers, te.hidden_act.as_str()),
        (768, 12, "quick_gelu")
    );
    assert_eq!(
        token_ids(&sd1, "tokenizer"),
        [&prompt[..], &[49407]].concat()
    );
    let real = diffuse::models::clip::tokenizer::ClipTokenizer::from_folder(
        fixtures("tokenizer").join("sd1"),
    )
    .unwrap();
    let embedded = sd1.load_tokenizer("tokenizer").unwrap();
    for text in [
        "A photo of an astronaut riding a horse on Mars!",
        "",
        "(masterpiece:1.2), 8k",
    ] {
        assert_eq!(
            embedded.encode(text).unwrap(),
            real.encode(text).unwrap(),
            "{text}"
        );
    }

    let sd2 = marker_pipeline(dir, "sd2", &[(CONV_IN, &sd), (V2, &[0, 1024])], None).unwrap();
    assert_eq!(sd2.unet_config().unwrap().sample_size_hw(), Some((96, 96)));
    assert!(sd2.unet_config().unwrap().upcast_attention);
    let scheduler = sd2.scheduler_config().unwrap();
    assert_eq!(scheduler.class_name.as_deref(), Some("DDIMScheduler"));
    assert_eq!(scheduler.prediction_type.as_deref(), Some("v_prediction"));
    let te = sd2.text_encoder_config("text_encoder").unwrap();
    assert_eq!(
        (te.hidden_size, te.num_hidden_layers, te.hidden_act.as_str()),
        (1024, 23, "gelu")
    );
    assert_eq!(token_ids(&sd2, "tokenizer"), [&prompt[..], &[0]].concat());

    let base_config = resolve_config("stabilityai/stable-diffusion-2-1-base").unwrap();
    let sd2_base = marker_pipeline(
        dir,
        "sd2b",
        &[(CONV_IN, &sd), (V2, &[0, 1024])],
        Some(base_config),
    )
    .unwrap();
    assert_eq!(
        sd2_base.unet_config().unwrap().sample_size_hw(),
        Some((64, 64))
    );
    assert!(!sd2_base.unet_config().unwrap().upcast_attention);
    let scheduler = sd2_base.scheduler_config().unwrap();
    assert_eq!(scheduler.class_name.as_deref(), Some("PNDMScheduler"));
    assert_eq!(scheduler.prediction_type.as_deref(), Some("epsilon"));

    let xl = marker_pipeline(dir, "xl", &[(CONV_IN, &sd), (XL, &[0])], None).unwrap();
    let unet = xl.unet_config().unwrap();
    assert_eq!(unet.sample_size_hw(), Some((128, 128)));
    assert_eq!(unet.projection_class_embeddings_input_dim, Some(2816));
    assert!(!unet.upcast_attention);
    assert_eq!(xl.vae_config().unwrap().scaling_factor, 0.13025);
    assert_eq!(
        xl.scheduler_config().unwrap().class_name.as_deref(),
        Some("EulerDiscreteScheduler")
    );
    let te2 = xl.text_encoder_config("text_encoder_2").unwrap();
    assert_eq!(
        (te2.hidden_size, te2.num_hidden_layers, te2.projection_dim),
        (1280, 32, Some(1280))
    );
    assert_eq!(
        token_ids(&xl, "tokenizer"),
        [&prompt[..], &[49407]].concat()
    );
    assert_eq!(token_ids(&xl, "tokenizer_2"), [&prompt[..], &[0]].concat());
    assert!(xl.index().flag("force_zeros_for_empty_prompt", false));

    for config in builtin::ALL {
        let scheduler = match config.file("scheduler/scheduler_config.json") {
            Some(text) => diffuse::schedulers::SchedulerConfig::from_json_str(text).unwrap(),
            None => panic!("{}: no scheduler", config.repo),
        };
        scheduler
            .build(&diffuse::schedulers::TimestepRequest::Steps(20))
            .unwrap_or_else(|e| panic!("{}: {e}", config.repo));
    }

    let err = marker_pipeline(dir, "inpaint", &[(CONV_IN, &[0, 9, 0, 0])], None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`config`")
            && err.contains("stable-diffusion-v1-5/stable-diffusion-inpainting"),
        "{err}"
    );
}

#[test]
fn bad_input_is_refused_clearly() {
    let scratch = ScratchDir::new("single-file-bad");
    let dir = scratch.path();
    let sd1_file = fixtures("single_file").join("sd1.safetensors");
    let sd1_dir = fixtures("models").join("sd1");

    // Pickles are never opened, whether named so or only shaped so.
    for name in ["model.ckpt", "model.pt", "model.bin"] {
        let err = PipelineFolder::open_path(&dir.join(name), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(name) && err.contains("never loads pickles"),
            "{err}"
        );
        let err = resolve_model(dir.join(name).to_str().unwrap(), Variant::Default)
            .unwrap_err()
            .to_string();
        assert!(err.contains("never loads pickles"), "{err}");
    }
    let zip = dir.join("renamed.safetensors");
    std::fs::write(&zip, b"PK\x03\x04 a torch zip archive").unwrap();
    let err = PipelineFolder::open_path(&zip, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("renamed.safetensors") && err.contains("pickled"),
        "{err}"
    );

    // A truncated file names itself.
    let bytes = std::fs::read(&sd1_file).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = PipelineFolder::open_path(&truncated, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("truncated.safetensors"), "{err}");

    // A missing tensor is named with the stored name it was looked for under.
    let mut tensors = candle_core::safetensors::load(&sd1_file, &Device::Cpu).unwrap();
    let removed = "model.diffusion_model.input_blocks.1.1.proj_in.weight";
    assert!(tensors.remove(removed).is_some());
    let gappy = dir.join("gappy.safetensors");
    candle_core::safetensors::save(&tensors, &gappy).unwrap();
    let folder = open_single(&gappy, &sd1_dir);
    let err = folder.load_unet(&opts()).err().unwrap().to_string();
    assert!(
        err.contains("gappy.safetensors") && err.contains(removed),
        "{err}"
    );

    // A configuration of another model names the first tensor whose shape disagrees.
    let mismatched = open_single(&sd1_file, &fixtures("models").join("sd2"));
    let err = mismatched.load_unet(&opts()).err().unwrap().to_string();
    assert!(
        err.contains("sd1.safetensors") && err.contains("expected shape"),
        "{err}"
    );
    // ... and so does the built-in SD 1.5 configuration for a tiny checkpoint.
    let err = PipelineFolder::open_path(&sd1_file, None)
        .unwrap()
        .load_vae(&opts())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("sd1.safetensors") && err.contains("expected shape"),
        "{err}"
    );

    // The wrong config: a folder is configured by itself.
    let err = PipelineFolder::open_path(&sd1_dir, Some(ConfigSource::Folder(sd1_dir.clone())))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`config`"), "{err}");
    // A checkpoint without a text encoder says so.
    let unet_only: std::collections::HashMap<String, Tensor> = tensors
        .into_iter()
        .filter(|(k, _)| !k.starts_with("cond_stage_model."))
        .collect();
    let no_text = dir.join("unet_vae.safetensors");
    candle_core::safetensors::save(&unet_only, &no_text).unwrap();
    let err = open_single(&no_text, &sd1_dir)
        .load_text_encoder("text_encoder", &opts())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("unet_vae.safetensors") && err.contains("no text encoder"),
        "{err}"
    );
}

#[test]
fn paths_configs_and_summaries() {
    let file = fixtures("single_file").join("sd2.safetensors");
    assert_eq!(
        resolve_model(file.to_str().unwrap(), Variant::Default).unwrap(),
        file
    );
    let dir = fixtures("models").join("sd2");
    assert!(matches!(
        resolve_config(dir.to_str().unwrap()).unwrap(),
        ConfigSource::Folder(d) if d == dir
    ));
    for id in [
        "runwayml/stable-diffusion-v1-5",
        "stabilityai/stable-diffusion-xl-base-1.0",
    ] {
        assert!(matches!(resolve_config(id).unwrap(), ConfigSource::Builtin(c) if c.is_named(id)));
    }

    let single = PipelineFolder::open_path(&file, Some(ConfigSource::Folder(dir.clone()))).unwrap();
    let text = PipelineSummary::of(&single).unwrap().to_string();
    assert!(
        text.contains("single-file checkpoint: Stable Diffusion 1.x (diffusers type `v1`)")
            && text.contains(dir.to_str().unwrap()),
        "{text}"
    );
    let folder = PipelineSummary::of(&PipelineFolder::open(&dir).unwrap()).unwrap();
    let single = PipelineSummary::of(&single).unwrap();
    let params = |s: &PipelineSummary, name: &str| {
        s.components
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.parameters)
    };
    // (The text encoder's count includes what the checkpoint stores and diffusers' encoder leaves unused.)
    for component in ["unet", "vae"] {
        assert_eq!(
            params(&single, component),
            params(&folder, component),
            "{component}"
        );
    }
}

/// Checks that `stored` (a stored tensor's shape) becomes `asked` through `transform`.
fn transforms_to(stored: &[usize], transform: Transform, asked: &[usize]) -> bool {
    match transform {
        Transform::None => stored == asked,
        Transform::Reshape => stored.iter().product::<usize>() == asked.iter().product::<usize>(),
        Transform::Rows { start, len } => {
            stored.first().is_some_and(|&rows| start + len <= rows)
                && asked.first() == Some(&len)
                && stored[1..] == asked[1..]
        }
        Transform::Transpose => stored.iter().rev().eq(asked.iter()),
    }
}

#[test]
fn full_size_layouts_map_every_parameter_with_the_builtin_configs() {
    let text = std::fs::read_to_string(fixtures("single_file").join("real_layouts.json")).unwrap();
    let layouts: serde_json::Value = serde_json::from_str(&text).unwrap();
    let shapes = |v: &serde_json::Value| -> Vec<(String, Vec<usize>)> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, s)| (k.clone(), serde_json::from_value(s.clone()).unwrap()))
            .collect()
    };
    for (repo, kind) in [
        ("stable-diffusion-v1-5", "v1"),
        ("stable-diffusion-2-1", "v2"),
        ("stable-diffusion-xl-base-1.0", "xl_base"),
    ] {
        let entry = &layouts[repo];
        let header: Header = shapes(&entry["checkpoint"]).into_iter().collect();
        let detected = detect(&header, Path::new(repo)).unwrap();
        assert_eq!(detected.diffusers_type(), kind, "{repo}");
        let config = builtin::default_for(detected).unwrap();
        let read = |file: &str| config.file(file).unwrap();
        let label = Path::new(repo);
        let mut maps = vec![
            (
                "unet",
                unet_keys::unet_keys(
                    &header,
                    &parse_json(read("unet/config.json"), label).unwrap(),
                ),
            ),
            (
                "vae",
                vae_keys::vae_keys(
                    &header,
                    &parse_json(read("vae/config.json"), label).unwrap(),
                ),
            ),
        ];
        for encoder in ["text_encoder", "text_encoder_2"] {
            if let Some(cfg) = config.file(&format!("{encoder}/config.json")) {
                let cfg = parse_json(cfg, label).unwrap();
                maps.push((encoder, clip_keys::text_encoder_keys(&header, &cfg)));
            }
        }
        for (component, map) in maps {
            let map = map.unwrap();
            let params = shapes(&entry[component]);
            for (param, shape) in &params {
                let stored = [param.clone(), format!("text_model.{param}")]
                    .iter()
                    .find_map(|n| map.get(n))
                    .unwrap_or_else(|| panic!("{repo} {component}: `{param}` is not mapped"));
                let stored_shape = header
                    .get(&stored.name)
                    .unwrap_or_else(|| panic!("{repo}: `{}` is not stored", stored.name));
                assert!(
                    transforms_to(stored_shape, stored.transform, shape),
                    "{repo} {component} {param}: {stored:?} {stored_shape:?} → {shape:?}"
                );
            }
            assert!(params.len() > 190, "{repo} {component}: {}", params.len());
        }
    }
}

#[test]
fn a_single_file_pipeline_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync + Clone>() {}
    shareable::<PipelineFolder>();
}
