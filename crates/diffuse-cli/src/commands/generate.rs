//! `diffuse generate`: text-to-image, image-to-image and inpainting from the command line, and text-to-audio
//! when the model is an AudioLDM pipeline (see [`audio`]).

mod audio;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use diffuse::loaders::hash::model_hash;
use diffuse::loaders::hub::{resolve_config, resolve_model};
use diffuse::loaders::{LoadOptions, PipelineFolder, Variant};
use diffuse::metadata::{GenerationParameters, RngSource};
use diffuse::pipelines::images::read_image_parameters;
use diffuse::pipelines::parameters::{AUDIO_LENGTH_KEY, QUANTIZATION_KEY};
use diffuse::pipelines::{
    EmbeddingChoice, GenerationRequest, ImageFormat, InitImage, LoraChoice, PromptSyntax,
    Provenance, RgbImage, StableDiffusion,
};
use diffuse::rng::{NoiseSource, PhiloxRng, TorchCpuRng};
use diffuse::schedulers::{a1111_sampler_of, scheduler_config_for};

use super::default_model;
use crate::progress::StepProgress;

/// Which random number stream draws the noise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RngKind {
    /// `torch.Generator("cpu")`: diffusers' default on CPU (A1111's "CPU").
    Torch,
    /// torch's CUDA Philox generator, reproduced on any device (A1111's "NV").
    Philox,
}

/// How prompts are read (see [`PromptSyntax`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SyntaxKind {
    /// AUTOMATIC1111's prompt syntax.
    #[value(name = "a1111")]
    A1111,
    /// Plain text, as diffusers reads it.
    Plain,
}

