//! AudioLDM against diffusers 0.42.1 / transformers 5 (`tests/fixtures/audioldm`, written by
//! `make_fixtures.py audioldm`): the RoBERTa tokenizer in both layouts, the CLAP text embedding, the UNet with
//! class labels and no context, the 1-channel VAE, the HiFi-GAN vocoder, whole generations, the published configs
//! of cvssp/audioldm-s-full-v2, and the errors of bad requests and folders.

use std::ops::ControlFlow;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::common::{assert_close, copy_dir, fixtures, get, load_reference, ScratchDir};
use diffuse::loaders::{LoadOptions, PipelineFolder};
use diffuse::models::clap::{ClapTextConfig, ClapTextModel, RobertaTokenizer};
use diffuse::models::unet::{ExtraConditioning, UNet2DConditionModel};
use diffuse::models::vocoder::HifiGan;
use diffuse::pipelines::{AudioLdm, AudioRequest, Output, RequestField};
use diffuse::rng::TorchCpuRng;
use diffuse::schedulers::scheduler_config_for;

fn area() -> std::path::PathBuf {
    fixtures("audioldm")
}

fn folder() -> PipelineFolder {
    PipelineFolder::open(&area().join("tiny")).unwrap()
}

fn pipeline() -> AudioLdm {
    AudioLdm::load(&folder(), &LoadOptions::default()).unwrap()
}

fn tokens() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(area().join("tokens.json")).unwrap()).unwrap()
}

#[test]
fn the_roberta_tokenizer_equals_transformers_in_both_layouts() {
    let expected = tokens();
    let prompts = expected["prompts"].as_array().unwrap();
    for dir in [
        area().join("tiny/tokenizer"),
        area().join("tokenizer_vocab_merges"),
    ] {
        let tokenizer = RobertaTokenizer::from_folder(&dir).unwrap();
        assert_eq!(tokenizer.max_length(), 77);
        for (prompt, ids) in prompts.iter().zip(expected["ids"].as_array().unwrap()) {
            let ids: Vec<u32> = ids
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(
                tokenizer.encode(prompt.as_str().unwrap()).unwrap(),
                ids,
                "{} on {prompt}",
                dir.display()
            );
        }
    }
}

#[test]
fn the_clap_text_embedding_equals_transformers() {
    let pipe = pipeline();
    let expected = load_reference(&area().join("text.safetensors"));
    let prompts = tokens()["prompts"].as_array().unwrap().clone();
    let rows: Vec<Tensor> = prompts
        .iter()
        .map(|p| {
            let ids = pipe.tokenizer.encode(p.as_str().unwrap()).unwrap();
            pipe.text_encoder.text_embeds(&ids).unwrap()
        })
        .collect();
    let actual = Tensor::cat(&rows, 0).unwrap();
    assert_close("text_embeds", &actual, get(&expected, "text_embeds"), 1e-4);
}

