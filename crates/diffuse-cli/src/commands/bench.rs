//! `diffuse bench FOLDER`: times the pieces of a Stable Diffusion (or AudioLDM) pipeline, or whole generations, and prints
//! one JSON object per line (`tools/bench/bench.py` runs this next to diffusers and tabulates both).

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, ValueEnum};
use diffuse::device::Quantization;
use diffuse::loaders::tiny_vae::load_tiny_decoder;
use diffuse::loaders::{LoadOptions, PipelineFolder};
use diffuse::models::unet::ExtraConditioning;
use diffuse::pipelines::{AudioLdm, AudioRequest, GenerationRequest, LoraChoice, StableDiffusion};
use diffuse::rng::TorchCpuRng;
use diffuse::schedulers::scheduler_config_for;

const PROMPT: &str = "a photograph of an astronaut riding a horse on the moon, highly detailed";

/// What to time.
#[derive(Clone, Copy, ValueEnum)]
enum Task {
    /// Text encoding (prompt and empty negative prompt), one UNet step at batch 2 at 512² and 256², one VAE
    /// decode at 512²: each `--reps` times after one warm-up run.
    Components,
    /// One text-to-image generation at 512², `--steps` DPM++ 2M steps, timed from load to the last step.
    Generate,
    /// One tiled VAE decode of random latents for a `--size`² image (peak memory of large images).
    VaeTiled,
    /// Denoising steps at 512² (DPM++ 2M, CFG, `--steps` of them, each timed from one step's end to the next)
    /// without LoRAs, with the first `--lora`, and with all of them; and the time to prepare each set.
    Loras,
    /// Few-step generation as SD-Turbo runs it: 512², `--steps` steps of the folder's own scheduler, guidance 0,
    /// decoded by `--vae-decoder` (TAESD) when given; `--reps` generations after one warm-up, each timed from
    /// the prompt to the 8-bit image (text encoding, denoising, decoding), and the decode alone.
    Turbo,
    /// An AudioLDM folder: `--reps` whole text-to-audio generations of the model's default length (5.12 s for
    /// AudioLDM) with `--steps` steps of the folder's scheduler at guidance 2.5, then text encoding (prompt and
    /// empty negative prompt), one UNet step at batch 2, the VAE decode and the vocoder, each `--reps` times.
    Audio,
}

/// The compute dtype.
#[derive(Clone, Copy, ValueEnum)]
enum BenchDType {
    F32,
    Bf16,
    F16,
    /// f32, with the UNet quantized to int8 (`generate --quantize int8`).
    Int8,
}