/// Arguments of `diffuse generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The prompt (or use --prompt).
    #[arg(value_name = "PROMPT")]
    positional_prompt: Option<String>,
    /// The prompt.
    #[arg(long, conflicts_with = "positional_prompt")]
    prompt: Option<String>,
    /// What to steer away from.
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// A diffusers folder, a single-file checkpoint (.safetensors, CompVis/A1111 layout) or a Hugging Face
    /// Hub id (org/name[@revision]); default: the bundled model.
    #[arg(long)]
    model: Option<String>,
    /// For a single-file --model: the diffusers folder or Hub id whose configs and tokenizers to use, as
    /// diffusers' `config=`; default: built in, as diffusers picks them (SD 1.5, SD 2.1 768-v, SDXL base).
    /// SD 2.x 512 (epsilon) checkpoints want stabilityai/stable-diffusion-2-1-base, also built in.
    #[arg(long)]
    config: Option<String>,
    /// Prefer the fp16 weight files of the model.
    #[arg(long)]
    fp16_variant: bool,
    /// Denoising steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Classifier-free guidance scale (off at ≤ 1).
    #[arg(long, default_value_t = 7.5, allow_negative_numbers = true)]
    guidance: f64,
    /// Guidance rescale φ (0–1).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    guidance_rescale: f64,
    /// diffusers' clip_skip (A1111's "Clip skip: 2" is 1).
    #[arg(long)]
    clip_skip: Option<usize>,
    /// Image width in pixels (multiple of 8); default: the model's.
    #[arg(long)]
    width: Option<usize>,
    /// Image height in pixels (multiple of 8); default: the model's.
    #[arg(long)]
    height: Option<usize>,
    /// Seed of the noise (default: random, printed); -1 also means random.
    #[arg(long, allow_negative_numbers = true)]
    seed: Option<i128>,
    /// Images drawn in one batch from the one seed, as diffusers' num_images_per_prompt.
    #[arg(long, default_value_t = 1)]
    num_images: usize,
    /// Scheduler: an A1111 sampler name ("DPM++ 2M Karras", "Euler a", ...) or a diffusers class name;
    /// default: the model's scheduler_config.json.
    #[arg(long)]
    scheduler: Option<String>,
    /// DDIM's eta.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    eta: f64,
    /// Input image for image-to-image (or inpainting, with --mask).
    #[arg(long)]
    image: Option<PathBuf>,
    /// How much to change the input image, 0–1 (default 0.8, or 1.0 when inpainting).
    #[arg(long, allow_negative_numbers = true)]
    strength: Option<f64>,
    /// Inpainting mask: white is repainted, black is kept; the size of --image.
    #[arg(long, requires = "image")]
    mask: Option<PathBuf>,
    /// Output image: .png, .jpg or .webp by extension, with the generation parameters where A1111 puts them;
    /// with several images, STEM-1.png … STEM-N.png. For an audio model: a .wav file (default output.wav).
    #[arg(long, short, default_value = "output.png")]
    output: PathBuf,
    /// Audio models: seconds of audio (default: the model's, 5.12 s for AudioLDM).
    #[arg(
        long,
        id = "audio_length_s",
        value_name = "SECONDS",
        allow_negative_numbers = true
    )]
    audio_length: Option<f64>,
    /// Audio models: also write each mel spectrogram as a PNG beside its WAV (STEM.spectrogram.png).
    #[arg(long)]
    spectrogram: bool,
    /// Also write the final latents (before VAE decoding) as safetensors with one tensor `latents`.
    #[arg(long)]
    save_latents: Option<PathBuf>,
    /// Start from these latents (safetensors with a tensor `latents`) instead of drawing them.
    #[arg(long, conflicts_with = "image")]
    latents: Option<PathBuf>,
    /// Noise generator.
    #[arg(long, value_enum, default_value_t = RngKind::Torch)]
    rng: RngKind,
    /// Compute dtype: auto, f32, f16 or bf16. `auto` is f16 on CUDA and f32 on the CPU (the dtype whose images equal
    /// diffusers'); an explicit bf16 that this CPU runs slower than f32 prints a notice.
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// Quantize the UNet: `int8` runs its large linear layers and convolutions with int8 weights and
    /// activations, and its attention scores over 2048 keys or more in int8, on the CPU's VNNI instructions (faster; the image is close to, not equal to, f32's). Needs
    /// AVX512-VNNI and f32.
    #[arg(long, value_name = "int8")]
    quantize: Option<String>,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Decode the image in overlapping tiles with blended seams (diffusers' `enable_vae_tiling`), so large
    /// images decode in bounded memory.
    #[arg(long)]
    vae_tiling: bool,
    /// Decode with TAESD (diffusers' `AutoencoderTiny`) instead of the VAE: a folder, a Hub id, or `taesd` for
    /// madebyollin/taesd (madebyollin/taesdxl on SDXL models). Much faster, slightly less detailed.
    #[arg(long, id = "tiny decoder", value_name = "FOLDER|HUB_ID|taesd")]
    vae_decoder: Option<String>,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// How prompts are read: `a1111` (`(word:1.3)`, `[word]`, `BREAK`, any length in 75-token chunks) or
    /// `plain` (as diffusers: truncated at 77 tokens).
    #[arg(long, value_enum, default_value_t = SyntaxKind::A1111)]
    prompt_syntax: SyntaxKind,
    /// A LoRA (kohya/A1111, LoCon, LyCORIS LoHa/LoKr or diffusers/PEFT `.safetensors`) to apply, as FILE or
    /// FILE:WEIGHT (default 1; negative weights subtract it). Repeatable.
    #[arg(long = "lora", value_name = "FILE[:WEIGHT]")]
    loras: Vec<String>,
    /// The folder the prompt's `<lora:NAME:W>` tags are looked up in, as NAME.safetensors (subfolders included).
    #[arg(long, value_name = "DIR")]
    lora_dir: Option<PathBuf>,
    /// A textual-inversion embedding (`.safetensors`: A1111's, diffusers' learned_embeds, SDXL's
    /// clip_l/clip_g) as FILE or FILE:TOKEN; its trigger word is TOKEN, else the token stored in it, else the
    /// file's stem. Repeatable.
    #[arg(long = "embedding", value_name = "FILE[:TOKEN]")]
    embeddings: Vec<String>,
    /// A folder of embeddings, each used where a prompt names its file's stem (subfolders included).
    #[arg(long, value_name = "DIR")]
    embeddings_dir: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// Regenerate the image whose generation parameters this PNG, JPEG or WebP holds (prompt, sampler, steps,
    /// CFG, seed, size), or the audio of a WAV diffuse wrote (its length instead of the size); settings given with
    /// it (a prompt, --seed, --steps, …) replace the file's.
    #[arg(long)]
    replay: Option<PathBuf>,
}

