"""The OpenVINO side of tools/bench/bench.py (optimum-intel's OVStableDiffusionPipeline): the same tasks and JSON
lines as `diffuse bench` and diffusers_runner.py, run with the OpenVINO venv's Python.

    /opt/ovenv/bin/python openvino_runner.py IR_FOLDER --task components|generate --dtype f32|bf16|int8 --reps N \
        --steps N --threads N [--save PNG]

Load (timed apart) includes compiling; a generation's pipeline is compiled for 512² (static shapes). IR_FOLDER is
the diffusers folder exported once to OpenVINO IR with f32 weights (tools/bench/bench.py makes it
with `--openvino-export`). `--dtype f32` sets INFERENCE_PRECISION_HINT f32; `--dtype bf16` leaves OpenVINO at its
default precision, which is bf16 on a CPU with AVX512-BF16 (the device's choice is printed to stderr). `--dtype int8`
expects an IR exported with `--task export --int8`: NNCF's 8-bit weight compression of every model
(`load_in_8bit=True`, as `optimum-cli export openvino --weight-format int8` does), run with the f32 precision hint.
"""

import argparse
import json
import sys
import time

import torch

PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"


def emit(name, times):
    print(json.dumps({"name": name, "times": [t[0] for t in times], "cpu": [t[1] for t in times]}), flush=True)


def timed(fn):
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def time_reps(reps, fn):
    fn()
    return [timed(fn) for _ in range(reps)]


def export(model, out, int8):
    """Exports a diffusers folder to OpenVINO IR: its weights as they are, or compressed to 8 bits (`int8`)."""
    from optimum.intel import OVStableDiffusionPipeline

    pipe = OVStableDiffusionPipeline.from_pretrained(model, export=True, compile=False, load_in_8bit=int8)
    pipe.save_pretrained(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--task", choices=["components", "generate", "export"], default="components")
    p.add_argument("--dtype", choices=["f32", "bf16", "int8"], default="f32")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--save")
    p.add_argument("--out", help="--task export: the IR folder to write")
    p.add_argument("--int8", action="store_true", help="--task export: compress the weights to 8 bits")
    p.add_argument("--size", type=int)  # accepted for bench.py's common arguments; unused
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.task == "export":
        export(args.model, args.out, args.int8)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import DPMSolverMultistepScheduler
    from optimum.intel import OVStableDiffusionPipeline

    config = {"PERFORMANCE_HINT": "LATENCY", "CACHE_DIR": ""}
    if args.threads:
        config["INFERENCE_NUM_THREADS"] = str(args.threads)
    if args.dtype in ("f32", "int8"):
        config["INFERENCE_PRECISION_HINT"] = "f32"
    loaded = []

    def load_pipeline():
        # Components run at two sizes: dynamic shapes (compiled on first use, which the warm-up takes). A
        # generation is compiled for its one static shape, as OpenVINO's guides recommend for speed.
        pipe = OVStableDiffusionPipeline.from_pretrained(args.model, ov_config=config, compile=False)
        if args.task == "generate":
            pipe.reshape(batch_size=1, height=512, width=512, num_images_per_prompt=1)
        pipe.compile()
        loaded.append(pipe)

    load = timed(load_pipeline)
    pipe = loaded[0]
    pipe.set_progress_bar_config(disable=True)
    emit("load", [load])
    precision = pipe.unet.request.get_property("INFERENCE_PRECISION_HINT")
    print(f"openvino: UNet inference precision {precision}", file=sys.stderr)
    if args.task == "components":
        components(pipe, args)
    else:
        generate(pipe, args, DPMSolverMultistepScheduler)


def components(pipe, args):
    def text():
        for prompt in [PROMPT, ""]:
            ids = pipe.tokenizer(prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            pipe.text_encoder(ids)

    emit("text_encode", time_reps(args.reps, text))
    ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    hidden = pipe.text_encoder(ids)[0]
    context = torch.cat([hidden, hidden])
    t = torch.tensor([999], dtype=torch.int64)
    for name, side in [("unet_step_512", 64), ("unet_step_256", 32)]:
        latents = torch.randn(2, 4, side, side)
        emit(name, time_reps(args.reps, lambda: pipe.unet(sample=latents, timestep=t,
                                                          encoder_hidden_states=context)))
    z = torch.randn(1, 4, 64, 64)
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


if __name__ == "__main__":
    main()