#[test]
fn the_unet_with_class_labels_and_no_context_equals_diffusers() {
    let pipe = pipeline();
    let r = load_reference(&area().join("unet.safetensors"));
    let extra = ExtraConditioning {
        class_labels: Some(get(&r, "class_labels").clone()),
        ..ExtraConditioning::default()
    };
    let out = pipe
        .unet
        .forward(get(&r, "sample"), get(&r, "timestep"), None, &extra)
        .unwrap();
    assert_close("unet", &out, get(&r, "out"), 1e-4);
    // The class labels move the output: a UNet that ignored them would not pass.
    let other = ExtraConditioning {
        class_labels: Some((get(&r, "class_labels") * -1.0).unwrap()),
        ..ExtraConditioning::default()
    };
    let moved = pipe
        .unet
        .forward(get(&r, "sample"), get(&r, "timestep"), None, &other)
        .unwrap();
    assert!(crate::common::relative_error(&moved, get(&r, "out")) > 1e-2);
    let missing = pipe
        .unet
        .forward(
            get(&r, "sample"),
            get(&r, "timestep"),
            None,
            &ExtraConditioning::default(),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(missing.contains("class_labels"), "{missing}");
}

#[test]
fn the_one_channel_vae_equals_diffusers() {
    let pipe = pipeline();
    let r = load_reference(&area().join("vae.safetensors"));
    let decoded = pipe.vae.decode(get(&r, "latents")).unwrap();
    assert_close("vae decode", &decoded, get(&r, "decoded"), 1e-4);
}

#[test]
fn the_vocoder_equals_transformers_with_and_without_normalisation() {
    let r = load_reference(&area().join("vocoder.safetensors"));
    let plain = pipeline().vocoder;
    let waveform = plain.forward(get(&r, "spectrogram")).unwrap();
    assert_close("vocoder", &waveform, get(&r, "waveform_plain"), 1e-4);

    let dir = area().join("vocoder_normalized");
    let config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let normalized = HifiGan::new(vb, &config).unwrap();
    let waveform = normalized.forward(get(&r, "spectrogram")).unwrap();
    assert_close(
        "normalised vocoder",
        &waveform,
        get(&r, "waveform_normalized"),
        1e-4,
    );
}

fn request(case: &serde_json::Value, pipe: &AudioLdm) -> AudioRequest {
    AudioRequest {
        prompt: case["prompt"].as_str().unwrap().into(),
        negative_prompt: case["negative_prompt"].as_str().unwrap().into(),
        audio_length_s: case["audio_length_s"].as_f64(),
        steps: case["steps"].as_u64().unwrap() as usize,
        guidance_scale: case["guidance"].as_f64().unwrap(),
        num_waveforms: case["waveforms"].as_u64().unwrap() as usize,
        scheduler: Some(
            scheduler_config_for(case["scheduler"].as_str().unwrap(), &pipe.scheduler).unwrap(),
        ),
        ..AudioRequest::default()
    }
}

#[test]
fn whole_generations_equal_diffusers() {
    let pipe = pipeline();
    let r = load_reference(&area().join("pipeline.safetensors"));
    for case in crate::common::cases("audioldm") {
        let name = case["name"].as_str().unwrap();
        let req = request(&case, &pipe);
        let mut noise = TorchCpuRng::new(case["seed"].as_u64().unwrap());
        let mut steps = 0;
        let out = pipe
            .generate(&req, &mut noise, &mut |_| {
                steps += 1;
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(steps, req.steps, "{name}");
        assert_close(
            &format!("{name} latents"),
            &out.latents,
            get(&r, &format!("{name}.latents")),
            1e-3,
        );
        let mel = out.spectrograms.unwrap();
        assert_close(
            &format!("{name} mel"),
            &mel.unsqueeze(1).unwrap(),
            get(&r, &format!("{name}.mel")),
            1e-3,
        );
        let expected = get(&r, &format!("{name}.waveform"));
        let (rows, samples) = expected.dims2().unwrap();
        assert_eq!(out.waveforms.len(), rows, "{name}");
        let flat: Vec<f32> = out.waveforms.concat();
        let actual = Tensor::from_vec(flat, (rows, samples), &Device::Cpu).unwrap();
        assert_close(&format!("{name} waveform"), &actual, expected, 1e-3);
        assert_eq!(out.sampling_rate, 16000);
        let plan = pipe.plan(&req).unwrap();
        assert_eq!(plan.samples, samples, "{name}");
        assert_eq!(
            plan.latent_shape.to_vec(),
            out.latents.dims().to_vec(),
            "{name}"
        );
    }
}

#[test]
fn latents_only_skips_decoding_and_the_prompt_moves_the_audio() {
    let pipe = pipeline();
    let case = &crate::common::cases("audioldm")[0];
    let base = request(case, &pipe);
    let run = |req: &AudioRequest| {
        pipe.generate(req, &mut TorchCpuRng::new(42), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap()
    };
    let latents_only = run(&AudioRequest {
        output: Output::Latents,
        ..base.clone()
    });
    assert!(latents_only.waveforms.is_empty() && latents_only.spectrograms.is_none());
    let full = run(&base);
    assert_close("latents only", &latents_only.latents, &full.latents, 0.0);
    let other = run(&AudioRequest {
        prompt: "birds singing in the forest at dawn".into(),
        ..base
    });
    let moved = crate::common::relative_error(&other.latents, &full.latents);
    assert!(
        moved > 1e-2,
        "another prompt moved the latents by {moved:.2e}"
    );
}

fn field_of(err: &diffuse::Error) -> Option<RequestField> {
    RequestField::of(err)
}

#[test]
fn bad_audio_requests_name_the_field() {
    let pipe = pipeline();
    let plan = |req: AudioRequest| pipe.plan(&req).err().unwrap();
    for length in [0.0, -1.0, f64::NAN, 0.0004, 1000.0] {
        let err = plan(AudioRequest {
            audio_length_s: Some(length),
            ..AudioRequest::default()
        });
        assert_eq!(
            field_of(&err),
            Some(RequestField::AudioLength),
            "{length}: {err}"
        );
        assert!(
            err.to_string()
                .contains("this model generates from 0.0005 s to 1.024 s"),
            "{err}"
        );
    }
    let err = plan(AudioRequest {
        num_waveforms: 0,
        ..AudioRequest::default()
    });
    assert_eq!(field_of(&err), Some(RequestField::NumWaveforms), "{err}");
    let err = plan(AudioRequest {
        steps: 1001,
        ..AudioRequest::default()
    });
    assert_eq!(field_of(&err), Some(RequestField::Steps), "{err}");
    let err = pipe
        .generate(
            &AudioRequest {
                latents: Some(Tensor::zeros((1, 4, 3, 8), DType::F32, &Device::Cpu).unwrap()),
                ..AudioRequest::default()
            },
            &mut TorchCpuRng::new(0),
            &mut |_| ControlFlow::Continue(()),
        )
        .err()
        .unwrap();
    assert_eq!(field_of(&err), Some(RequestField::Latents), "{err}");
    // The default length is the UNet's sample size: 32 latent rows × 2 × 160 samples / 16 kHz.
    assert_eq!(pipe.plan(&AudioRequest::default()).unwrap().samples, 256);
}

fn edited_copy(name: &str, file: &str, edit: impl Fn(&mut serde_json::Value)) -> ScratchDir {
    let dir = ScratchDir::new(name);
    copy_dir(&area().join("tiny"), dir.path());
    let path = dir.path().join(file);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
    dir
}

fn load_error(dir: &ScratchDir) -> String {
    let folder = PipelineFolder::open(dir.path()).unwrap();
    match AudioLdm::load(&folder, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", dir.path().display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn folders_whose_parts_do_not_fit_are_refused_by_name() {
    let dir = edited_copy("vocoder-bins", "vocoder/config.json", |c| {
        c["model_in_dim"] = 15.into()
    });
    let err = load_error(&dir);
    assert!(err.contains("vocoder") && err.contains("15"), "{err}");
    let dir = edited_copy("vocoder-kernels", "vocoder/config.json", |c| {
        c["upsample_kernel_sizes"] = serde_json::json!([4])
    });
    let err = load_error(&dir);
    assert!(
        err.contains("upsample_rates/upsample_kernel_sizes"),
        "{err}"
    );
    let dir = edited_copy("vocoder-dilation", "vocoder/config.json", |c| {
        c["resblock_dilation_sizes"] = serde_json::json!([[1, 0, 5], [1, 3, 5]])
    });
    let err = load_error(&dir);
    assert!(err.contains("resblock_dilation_sizes"), "{err}");
    let dir = edited_copy("class-embed", "unet/config.json", |c| {
        c["class_embed_type"] = "timestep".into()
    });
    let err = load_error(&dir);
    assert!(
        err.contains("class_embed_type") && err.contains("timestep"),
        "{err}"
    );
    let dir = edited_copy("not-audio", "model_index.json", |c| {
        c["_class_name"] = "StableDiffusionPipeline".into()
    });
    let err = load_error(&dir);
    assert!(err.contains("AudioLDMPipeline"), "{err}");
}

#[test]
fn the_published_audioldm_s_configs_build_the_full_size_models() {
    let folder = PipelineFolder::open(&area().join("published/audioldm-s-full-v2")).unwrap();
    let zeros = || VarBuilder::zeros(DType::F16, &Device::Cpu);
    let unet_config = folder.unet_config().unwrap();
    let unet = UNet2DConditionModel::new(zeros(), &unet_config).unwrap();
    assert_eq!(unet.config().block_out_channels, vec![128, 256, 384, 640]);
    let vocoder = HifiGan::new(zeros(), &folder.vocoder_config().unwrap()).unwrap();
    assert_eq!(vocoder.config().hop_length(), 160);
    let text_config: ClapTextConfig = serde_json::from_str(
        &std::fs::read_to_string(
            area().join("published/audioldm-s-full-v2/text_encoder/config.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let text = ClapTextModel::new(zeros(), &text_config).unwrap();
    assert_eq!(
        (text.config().projection_dim, text.max_tokens()),
        (512, 512)
    );
    let vae = folder.vae_config().unwrap();
    assert_eq!(
        (vae.latent_channels, vae.scaling_factor),
        (8, 0.9392935633659363)
    );
    // 5.12 s: the UNet's 128 latent rows × the VAE's 4 × 160 samples at 16 kHz, 16 latent columns of 64 mel bins.
    let (h, _) = unet_config.sample_size_hw().unwrap();
    assert_eq!(
        h * vae.scale_factor() * vocoder.config().hop_length(),
        81920
    );
    assert_eq!(vocoder.config().model_in_dim / vae.scale_factor(), 16);
    assert!(folder.scheduler_config().is_ok());
}
