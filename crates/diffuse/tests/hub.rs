//! Hub ids resolve to snapshots in a local Hugging Face cache laid out as `huggingface_hub` writes it
//! (refs/main → snapshots/<commit>/… → symlinks into blobs/), offline.

#[path = "library/common/mod.rs"]
mod common;

use std::path::Path;

use common::{fixtures, ScratchDir};
use diffuse::loaders::hub::{
    looks_like_repo_id, resolve_model, resolve_model_folder, wanted_files,
};
use diffuse::loaders::tiny_vae::{expand_shorthand, load_tiny_decoder};
use diffuse::loaders::{LoadOptions, PipelineFolder, Variant};

/// Copies `from` into the cache the way huggingface_hub stores files: content in blobs/, symlinks in the
/// snapshot.
fn cache_snapshot(from: &Path, snapshot: &Path, blobs: &Path, rel: &Path) {
    std::fs::create_dir_all(snapshot.join(rel)).unwrap();
    for entry in std::fs::read_dir(from.join(rel)).unwrap() {
        let entry = entry.unwrap();
        let rel_file = rel.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            cache_snapshot(from, snapshot, blobs, &rel_file);
        } else {
            let blob = blobs.join(rel_file.to_string_lossy().replace('/', "_"));
            std::fs::copy(entry.path(), &blob).unwrap();
            std::os::unix::fs::symlink(&blob, snapshot.join(&rel_file)).unwrap();
        }
    }
}

#[test]
fn hub_ids_resolve_from_the_cache_offline() {
    let scratch = ScratchDir::new("hub-cache");
    let repo = scratch.path().join("models--acme--tiny-sd");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let snapshot = repo.join("snapshots").join(commit);
    cache_snapshot(
        &fixtures("models").join("sd1"),
        &snapshot,
        &repo.join("blobs"),
        Path::new(""),
    );

    // SAFETY of the environment: this test binary runs this one test, so nothing reads the variables concurrently.
    std::env::set_var("HF_HUB_CACHE", scratch.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");

    // A one-model repo (TAESD's layout: config.json and the weights at the top) resolves to its snapshot too.
    let taesd_repo = scratch.path().join("models--madebyollin--taesd");
    std::fs::create_dir_all(taesd_repo.join("refs")).unwrap();
    std::fs::create_dir_all(taesd_repo.join("blobs")).unwrap();
    std::fs::write(taesd_repo.join("refs/main"), commit).unwrap();
    let taesd_snapshot = taesd_repo.join("snapshots").join(commit);
    cache_snapshot(
        &fixtures("taesd").join("taesd"),
        &taesd_snapshot,
        &taesd_repo.join("blobs"),
        Path::new(""),
    );

    let resolved = resolve_model("acme/tiny-sd", Variant::Default).unwrap();
    assert_eq!(resolved, snapshot);
    let folder = PipelineFolder::open(&resolved).unwrap();
    assert!(folder.load_unet(&LoadOptions::default()).is_ok());

    assert_eq!(
        resolve_model_folder("madebyollin/taesd", "tiny decoder").unwrap(),
        taesd_snapshot
    );
    let sd1 = PipelineFolder::open(&snapshot).unwrap();
    let pipe = diffuse::pipelines::StableDiffusion::load(&sd1, &LoadOptions::default()).unwrap();
    let spec = expand_shorthand("taesd", pipe.text.second.is_some());
    assert!(load_tiny_decoder(spec, &LoadOptions::default(), "tiny decoder").is_ok());
    let err = resolve_model_folder("madebyollin/taesdxl", "tiny decoder")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("invalid tiny decoder")
            && err.contains("madebyollin/taesdxl")
            && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );

    // An AudioLDM repo, as cvssp publishes them: vocoder and RoBERTa tokenizer files come along.
    let audio_repo = scratch.path().join("models--cvssp--audioldm-s-full-v2");
    std::fs::create_dir_all(audio_repo.join("refs")).unwrap();
    std::fs::create_dir_all(audio_repo.join("blobs")).unwrap();
    std::fs::write(audio_repo.join("refs/main"), commit).unwrap();
    cache_snapshot(
        &fixtures("audioldm").join("tiny"),
        &audio_repo.join("snapshots").join(commit),
        &audio_repo.join("blobs"),
        Path::new(""),
    );
    let audio = diffuse::pipelines::AudioLdm::from_pretrained(
        "cvssp/audioldm-s-full-v2",
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(audio.vocoder.config().sampling_rate, 16000);
    let audio_listing: Vec<String> = [
        "model_index.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder/pytorch_model.bin",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "vocoder/config.json",
        "vocoder/model.safetensors",
        "vocoder/pytorch_model.bin",
    ]
    .map(String::from)
    .to_vec();
    let mut wanted = wanted_files(&audio_listing, Variant::Default);
    wanted.sort();
    let kept: Vec<String> = audio_listing
        .into_iter()
        .filter(|f| !f.ends_with(".bin"))
        .collect();
    assert_eq!(wanted, kept);

    let err = resolve_model("acme/not-cached", Variant::Default)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("acme/not-cached") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );

    let err = resolve_model("./no/such/folder/here", Variant::Default)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no such folder"), "{err}");

    assert!(looks_like_repo_id("stabilityai/stable-diffusion-2-1"));
    assert!(looks_like_repo_id("runwayml/stable-diffusion-v1-5@fp16"));
    assert!(!looks_like_repo_id("models/diffuse-tiny/extra"));
    assert!(!looks_like_repo_id("../model"));

    let listing: Vec<String> = [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "safety_checker/model.safetensors",
        "v1-5-pruned.ckpt",
    ]
    .map(String::from)
    .to_vec();
    let mut wanted = wanted_files(&listing, Variant::Default);
    wanted.sort();
    assert_eq!(
        wanted,
        [
            "model_index.json",
            "text_encoder/model.safetensors",
            "tokenizer/merges.txt",
            "tokenizer/vocab.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.fp16.safetensors",
        ]
    );
}