/// Prints a one-line notice when this CPU runs bf16 slower than f32 (measured once per machine, then cached).
fn notice_slow_bf16() {
    if let Ok(speed) = diffuse::system::cpu_dtype_speed() {
        if speed.bf16_speedup() < 1.0 {
            eprintln!(
                "notice: this CPU runs bf16 at {:.2}× the speed of f32 (measured once, `diffuse info --system`); \
                 --dtype f32 is faster here and equals diffusers' images",
                speed.bf16_speedup()
            );
        }
    }
}

/// Runs the command; `given` holds the ids of the arguments the user gave (the rest are defaults).
pub fn run(args: GenerateArgs, given: &[String]) -> Result<()> {
    generate(args, given).map_err(super::flags::with_flags::<GenerateArgs>)
}

fn generate(mut args: GenerateArgs, given: &[String]) -> Result<()> {
    if let Some(threads) = args.threads {
        if threads == 0 {
            bail!("invalid --threads: 0: at least one thread");
        }
        // candle and its GEMM read this when they first size their thread pools.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    let replay = match args.replay.clone() {
        Some(png) => Some(apply_replay(&mut args, &png, given)?),
        None => None,
    };
    let replay_pos = replay.as_ref().and_then(|r| r.pos);
    let prompt = args
        .prompt
        .clone()
        .or_else(|| args.positional_prompt.clone())
        .context("no prompt: give one as the first argument or with --prompt")?;
    let seed = match args.seed {
        None | Some(-1) => random_seed(),
        Some(s) if (0..=u64::MAX as i128).contains(&s) => s as u64,
        Some(s) => bail!(
            "invalid --seed: {s}: expected 0 to {} or -1 for random",
            u64::MAX
        ),
    };

    let model_spec = match &args.model {
        Some(m) => m.clone(),
        None => default_model()?.display().to_string(),
    };
    let variant = if args.fp16_variant {
        Variant::Fp16
    } else {
        Variant::Default
    };
    let model_path = resolve_model(&model_spec, variant)?;
    let config = args.config.as_deref().map(resolve_config).transpose()?;
    let folder = PipelineFolder::open_path(&model_path, config)?;
    let class = folder.index().class_name.clone();
    let is_audio = diffuse::pipelines::audio::AUDIO_PIPELINES.contains(&class.as_str());
    if is_audio {
        audio::check_audio_arguments(&args, given, &class)?;
        if !given.iter().any(|g| g == "output") {
            args.output = PathBuf::from("output.wav");
        }
    } else {
        audio::check_image_arguments(&args, &class)?;
    }
    check_outputs(&args, is_audio)?;
    let device = diffuse::device::device_from_name(&args.device)?;
    let dtype = match args.dtype.trim() {
        "auto" => diffuse::system::auto_dtype(&device),
        name => diffuse::device::dtype_from_name(name).map_err(|_| {
            anyhow::anyhow!(
                "invalid --dtype: {name:?}: expected auto (f16 on CUDA, f32 on the CPU), f32, f16 or bf16"
            )
        })?,
    };
    if dtype == candle_core::DType::BF16 && device.is_cpu() {
        notice_slow_bf16();
    }
    let quantize = args
        .quantize
        .as_deref()
        .map(diffuse::device::Quantization::from_name)
        .transpose()?;
    let opts = LoadOptions {
        dtype,
        device,
        variant,
        quantize,
    };
    if is_audio {
        let settled = audio::Settled {
            prompt,
            seed,
            model_name: model_name(&model_spec),
            model_hash: model_hash(&folder).ok(),
            replay_pos,
            folder: &folder,
            opts,
        };
        // A replay sets the steps and the guidance as given values: the audio defaults do not apply.
        let mut given = given.to_vec();
        if replay.is_some() {
            given.extend(["steps", "guidance"].map(String::from));
        }
        return audio::generate(&args, &given, settled);
    }
    let loras = args
        .loras
        .iter()
        .map(|spec| parse_lora(spec))
        .collect::<Result<Vec<_>>>()?;
    if args.lora_dir.is_none() && args.prompt_syntax == SyntaxKind::A1111 {
        if let Some(tag) = diffuse::pipelines::prompt_syntax::ParsedPrompt::parse(&prompt)?
            .loras
            .first()
        {
            bail!(
                "the prompt's <lora:{}:…> tag needs --lora-dir DIR, the folder holding {}.safetensors",
                tag.name,
                tag.name
            );
        }
    }
    let embeddings = args
        .embeddings
        .iter()
        .map(|spec| parse_embedding(spec))
        .collect::<Result<Vec<_>>>()?;
    let mut pipe = StableDiffusion::load(&folder, &opts)?;
    if let Some(dir) = &args.embeddings_dir {
        if !dir.is_dir() {
            bail!(
                "invalid --embeddings-dir: {} is not a folder",
                dir.display()
            );
        }
        pipe = pipe.with_embeddings_dir(dir);
    }
    if let Some(dir) = &args.lora_dir {
        if !dir.is_dir() {
            bail!("invalid --lora-dir: {} is not a folder", dir.display());
        }
        pipe = pipe.with_lora_dir(dir);
    }
    if let Some(spec) = &args.vae_decoder {
        use diffuse::loaders::tiny_vae::{expand_shorthand, load_tiny_decoder};
        let spec = expand_shorthand(spec, pipe.text.second.is_some());
        let decoder = load_tiny_decoder(spec, &opts, "tiny decoder")
            .with_context(|| format!("--vae-decoder {spec}"))?;
        pipe = pipe.with_tiny_decoder(decoder)?;
    }
    if args.vae_tiling {
        pipe.vae.enable_tiling();
    }

    // A replayed sampler that names the model's own scheduler is that scheduler as the folder sets it, not a
    // fresh `from_config` of its class (which may differ where the pipeline rewrote the folder's config).
    let own_replayed = replay
        .as_ref()
        .and_then(|r| r.sampler.as_deref())
        .is_some_and(|name| name == sampler_label(&pipe.scheduler, &pipe.scheduler));
    let scheduler = args
        .scheduler
        .as_deref()
        .filter(|_| !own_replayed)
        .map(|name| scheduler_config_for(name, &pipe.scheduler))
        .transpose()?;
    let init = match &args.image {
        Some(path) => Some(InitImage {
            image: RgbImage::open(path, "--image")?,
            strength: args
                .strength
                .unwrap_or(if args.mask.is_some() { 1.0 } else { 0.8 }),
            mask: args
                .mask
                .as_deref()
                .map(|m| RgbImage::open(m, "--mask"))
                .transpose()?,
        }),
        None => {
            if args.strength.is_some() {
                bail!("--strength needs --image");
            }
            None
        }
    };
    let latents = args
        .latents
        .as_deref()
        .map(|path| read_latents(path, &opts.device))
        .transpose()?;
    let request = GenerationRequest {
        prompt: prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        steps: args.steps,
        guidance_scale: args.guidance,
        guidance_rescale: args.guidance_rescale,
        clip_skip: args.clip_skip,
        width: args.width,
        height: args.height,
        num_images: args.num_images,
        eta: args.eta,
        scheduler,
        init,
        latents,
        prompt_syntax: match args.prompt_syntax {
            SyntaxKind::A1111 => PromptSyntax::A1111,
            SyntaxKind::Plain => PromptSyntax::Plain,
        },
        loras,
        embeddings,
        ..Default::default()
    };
    pipe.check(&request)?;
    check_memory(&pipe, &request)?;

    let mut noise: Box<dyn NoiseSource> = match args.rng {
        RngKind::Torch => Box::new(TorchCpuRng::new(seed)),
        RngKind::Philox => Box::new(PhiloxRng::new(seed)),
    };
    let mut progress = StepProgress::new(args.quiet);
    let generated = pipe.generate(&request, noise.as_mut(), &mut |p| {
        progress.step(p.step, p.total);
        ControlFlow::Continue(())
    })?;
    progress.finish();

    if let Some(path) = &args.save_latents {
        save_latents(path, &generated.latents)?;
    }

    let provenance = Provenance {
        seed,
        rng: match args.rng {
            RngKind::Torch => RngSource::Cpu,
            RngKind::Philox => RngSource::Nv,
        },
        model: model_name(&model_spec),
        model_hash: model_hash(&folder).ok(),
    };
    let parameters = pipe.image_parameters(&request, &generated, &provenance);
    let n = generated.images.len();
    for (i, (image, params)) in generated.images.iter().zip(&parameters).enumerate() {
        if replay_pos.is_some_and(|pos| pos != i) {
            continue;
        }
        let path = if n > 1 && replay_pos.is_none() {
            numbered(&args.output, i + 1)
        } else {
            args.output.clone()
        };
        image
            .save(&path, Some(params))
            .with_context(|| format!("cannot write the image to {}", path.display()))?;
        println!("wrote {} (seed {seed})", path.display());
    }
    Ok(())
}

