"""The PyTorch side of the training benchmark: steps per second of the denoiser stage of `diffuse train`, done as
diffusers' train_text_to_image.py does it, on the networks of a pipeline folder that `diffuse train` wrote.

    python train_bench.py FOLDER [--batch 32] [--steps 60] [--threads 2] [--bf16] [--freeze-text-encoder]

Each step: random latents of the UNet's sample size, random token ids of the tokenizer's length, a timestep per
image, noise added by the folder's scheduler, v-prediction MSE, the backward pass, gradient clipping at 1,
AdamW (lr 1e-3 for the UNet, 1e-4 for the text encoder) and an EMA of the UNet (diffusers' EMAModel, decay
0.999), as `diffuse train --prediction v_prediction --min-snr-gamma 0 --text-encoder-lr 1e-4` does. diffuse's
rate is the one its progress bar prints over the same stage (its step also draws the batch's captions and
noise). `--bf16` runs the forward pass under torch.autocast(bfloat16), accelerate's `--mixed_precision bf16`.
Prints one JSON line.
"""

import argparse
import json
import os
import time

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from transformers import CLIPTextConfig, CLIPTextModel


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--freeze-text-encoder", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with open(os.path.join(args.folder, "unet", "config.json")) as f:
        unet = UNet2DConditionModel.from_config(json.load(f))
    text_config = CLIPTextConfig.from_json_file(os.path.join(args.folder, "text_encoder", "config.json"))
    text_encoder = CLIPTextModel(text_config)
    scheduler = DDPMScheduler.from_pretrained(args.folder, subfolder="scheduler")
    unet.train()
    text_encoder.train(not args.freeze_text_encoder)
    text_encoder.requires_grad_(not args.freeze_text_encoder)

    groups = [{"params": list(unet.parameters()), "lr": 1e-3}]
    if not args.freeze_text_encoder:
        groups.append({"params": list(text_encoder.parameters()), "lr": 1e-4})
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-2)
    ema = EMAModel(unet.parameters(), decay=0.999)
    trained = [p for g in groups for p in g["params"]]

    size = unet.config.sample_size
    channels = unet.config.in_channels
    length = text_config.max_position_embeddings
    vocab = text_config.vocab_size

    def step():
        latents = torch.randn(args.batch, channels, size, size)
        ids = torch.randint(0, vocab, (args.batch, length))
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,))
        noisy = scheduler.add_noise(latents, noise, t)
        target = scheduler.get_velocity(latents, noise, t)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            context = text_encoder(ids)[0]
            pred = unet(noisy, t, context).sample
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        ema.step(unet.parameters())
        return loss.item()

    for _ in range(args.warmup):
        step()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(
        json.dumps(
            {
                "folder": args.folder,
                "batch": args.batch,
                "threads": args.threads,
                "bf16": args.bf16,
                "text_encoder_trained": not args.freeze_text_encoder,
                "steps": args.steps,
                "steps_per_s": args.steps / wall,
                "cpu_s_per_step": cpu / args.steps,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
