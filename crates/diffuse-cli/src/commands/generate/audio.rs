//! `diffuse generate` on an AudioLDM model (the pipeline class of `model_index.json` decides): text-to-audio,
//! one 32-bit float WAV per waveform with the generation parameters in its comment, and with `--spectrogram` the
//! mel spectrogram as a PNG beside it.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use diffuse::loaders::{LoadOptions, PipelineFolder};
use diffuse::pipelines::wav::write_wav;
use diffuse::pipelines::{AudioLdm, AudioRequest, Provenance};
use diffuse::rng::{NoiseSource, PhiloxRng, TorchCpuRng};
use diffuse::schedulers::scheduler_config_for;

use super::{numbered, save_latents, GenerateArgs, RngKind, SyntaxKind};
use crate::progress::StepProgress;

/// Image-only arguments (clap id, flag) an audio model refuses when given.
const IMAGE_ONLY: [(&str, &str); 13] = [
    ("image", "--image"),
    ("mask", "--mask"),
    ("strength", "--strength"),
    ("width", "--width"),
    ("height", "--height"),
    ("clip_skip", "--clip-skip"),
    ("guidance_rescale", "--guidance-rescale"),
    ("loras", "--lora"),
    ("lora_dir", "--lora-dir"),
    ("embeddings", "--embedding"),
    ("embeddings_dir", "--embeddings-dir"),
    ("tiny decoder", "--vae-decoder"),
    ("vae_tiling", "--vae-tiling"),
];

/// Refuses the image-only arguments given for an audio model, naming the first.
pub(super) fn check_audio_arguments(
    args: &GenerateArgs,
    given: &[String],
    class: &str,
) -> Result<()> {
    if let Some((_, flag)) = IMAGE_ONLY
        .iter()
        .find(|(id, _)| given.iter().any(|g| g == id))
    {
        bail!("{flag} is an image option; this model is an audio model ({class}), which takes a prompt, --audio-length, --steps, --guidance, --negative-prompt, --seed, --num-images and --scheduler");
    }
    if given.iter().any(|g| g == "prompt_syntax") && args.prompt_syntax == SyntaxKind::A1111 {
        bail!("--prompt-syntax a1111 is for image models; an audio model ({class}) reads the prompt as plain text, as diffusers does");
    }
    Ok(())
}

/// Refuses the audio-only arguments given for an image model.
pub(super) fn check_image_arguments(args: &GenerateArgs, class: &str) -> Result<()> {
    if args.audio_length.is_some() || args.spectrogram {
        let flag = if args.audio_length.is_some() {
            "--audio-length"
        } else {
            "--spectrogram"
        };
        bail!("{flag} is an audio option; this model is an image model ({class})");
    }
    Ok(())
}

/// Everything the image path settled before the model is loaded.
pub(super) struct Settled<'a> {
    pub prompt: String,
    pub seed: u64,
    pub model_name: Option<String>,
    pub model_hash: Option<String>,
    pub replay_pos: Option<usize>,
    pub folder: &'a PipelineFolder,
    pub opts: LoadOptions,
}

/// Generates audio with the AudioLDM pipeline of `settled.folder`.
pub(super) fn generate(args: &GenerateArgs, given: &[String], settled: Settled) -> Result<()> {
    let pipe = AudioLdm::load(settled.folder, &settled.opts)?;
    let scheduler = args
        .scheduler
        .as_deref()
        .map(|name| scheduler_config_for(name, &pipe.scheduler))
        .transpose()?;
    let latents = args
        .latents
        .as_deref()
        .map(|path| super::read_latents(path, &settled.opts.device))
        .transpose()?;
    let was_given = |id: &str| given.iter().any(|g| g == id);
    // diffusers' AudioLDM defaults (10 steps, guidance 2.5) where the command line's image defaults would differ.
    let defaults = AudioRequest::default();
    let request = AudioRequest {
        prompt: settled.prompt,
        negative_prompt: args.negative_prompt.clone(),
        audio_length_s: args.audio_length,
        steps: if was_given("steps") {
            args.steps
        } else {
            defaults.steps
        },
        guidance_scale: if was_given("guidance") {
            args.guidance
        } else {
            defaults.guidance_scale
        },
        num_waveforms: args.num_images,
        eta: args.eta,
        scheduler,
        latents,
        ..defaults
    };
    let plan = pipe.plan(&request).map_err(rename)?;
    let mut noise: Box<dyn NoiseSource> = match args.rng {
        RngKind::Torch => Box::new(TorchCpuRng::new(settled.seed)),
        RngKind::Philox => Box::new(PhiloxRng::new(settled.seed)),
    };
    let mut progress = StepProgress::new(args.quiet);
    let generated = pipe
        .generate(&request, noise.as_mut(), &mut |p| {
            progress.step(p.step, p.total);
            ControlFlow::Continue(())
        })
        .map_err(rename)?;
    progress.finish();
    if let Some(path) = &args.save_latents {
        save_latents(path, &generated.latents)?;
    }

    let provenance = Provenance {
        seed: settled.seed,
        rng: match args.rng {
            RngKind::Torch => diffuse::metadata::RngSource::Cpu,
            RngKind::Philox => diffuse::metadata::RngSource::Nv,
        },
        model: settled.model_name,
        model_hash: settled.model_hash,
    };
    let parameters = pipe.audio_parameters(&request, &plan, &provenance);
    let n = generated.waveforms.len();
    for (i, (waveform, params)) in generated.waveforms.iter().zip(&parameters).enumerate() {
        if settled.replay_pos.is_some_and(|pos| pos != i) {
            continue;
        }
        let path = if n > 1 && settled.replay_pos.is_none() {
            numbered(&args.output, i + 1)
        } else {
            args.output.clone()
        };
        let text = params.to_parameters_string();
        write_wav(&path, waveform, generated.sampling_rate as u32, Some(&text))
            .with_context(|| format!("cannot write the audio to {}", path.display()))?;
        let seconds = waveform.len() as f64 / generated.sampling_rate as f64;
        println!(
            "wrote {} ({seconds} s, seed {})",
            path.display(),
            settled.seed
        );
        if args.spectrogram {
            let picture = spectrogram_path(&path);
            generated
                .spectrogram_image(i)?
                .save(&picture, Some(params))
                .with_context(|| {
                    format!("cannot write the spectrogram to {}", picture.display())
                })?;
            println!("wrote {}", picture.display());
        }
    }
    Ok(())
}

/// `rain.wav` → `rain.spectrogram.png`.
fn spectrogram_path(wav: &Path) -> PathBuf {
    let stem = wav
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    wav.with_file_name(format!("{stem}.spectrogram.png"))
}

/// The library's waveform count is the command line's `--num-images`.
fn rename(e: diffuse::Error) -> anyhow::Error {
    anyhow::anyhow!(e
        .to_string()
        .replace("invalid num_waveforms: ", "invalid --num-images: "))
}