/// Writes `latents` as safetensors with one tensor `latents` (`--save-latents`).
fn save_latents(path: &Path, latents: &candle_core::Tensor) -> Result<()> {
    let tensors = std::collections::HashMap::from([("latents".to_string(), latents.clone())]);
    candle_core::safetensors::save(&tensors, path)
        .with_context(|| format!("cannot write --save-latents {}", path.display()))
}

/// A `--lora FILE[:WEIGHT]` value; the weight is whatever follows the last `:`, if that is a number.
fn parse_lora(spec: &str) -> Result<LoraChoice> {
    let (file, weight) = match spec.rsplit_once(':') {
        Some((file, weight)) if !file.is_empty() && weight.trim().parse::<f64>().is_ok() => {
            (file, weight.trim().parse::<f64>().unwrap_or(1.0))
        }
        _ => (spec, 1.0),
    };
    if !weight.is_finite() {
        bail!("invalid --lora {spec}: the weight {weight} is not a finite number");
    }
    let path = Path::new(file);
    if diffuse::loaders::single_file::is_pickle_path(path) {
        return Err(diffuse::loaders::single_file::pickle_refusal(path).into());
    }
    if !path.is_file() {
        bail!("invalid --lora {spec}: no such file {}", path.display());
    }
    Ok(LoraChoice::file(path, weight))
}

