"""The diffusers side of tools/bench/bench.py: the same tasks as `diffuse bench`, the same JSON lines.

    python diffusers_runner.py MODEL --task components|generate --dtype f32|bf16 --reps N --steps N [--save PNG]
    python diffusers_runner.py MODEL --task loras --steps N --lora A --lora B ...
    python diffusers_runner.py MODEL --task turbo --steps 1 --reps N [--vae-decoder TAESD_FOLDER]
    python diffusers_runner.py AUDIOLDM_MODEL --task audio --steps N --reps N

Thread count: torch.set_num_threads(--threads), as users of diffusers set it.
"""

import argparse
import json
import time

import torch

PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def emit(name, times):
    """One JSON line: wall-clock seconds of each repetition and their CPU seconds (all threads)."""
    print(json.dumps({"name": name, "times": [t[0] for t in times], "cpu": [t[1] for t in times]}), flush=True)


def timed(fn):
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - start, time.process_time() - cpu


def time_reps(reps, fn):
    fn()
    return [timed(fn) for _ in range(reps)]


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--task", choices=["components", "generate", "vae-tiled", "loras", "turbo", "audio"],
                   default="components")
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--dtype", choices=list(DTYPES), default="f32")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--save")
    p.add_argument("--lora", action="append", default=[])
    p.add_argument("--vae-decoder")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    dtype = DTYPES[args.dtype]
    if args.task == "audio":
        with torch.inference_mode():
            audio(args, dtype)
        return
    loaded = []
    load = timed(lambda: loaded.append(
        StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype).to(args.device)))
    pipe = loaded[0]
    pipe.set_progress_bar_config(disable=True)
    emit("load", [load])
    with torch.inference_mode():
        if args.task == "components":
            components(pipe, args, dtype)
        elif args.task == "vae-tiled":
            pipe.vae.enable_tiling()
            side = args.size // pipe.vae_scale_factor
            z = torch.randn(1, 4, side, side).to(args.device, pipe.vae.dtype)
            emit("vae_tiled_decode", [timed(lambda: pipe.vae.decode(z))])
        elif args.task == "loras":
            loras(pipe, args, DPMSolverMultistepScheduler)
        elif args.task == "turbo":
            turbo(pipe, args, dtype)
        else:
            generate(pipe, args, DPMSolverMultistepScheduler)


def components(pipe, args, dtype):
    dev = args.device

    def text():
        pipe.encode_prompt(PROMPT, dev, 1, True, "")

    emit("text_encode", time_reps(args.reps, text))
    pos, neg = pipe.encode_prompt(PROMPT, dev, 1, True, "")
    context = torch.cat([neg, pos]).to(dtype)
    t = torch.tensor([999.0], device=dev)
    for name, side in [("unet_step_512", 64), ("unet_step_256", 32)]:
        latents = torch.randn(2, 4, side, side).to(dev, dtype)
        emit(name, time_reps(args.reps, lambda: pipe.unet(latents, t, encoder_hidden_states=context)))
    z = torch.randn(1, 4, 64, 64).to(dev, pipe.vae.dtype)
    emit("vae_decode_512", time_reps(args.reps, lambda: pipe.vae.decode(z)))


def generate(pipe, args, scheduler_class):
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    first = []

    def on_step(pipeline, i, t, kwargs):
        if i == 0:
            first.append(time.time())
        return kwargs

    out = []
    run = timed(lambda: out.append(pipe(
        PROMPT,
        num_inference_steps=args.steps,
        width=512,
        height=512,
        generator=torch.Generator("cpu").manual_seed(0),
        callback_on_step_end=on_step,
    )))
    emit("generate_512", [run])
    print(json.dumps({"name": "first_step_unix", "times": first}), flush=True)
    if args.save:
        out[0].images[0].save(args.save)


def turbo(pipe, args, dtype):
    """Few-step generation as SD-Turbo runs it: the folder's scheduler, guidance 0, 512², TAESD when given (as
    `pipe.vae = AutoencoderTiny.from_pretrained(...)`); then the decode alone."""
    if args.vae_decoder:
        from diffusers import AutoencoderTiny
        pipe.vae = AutoencoderTiny.from_pretrained(args.vae_decoder, torch_dtype=dtype).to(args.device)
    latents = []

    def run():
        latents.append(pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=0.0, width=512, height=512,
                            generator=torch.Generator("cpu").manual_seed(0), output_type="latent").images)
        image = pipe.vae.decode(latents[-1] / pipe.vae.config.scaling_factor).sample
        pipe.image_processor.postprocess(image, output_type="pil")

    emit("turbo_generate_512", time_reps(args.reps, run))
    z = latents[-1] / pipe.vae.config.scaling_factor
    emit("decode_512", time_reps(args.reps, lambda: pipe.vae.decode(z)))


