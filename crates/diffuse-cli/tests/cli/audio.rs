//! `diffuse generate` and `diffuse info` on the tiny AudioLDM fixture pipeline: the WAV equals diffusers'
//! waveform, carries its parameters, replays to the same samples; spectrogram and latents beside it; image-only
//! options and bad lengths refused by flag.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use diffuse::pipelines::wav::decode_wav;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/audioldm")
}

fn tiny() -> String {
    fixtures().join("tiny").display().to_string()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("diffuse-cli-audio-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn diffuse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = diffuse(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn samples(path: &Path) -> Vec<f32> {
    decode_wav(&std::fs::read(path).unwrap()).unwrap().samples
}

#[test]
fn the_wav_equals_diffusers_and_replays_to_the_same_samples() {
    let dir = scratch("ddim");
    let wav = dir.join("rain.wav");
    let w = wav.to_str().unwrap();
    let latents = dir.join("latents.safetensors");
    // The fixtures' "ddim" case: DDIM from the folder, guidance 2.5 and 10 steps are AudioLDM's defaults.
    ok(&[
        "generate",
        "--model",
        &tiny(),
        "rain on a tin roof",
        "--audio-length",
        "0.02",
        "--steps",
        "4",
        "--seed",
        "42",
        "-o",
        w,
        "--spectrogram",
        "--save-latents",
        latents.to_str().unwrap(),
        "-q",
    ]);
    let reference = candle_core::safetensors::load(
        fixtures().join("pipeline.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let expected = reference["ddim.waveform"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let ours = samples(&wav);
    assert_eq!(ours.len(), expected.len());
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .zip(&expected)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff <= 1e-3 * scale,
        "waveform differs by {diff} (scale {scale})"
    );
    let wav_file = decode_wav(&std::fs::read(&wav).unwrap()).unwrap();
    assert_eq!(wav_file.sample_rate, 16000);

    let saved = candle_core::safetensors::load(&latents, &candle_core::Device::Cpu).unwrap();
    assert_eq!(saved["latents"].dims(), reference["ddim.latents"].dims());
    let picture =
        diffuse::pipelines::RgbImage::open(&dir.join("rain.spectrogram.png"), "spectrogram")
            .unwrap();
    assert_eq!((picture.width, picture.height), (80, 16));

    let info = ok(&["info", w]);
    assert!(
        info.starts_with("rain on a tin roof\nSteps: 4, Sampler: DDIM, CFG scale: 2.5, Seed: 42"),
        "{info}"
    );
    assert!(info.contains("Audio length: 0.02"), "{info}");

    let again = dir.join("again.wav");
    ok(&[
        "generate",
        "--model",
        &tiny(),
        "--replay",
        w,
        "-o",
        again.to_str().unwrap(),
        "-q",
    ]);
    assert_eq!(samples(&again), ours);
    // Guidance and steps from the replayed file win over AudioLDM's defaults; a given seed wins over the file's.
    let other = dir.join("other.wav");
    ok(&[
        "generate",
        "--model",
        &tiny(),
        "--replay",
        w,
        "--seed",
        "3",
        "-o",
        other.to_str().unwrap(),
        "-q",
    ]);
    assert_ne!(samples(&other), ours);
}

#[test]
fn info_describes_the_audio_components() {
    let info = ok(&["info", &tiny()]);
    assert!(info.contains("AudioLDMPipeline"), "{info}");
    // transformers' integer buffers (position_ids, token_type_ids) are not counted as parameters.
    assert!(
        info.contains("text_encoder    transformers.ClapTextModelWithProjection  85.7K parameters, stored as f16\n"),
        "{info}"
    );
    assert!(
        info.contains("vocoder         transformers.SpeechT5HifiGan"),
        "{info}"
    );
    assert!(
        info.contains("sampling_rate                 16000"),
        "{info}"
    );
}

#[test]
fn several_waveforms_are_numbered_and_default_to_output_wav() {
    let dir = scratch("batch");
    let out = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .current_dir(&dir)
        .args([
            "generate",
            "--model",
            &tiny(),
            "thunder",
            "--num-images",
            "2",
            "--steps",
            "2",
            "-q",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The UNet's sample size: 32 latent rows × 2 × 160 samples at 16 kHz.
    for name in ["output-1.wav", "output-2.wav"] {
        assert_eq!(samples(&dir.join(name)).len(), 256, "{name}");
    }
    let info = ok(&["info", dir.join("output-2.wav").to_str().unwrap()]);
    assert!(info.contains("Batch size: 2, Batch pos: 1"), "{info}");
}

fn fails_with(args: &[&str], expected: &[&str]) {
    let out = diffuse(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    for part in expected {
        assert!(
            err.contains(part),
            "{args:?}: `{err}` does not mention `{part}`"
        );
    }
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
}

#[test]
fn image_options_and_bad_lengths_are_refused_by_flag() {
    let dir = scratch("errors");
    let o = dir.join("x.wav");
    let o = o.to_str().unwrap();
    let m = tiny();
    fails_with(
        &[
            "generate", "--model", &m, "rain", "--image", "in.png", "-o", o,
        ],
        &["--image is an image option", "AudioLDMPipeline"],
    );
    fails_with(
        &["generate", "--model", &m, "rain", "--width", "64", "-o", o],
        &["--width is an image option"],
    );
    fails_with(
        &[
            "generate",
            "--model",
            &m,
            "rain",
            "--audio-length",
            "0",
            "-o",
            o,
        ],
        &["invalid --audio-length: 0 s", "from 0.0005 s"],
    );
    fails_with(
        &[
            "generate",
            "--model",
            &m,
            "rain",
            "--audio-length",
            "-2",
            "-o",
            o,
        ],
        &["invalid --audio-length: -2 s"],
    );
    fails_with(
        &[
            "generate",
            "--model",
            &m,
            "rain",
            "--audio-length",
            "9999",
            "-o",
            o,
        ],
        &["invalid --audio-length: 9999 s"],
    );
    fails_with(
        &[
            "generate",
            "--model",
            &m,
            "rain",
            "--num-images",
            "0",
            "-o",
            o,
        ],
        &["invalid --num-images"],
    );
    fails_with(
        &[
            "generate",
            "--model",
            &m,
            "rain",
            "-o",
            dir.join("x.png").to_str().unwrap(),
        ],
        &["writes .wav files"],
    );
    let sd1 = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/sd1");
    fails_with(
        &[
            "generate",
            "--model",
            sd1.to_str().unwrap(),
            "rain",
            "--audio-length",
            "5",
            "-o",
            dir.join("x.png").to_str().unwrap(),
        ],
        &["--audio-length is an audio option", "image model"],
    );
}