/// An `--embedding FILE[:TOKEN]` value: a `:` followed by a word that is not a path is the token.
fn parse_embedding(spec: &str) -> Result<EmbeddingChoice> {
    let (file, token) = match spec.rsplit_once(':') {
        Some((file, token))
            if !file.is_empty() && !token.is_empty() && !token.contains(['/', '\\']) =>
        {
            (file, Some(token.to_string()))
        }
        _ => (spec, None),
    };
    let path = Path::new(file);
    if diffuse::loaders::single_file::is_pickle_path(path) {
        return Err(diffuse::loaders::single_file::pickle_refusal(path).into());
    }
    if !path.is_file() {
        bail!(
            "invalid --embedding {spec}: no such file {}",
            path.display()
        );
    }
    Ok(EmbeddingChoice {
        path: path.to_path_buf(),
        token,
    })
}

/// Checks before any work that the outputs can be written: their folders exist, and the format (by extension)
/// is one that carries the generation parameters: PNG, JPEG or WebP for images, WAV for audio.
fn check_outputs(args: &GenerateArgs, audio: bool) -> Result<()> {
    let folder_of = |path: &Path| {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    };
    let outputs = [
        Some(("--output", &args.output)),
        args.save_latents.as_ref().map(|p| ("--save-latents", p)),
    ];
    for (flag, path) in outputs.into_iter().flatten() {
        let folder = folder_of(path);
        if !folder.is_dir() {
            bail!(
                "{flag} {}: the folder {} does not exist",
                path.display(),
                folder.display()
            );
        }
    }
    if audio {
        let wav = args
            .output
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
        if !wav {
            bail!(
                "--output {}: an audio model writes .wav files",
                args.output.display()
            );
        }
        return Ok(());
    }
    ImageFormat::of_path(&args.output)
        .map_err(|e| anyhow::anyhow!("--output {}", strip_name(e)))?;
    Ok(())
}