/// Arguments of `diffuse bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// A diffusers pipeline folder (tools/bench/make_sd15_random.py writes a full-size SD 1.5 one).
    path: PathBuf,
    /// What to time.
    #[arg(long, value_enum, default_value = "components")]
    task: Task,
    /// The dtype the models compute in.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: BenchDType,
    /// Timed repetitions per component (after one warm-up).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Denoising steps of `--task generate`.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Run on the first CUDA device instead of the CPU.
    #[arg(long)]
    cuda: bool,
    /// Image side of `--task vae-tiled`, in pixels.
    #[arg(long, default_value_t = 2048)]
    size: usize,
    /// Where `--task generate` writes its image (a PNG), e.g. to compare dtypes.
    #[arg(long)]
    save: Option<PathBuf>,
    /// The LoRA files of `--task loras` (repeat; tools/bench/make_sd15_loras.py writes three).
    #[arg(long = "lora")]
    loras: Vec<PathBuf>,
    /// The TAESD folder `--task turbo` decodes with (tools/bench/make_turbo_random.py writes one).
    #[arg(long)]
    vae_decoder: Option<PathBuf>,
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// CPU seconds used by all threads of this process so far.
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc == 0 {
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    } else {
        f64::NAN
    }
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|t| format!("{t:.6}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One JSON line: wall-clock seconds of each repetition and, when measured, their CPU seconds.
fn emit(name: &str, times: &[(f64, f64)]) {
    let wall: Vec<f64> = times.iter().map(|t| t.0).collect();
    let cpu: Vec<f64> = times.iter().map(|t| t.1).collect();
    println!(
        "{{\"name\": \"{name}\", \"times\": [{}], \"cpu\": [{}]}}",
        list(&wall),
        list(&cpu)
    );
}

fn timed(f: impl FnOnce() -> Result<()>) -> Result<(f64, f64)> {
    let (start, cpu) = (Instant::now(), cpu_seconds());
    f()?;
    Ok((start.elapsed().as_secs_f64(), cpu_seconds() - cpu))
}

fn time_reps(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<(f64, f64)>> {
    f()?;
    (0..reps).map(|_| timed(&mut f)).collect()
}

fn sync(t: &Tensor) -> Result<()> {
    t.device().synchronize()?;
    Ok(())
}

/// Runs the benchmark task.
pub fn run(args: BenchArgs) -> Result<()> {
    let dtype = match args.dtype {
        BenchDType::F32 | BenchDType::Int8 => DType::F32,
        BenchDType::Bf16 => DType::BF16,
        BenchDType::F16 => DType::F16,
    };
    let quantize = matches!(args.dtype, BenchDType::Int8).then_some(Quantization::Int8);
    let device = if args.cuda {
        Device::new_cuda(0)?
    } else {
        Device::Cpu
    };
    let folder = PipelineFolder::open(&args.path)?;
    let opts = LoadOptions {
        dtype,
        device: device.clone(),
        quantize,
        ..LoadOptions::default()
    };
    if let Task::Audio = args.task {
        return audio(&folder, &opts, args.steps, args.reps);
    }
    let mut loaded: Option<StableDiffusion> = None;
    let load = timed(|| {
        loaded = Some(StableDiffusion::load(&folder, &opts)?);
        Ok(())
    })?;
    emit("load", &[load]);
    let Some(mut pipe) = loaded else {
        bail!("the pipeline did not load");
    };
    match args.task {
        Task::Components => components(&pipe, args.reps, dtype, &device),
        Task::Generate => generate(&pipe, args.steps, args.save.as_deref()),
        Task::Loras => loras(&pipe, args.steps, &args.loras),
        Task::Turbo => {
            let pipe = match &args.vae_decoder {
                Some(folder) => {
                    let opts = LoadOptions {
                        dtype,
                        device: device.clone(),
                        ..LoadOptions::default()
                    };
                    let spec = folder.to_string_lossy();
                    pipe.with_tiny_decoder(load_tiny_decoder(&spec, &opts, "vae decoder")?)?
                }
                None => pipe,
            };
            turbo(&pipe, args.steps, args.reps, args.vae_decoder.is_some())
        }
        Task::Audio => bail!("the audio task loads its own pipeline"),
        Task::VaeTiled => {
            pipe.vae.enable_tiling();
            let side = args.size / pipe.vae_scale_factor();
            let z = Tensor::randn(0f32, 1f32, (1, 4, side, side), &device)?
                .to_dtype(pipe.vae.dtype())?;
            let time = timed(|| sync(&pipe.vae.decode(&z)?))?;
            emit("vae_tiled_decode", &[time]);
            Ok(())
        }
    }
}

fn components(pipe: &StableDiffusion, reps: usize, dtype: DType, device: &Device) -> Result<()> {
    if reps == 0 {
        bail!("--reps must be at least 1");
    }
    let times = time_reps(reps, || {
        sync(&pipe.text.encode(PROMPT, "", 1, true, None)?.context)
    })?;
    emit("text_encode", &times);
    let context = pipe
        .text
        .encode(PROMPT, "", 1, true, None)?
        .context
        .to_dtype(dtype)?;
    let timestep = Tensor::new(&[999f32], device)?;
    for (name, side) in [("unet_step_512", 64), ("unet_step_256", 32)] {
        let latents = Tensor::randn(0f32, 1f32, (2, 4, side, side), device)?.to_dtype(dtype)?;
        let times = time_reps(reps, || {
            let out = pipe.unet.forward(
                &latents,
                &timestep,
                Some(&context),
                &ExtraConditioning::default(),
            )?;
            sync(&out)
        })?;
        emit(name, &times);
    }
    let z = Tensor::randn(0f32, 1f32, (1, 4, 64, 64), device)?.to_dtype(pipe.vae.dtype())?;
    let times = time_reps(reps, || sync(&pipe.vae.decode(&z)?))?;
    emit("vae_decode_512", &times);
    Ok(())
}

/// The benchmark's generation: `PROMPT` at 512², `steps` DPM++ 2M steps, CFG 7.5.
fn request_512(pipe: &StableDiffusion, steps: usize) -> Result<GenerationRequest> {
    Ok(GenerationRequest {
        prompt: PROMPT.to_string(),
        steps,
        width: Some(512),
        height: Some(512),
        scheduler: Some(scheduler_config_for("DPM++ 2M", &pipe.scheduler)?),
        ..GenerationRequest::default()
    })
}

fn generate(pipe: &StableDiffusion, steps: usize, save: Option<&std::path::Path>) -> Result<()> {
    let request = request_512(pipe, steps)?;
    let mut noise = TorchCpuRng::new(0);
    let mut first_step = None;
    let mut generated = None;
    let time = timed(|| {
        generated = Some(pipe.generate(&request, &mut noise, &mut |p| {
            if p.step == 1 {
                first_step = Some(now_unix());
            }
            ControlFlow::Continue(())
        })?);
        Ok(())
    })?;
    emit("generate_512", &[time]);
    if let Some(t) = first_step {
        println!("{{\"name\": \"first_step_unix\", \"times\": [{t:.6}]}}");
    }
    let image = generated.as_ref().and_then(|g| g.images.first());
    if let (Some(path), Some(image)) = (save, image) {
        std::fs::write(path, image.to_png(None)?)?;
    }
    Ok(())
}

/// `--task turbo`: whole few-step generations, then the decode alone (TAESD's when `tiny`, else the VAE's).
fn turbo(pipe: &StableDiffusion, steps: usize, reps: usize, tiny: bool) -> Result<()> {
    let request = GenerationRequest {
        prompt: PROMPT.to_string(),
        steps,
        guidance_scale: 0.0,
        width: Some(512),
        height: Some(512),
        ..GenerationRequest::default()
    };
    let mut latents = None;
    let times = time_reps(reps, || {
        let generated = pipe.generate(&request, &mut TorchCpuRng::new(0), &mut |_| {
            ControlFlow::Continue(())
        })?;
        latents = Some(generated.latents);
        Ok(())
    })?;
    emit("turbo_generate_512", &times);
    let latents = latents.context("no generation ran")?;
    let times = time_reps(reps, || {
        if tiny {
            pipe.preview(&latents, 0, 1)?;
        } else {
            sync(&pipe.vae.decode(&pipe.vae.unscale_latents(&latents)?)?)?;
        }
        Ok(())
    })?;
    emit("decode_512", &times);
    Ok(())
}

const AUDIO_PROMPT: &str = "techno music with a strong, upbeat tempo and high melodic riffs";

/// `--task audio` on an AudioLDM folder.
fn audio(folder: &PipelineFolder, opts: &LoadOptions, steps: usize, reps: usize) -> Result<()> {
    if reps == 0 {
        bail!("--reps must be at least 1");
    }
    let mut loaded = None;
    let load = timed(|| {
        loaded = Some(AudioLdm::load(folder, opts)?);
        Ok(())
    })?;
    emit("load", &[load]);
    let pipe = loaded.context("the pipeline did not load")?;
    let request = AudioRequest {
        prompt: AUDIO_PROMPT.to_string(),
        steps,
        ..AudioRequest::default()
    };
    let plan = pipe.plan(&request)?;
    println!(
        "{{\"name\": \"audio_seconds\", \"times\": [{:.6}]}}",
        plan.audio_length_s
    );
    let mut latents = None;
    let times = time_reps(reps, || {
        let generated = pipe.generate(&request, &mut TorchCpuRng::new(0), &mut |_| {
            ControlFlow::Continue(())
        })?;
        latents = Some(generated.latents);
        Ok(())
    })?;
    emit("audio_generate", &times);
    let latents = latents.context("no generation ran")?;

    let times = time_reps(reps, || {
        for text in [AUDIO_PROMPT, ""] {
            let ids = pipe.tokenizer.encode(text)?;
            sync(&pipe.text_encoder.text_embeds(&ids)?)?;
        }
        Ok(())
    })?;
    emit("audio_text_encode", &times);
    let ids = pipe.tokenizer.encode(AUDIO_PROMPT)?;
    let labels = pipe.text_encoder.text_embeds(&ids)?.repeat((2, 1))?;
    let extra = ExtraConditioning {
        class_labels: Some(labels),
        ..ExtraConditioning::default()
    };
    let batch = Tensor::cat(&[&latents, &latents], 0)?.to_dtype(pipe.dtype())?;
    let timestep = Tensor::new(&[999f32], latents.device())?;
    let times = time_reps(reps, || {
        sync(&pipe.unet.forward(&batch, &timestep, None, &extra)?)
    })?;
    emit("audio_unet_step", &times);
    let z = latents.to_dtype(pipe.vae.dtype())?;
    let mut mel = None;
    let times = time_reps(reps, || {
        let decoded = pipe.vae.decode(&z)?;
        sync(&decoded)?;
        mel = Some(decoded);
        Ok(())
    })?;
    emit("audio_vae_decode", &times);
    let mel = mel.context("no decode ran")?.squeeze(1)?;
    let times = time_reps(reps, || sync(&pipe.vocoder.forward(&mel)?))?;
    emit("audio_vocoder", &times);
    Ok(())
}

/// The seconds between consecutive step ends of one 512² generation with `loras` (the first step, which
/// follows text encoding, is left out).
fn step_times(
    pipe: &StableDiffusion,
    steps: usize,
    loras: &[LoraChoice],
) -> Result<Vec<(f64, f64)>> {
    let request = GenerationRequest {
        loras: loras.to_vec(),
        ..request_512(pipe, steps)?
    };
    let mut ends = Vec::new();
    pipe.generate(&request, &mut TorchCpuRng::new(0), &mut |_| {
        ends.push((Instant::now(), cpu_seconds()));
        ControlFlow::Continue(())
    })?;
    Ok(ends
        .windows(2)
        .map(|w| ((w[1].0 - w[0].0).as_secs_f64(), w[1].1 - w[0].1))
        .collect())
}

fn loras(pipe: &StableDiffusion, steps: usize, files: &[PathBuf]) -> Result<()> {
    if files.is_empty() || steps < 3 {
        bail!("--task loras needs at least one --lora and --steps of 3 or more");
    }
    // A warm-up generation first: the first one also pays for first-touch allocations.
    step_times(pipe, 3, &[])?;
    emit("step_plain", &step_times(pipe, steps, &[])?);
    let all: Vec<LoraChoice> = files.iter().map(|f| LoraChoice::file(f, 0.8)).collect();
    for (name, set) in [("one", &all[..1]), ("all", &all[..])] {
        let prepare = timed(|| Ok(pipe.prepare_loras(set)?))?;
        emit(&format!("prepare_{name}"), &[prepare]);
        emit(&format!("step_{name}"), &step_times(pipe, steps, set)?);
    }
    Ok(())
}