AUDIO_PROMPT = "techno music with a strong, upbeat tempo and high melodic riffs"


def audio(args, dtype):
    """`diffuse bench --task audio`: whole AudioLDM generations of the default length with the folder's scheduler at
    guidance 2.5, then text encoding, one UNet step at batch 2, the VAE decode and the vocoder."""
    from diffusers import AudioLDMPipeline
    import torch.nn.functional as F

    loaded = []
    load = timed(lambda: loaded.append(AudioLDMPipeline.from_pretrained(args.model, torch_dtype=dtype).to(args.device)))
    pipe = loaded[0]
    pipe.set_progress_bar_config(disable=True)
    emit("load", [load])
    seconds = pipe.unet.config.sample_size * pipe.vae_scale_factor * \
        float(torch.tensor(pipe.vocoder.config.upsample_rates).prod()) / pipe.vocoder.config.sampling_rate
    print(json.dumps({"name": "audio_seconds", "times": [seconds]}), flush=True)
    latents = []

    def run():
        pipe(AUDIO_PROMPT, num_inference_steps=args.steps, guidance_scale=2.5,
             generator=torch.Generator("cpu").manual_seed(0),
             callback=lambda i, t, x: latents.append(x), callback_steps=args.steps)

    emit("audio_generate", time_reps(args.reps, run))

    def text():
        for prompt in [AUDIO_PROMPT, ""]:
            ids = pipe.tokenizer(prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt")
            F.normalize(pipe.text_encoder(ids.input_ids, attention_mask=ids.attention_mask).text_embeds, dim=-1)

    emit("audio_text_encode", time_reps(args.reps, text))
    ids = pipe.tokenizer(AUDIO_PROMPT, return_tensors="pt")
    labels = F.normalize(pipe.text_encoder(ids.input_ids).text_embeds, dim=-1).repeat(2, 1)
    z = latents[-1]
    batch = torch.cat([z, z])
    t = torch.tensor([999.0], device=args.device)
    emit("audio_unet_step", time_reps(args.reps, lambda: pipe.unet(batch, t, encoder_hidden_states=None,
                                                                    class_labels=labels)))
    mel = []
    emit("audio_vae_decode", time_reps(args.reps, lambda: mel.append(pipe.decode_latents(z))))
    emit("audio_vocoder", time_reps(args.reps, lambda: pipe.mel_spectrogram_to_waveform(mel[-1])))


def step_times(pipe, args):
    """Seconds between consecutive step ends of one 512² generation (the first step is left out)."""
    ends = []

    def at_step_end(_pipe, _i, _t, kwargs):
        ends.append((time.perf_counter(), time.process_time()))
        return kwargs

    pipe(PROMPT, num_inference_steps=args.steps, width=512, height=512, output_type="latent",
         generator=torch.Generator("cpu").manual_seed(0), callback_on_step_end=at_step_end)
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(ends, ends[1:])]


def loras(pipe, args, scheduler_class):
    """Steps without LoRAs, with the first (diffusers' default: PEFT layers, unfused; then fused with
    fuse_lora), and with all of them; and the time to load and fuse each set."""
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    step_times(pipe, argparse.Namespace(steps=3))  # warm-up, as diffuse's side does
    emit("step_plain", step_times(pipe, args))
    names = [f"l{i}" for i in range(len(args.lora))]
    loaded = 0
    for label, count in (("one", 1), ("all", len(names))):
        def load():
            nonlocal loaded
            for i in range(loaded, count):
                pipe.load_lora_weights(args.lora[i], adapter_name=names[i])
            loaded = count
            pipe.set_adapters(names[:count], adapter_weights=[0.8] * count)
        emit(f"prepare_{label}", [timed(load)])
        emit(f"step_{label}", step_times(pipe, args))
        emit(f"fuse_{label}", [timed(lambda: pipe.fuse_lora(adapter_names=names[:count]))])
        emit(f"step_{label}_fused", step_times(pipe, args))
        pipe.unfuse_lora()


if __name__ == "__main__":
    main()