/// A library argument error's message without its field name (the CLI names its flag instead).
fn strip_name(e: diffuse::Error) -> String {
    match e {
        diffuse::Error::InvalidArgument { message, .. } => message,
        other => other.to_string(),
    }
}

/// Refuses a request that cannot fit in the host's memory, before any work, naming the estimate.
fn check_memory(pipe: &StableDiffusion, request: &GenerationRequest) -> Result<()> {
    let (Some(memory), true) = (
        diffuse::device::host_memory(),
        matches!(pipe.device(), candle_core::Device::Cpu),
    ) else {
        return Ok(());
    };
    let needed = pipe.activation_memory_lower_bound(request)?;
    if needed > memory.available {
        let gib = |bytes: u64| bytes as f64 / f64::from(1u32 << 30);
        bail!(
            "{} image(s) of this size need at least {:.1} GiB for activations, and {:.1} GiB of memory is \
             available; ask for fewer images or a smaller size, or decode in tiles with --vae-tiling",
            request.num_images,
            gib(needed),
            gib(memory.available)
        );
    }
    Ok(())
}

/// `out.png` → `out-3.png`.
fn numbered(output: &Path, index: usize) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = output
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    output.with_file_name(format!("{stem}-{index}.{ext}"))
}

/// The `Model:` A1111 records: a checkpoint file's name without its extension, else the folder or repo name.
fn model_name(spec: &str) -> Option<String> {
    let path = Path::new(spec.trim_end_matches('/'));
    let name = if path.is_file() {
        path.file_stem()
    } else {
        path.file_name()
    };
    name.map(|n| n.to_string_lossy().into_owned())
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    // A1111 and ComfyUI show seeds below 2^32; keep them as short.
    hasher.finish() & 0xffff_ffff
}

fn read_latents(path: &Path, device: &candle_core::Device) -> Result<candle_core::Tensor> {
    let tensors = candle_core::safetensors::load(path, device)
        .with_context(|| format!("cannot read --latents {}", path.display()))?;
    tensors
        .get("latents")
        .cloned()
        .with_context(|| format!("--latents {}: no tensor named `latents`", path.display()))
}

/// The generation parameters of an image (PNG, JPEG, WebP) or of a WAV file.
fn read_parameters(path: &Path) -> Result<Option<String>> {
    let mut head = [0u8; 12];
    let is_wav = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|_| diffuse::pipelines::wav::is_wav(&head));
    Ok(if is_wav {
        diffuse::pipelines::wav::read_wav_parameters(path)?
    } else {
        read_image_parameters(path)?
    })
}

/// What `--replay` took from the PNG beyond the arguments it set.
struct Replay {
    /// The image's position in its batch, when the batch is regenerated whole to reproduce it.
    pos: Option<usize>,
    /// The sampler the PNG names, when the replay uses it.
    sampler: Option<String>,
}

/// A sampler as the PNG parameters and `--scheduler` spell it: "DPM++ 2M Karras".
fn sampler_label(
    config: &diffuse::schedulers::SchedulerConfig,
    model: &diffuse::schedulers::SchedulerConfig,
) -> String {
    match a1111_sampler_of(config, model) {
        (name, Some(schedule)) => format!("{name} {schedule}"),
        (name, None) => name,
    }
}

