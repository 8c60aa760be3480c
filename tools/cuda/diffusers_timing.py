"""Times diffusers on the GPU on the same pipeline folder, as the baseline for diffuse's CUDA rows.

For each dtype: one UNet step at batch 2 (classifier-free guidance), 512² (64² latents), as the median of synchronized
wall-clock timings after warm-up; then the whole pipeline at 1 and at 20 steps (wall clock, synchronized), whose
difference over 19 is the cost of one denoising step with everything around it (scheduler, CFG).

    python3 tools/cuda/diffusers_timing.py MODEL_DIR f32,f16
"""

import statistics
import sys
import time

import torch
from diffusers import StableDiffusionPipeline

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
PROMPT = "a photo of a cat"


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed_pipe(pipe, steps):
    sync()
    start = time.perf_counter()
    pipe(PROMPT, num_inference_steps=steps, height=512, width=512,
         generator=torch.Generator("cpu").manual_seed(42), output_type="pil")
    sync()
    return time.perf_counter() - start


def unet_step(pipe, dtype, reps=10):
    config = pipe.unet.config
    latents = torch.randn(2, config.in_channels, 64, 64, device=DEVICE, dtype=dtype)
    cond = torch.randn(2, 77, config.cross_attention_dim, device=DEVICE, dtype=dtype)
    t = torch.tensor(500, device=DEVICE)
    times = []
    with torch.no_grad():
        for i in range(reps + 3):
            sync()
            start = time.perf_counter()
            pipe.unet(latents, t, encoder_hidden_states=cond)
            sync()
            if i >= 3:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    model = sys.argv[1]
    for name in sys.argv[2].split(","):
        dtype = DTYPES[name]
        load = time.perf_counter()
        pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=dtype, safety_checker=None)
        pipe = pipe.to(DEVICE)
        pipe.set_progress_bar_config(disable=True)
        load = time.perf_counter() - load
        timed_pipe(pipe, 2)
        step = unet_step(pipe, dtype)
        t1 = timed_pipe(pipe, 1)
        t20 = timed_pipe(pipe, 20)
        print(f"diffusers {name}: load {load:.2f} s, unet_step_512_b2 {step * 1000:.1f} ms, "
              f"pipe_1_step {t1:.3f} s, pipe_20_steps {t20:.3f} s, per_step {(t20 - t1) / 19 * 1000:.1f} ms",
              flush=True)
        del pipe
        if DEVICE == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