/// Fills the generation settings from a PNG's `parameters` text. Settings in `given` (chosen on the command
/// line) win over the PNG's, as A1111's "send to txt2img" lets a user change fields; each is announced.
fn apply_replay(args: &mut GenerateArgs, png: &Path, given: &[String]) -> Result<Replay> {
    let text = read_parameters(png)
        .with_context(|| format!("--replay {}", png.display()))?
        .with_context(|| {
            format!(
                "--replay {}: the image holds no generation parameters",
                png.display()
            )
        })?;
    let p = GenerationParameters::parse(&text)
        .with_context(|| format!("--replay {}", png.display()))?;
    let get = |key: &str| {
        p.extra
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let mut overridden = Vec::new();
    let mut keep = |id: &str, flag: &str| {
        let given = given.iter().any(|g| g == id);
        if given {
            overridden.push(flag.to_string());
        }
        !given
    };
    if keep("prompt", "the prompt") && keep("positional_prompt", "the prompt") {
        args.prompt = Some(p.prompt.clone());
    }
    if keep("negative_prompt", "--negative-prompt") {
        args.negative_prompt = p.negative_prompt.clone();
    }
    if keep("steps", "--steps") {
        args.steps = p.steps as usize;
    }
    if keep("guidance", "--guidance") {
        args.guidance = p.cfg_scale;
    }
    if keep("seed", "--seed") {
        args.seed = Some(p.seed as i128);
    }
    // A quantized UNet made the file: replaying it in f32 would not give the same image.
    if let Some(quantization) = get(QUANTIZATION_KEY) {
        if keep("quantize", "--quantize") {
            args.quantize = Some(quantization.trim().to_string());
        }
    }
    // An audio generation records its length; its "Size" is the spectrogram's, not an image size to ask for.
    match get(AUDIO_LENGTH_KEY) {
        Some(length) => {
            if keep("audio_length_s", "--audio-length") {
                args.audio_length = Some(length.trim().parse().with_context(|| {
                    format!(
                        "--replay {}: {AUDIO_LENGTH_KEY} {length:?} is not a number",
                        png.display()
                    )
                })?);
            }
        }
        None => {
            if keep("width", "--width") {
                args.width = Some(p.width as usize);
            }
            if keep("height", "--height") {
                args.height = Some(p.height as usize);
            }
        }
    }
    if keep("clip_skip", "--clip-skip") {
        args.clip_skip = p
            .clip_skip
            .and_then(|k| (k as usize).checked_sub(1))
            .filter(|&k| k > 0);
    }
    let mut sampler = None;
    if keep("scheduler", "--scheduler") {
        let name = match &p.schedule_type {
            Some(schedule) if schedule != "Automatic" => format!("{} {schedule}", p.sampler),
            _ => p.sampler.clone(),
        };
        args.scheduler = Some(name.clone());
        sampler = Some(name);
    }
    if keep("rng", "--rng") {
        args.rng = match p.rng {
            RngSource::Cpu => RngKind::Torch,
            RngSource::Nv => RngKind::Philox,
            RngSource::Gpu => bail!(
                "--replay {}: made with A1111's GPU noise (torch on CUDA); diffuse reproduces CPU and NV noise \
                 only (give --rng to draw other noise)",
                png.display()
            ),
        };
    }
    // diffuse records "Mask blur: 0" for inpainting, as A1111 records its mask blur.
    let inpainting = get("Mask blur").is_some();
    if inpainting && (args.image.is_none() || args.mask.is_none()) {
        bail!(
            "--replay {}: an inpainting result; give the input image with --image and the mask with --mask",
            png.display()
        );
    }
    if p.denoising_strength.is_some() && args.image.is_none() {
        bail!(
            "--replay {}: an image-to-image result; give the input image with --image",
            png.display()
        );
    }
    if keep("strength", "--strength") {
        args.strength = p.denoising_strength;
    }
    let batch = get("Batch size")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1);
    let pos = get("Batch pos")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    if pos >= batch {
        bail!(
            "--replay {}: Batch pos {pos} is outside the batch of {batch}",
            png.display()
        );
    }
    // The image is picked out of its batch only when the batch is drawn as it was.
    let pos = if keep("num_images", "--num-images") {
        args.num_images = batch;
        Some(pos)
    } else {
        None
    };
    if !overridden.is_empty() {
        eprintln!(
            "replaying {} with {} as given instead of the PNG's",
            png.display(),
            overridden.join(", ")
        );
    }
    Ok(Replay { pos, sampler })
}
