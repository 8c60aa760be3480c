"""Writes a full-size Stable Diffusion 1.5-architecture pipeline with random weights, in the diffusers layout.

The configs are SD 1.5's own (UNet2DConditionModel of ~860M parameters, AutoencoderKL with 128/256/512/512
channels, CLIP ViT-L/14 text encoder, PNDM scheduler); the tokenizer is the real SD 1.x tokenizer from
tests/fixtures/tokenizer/sd1. Weights are drawn by each module's default initialisation from a fixed seed,
stored as float32 safetensors. The folder is ~4.3 GB: write it OUTSIDE the repository.

    /opt/refenv/bin/python tools/bench/make_sd15_random.py /work/bench-models/sd15-random

With --skeleton it writes only the small files (model_index.json, the configs, scheduler/ and tokenizer/, ~2 MB),
for tools/cuda/make_sd15_random.py to draw the weights on a GPU machine.
"""

import argparse
import pathlib
import sys

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

REPO = pathlib.Path(__file__).resolve().parents[2]

UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[320, 640, 1280, 1280],
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,
)

VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)

TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)

SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path, help="folder to write (outside the repository)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skeleton", action="store_true", help="write the configs and tokenizer, no weights")
    args = parser.parse_args()
    out = args.out.resolve()
    if not args.skeleton and (REPO in out.parents or out == REPO):
        sys.exit(f"error: {out} is inside the repository; weights are never committed")
    torch.manual_seed(args.seed)
    with torch.no_grad():
        unet = UNet2DConditionModel(**UNET).eval()
        vae = AutoencoderKL(**VAE).eval()
        text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT)).eval()
    tokenizer = CLIPTokenizer.from_pretrained(REPO / "tests/fixtures/tokenizer/sd1")
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler(**SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if args.skeleton:
        pipe.save_config(out)
        unet.save_config(out / "unet")
        vae.save_config(out / "vae")
        text_encoder.config.save_pretrained(out / "text_encoder")
        pipe.scheduler.save_pretrained(out / "scheduler")
        tokenizer.save_pretrained(out / "tokenizer")
        print(f"wrote the configs and tokenizer of {out}")
        return
    pipe.save_pretrained(out, safe_serialization=True)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in
              [("unet", unet), ("vae", vae), ("text_encoder", text_encoder)]}
    print(f"wrote {out}: " + ", ".join(f"{k} {v / 1e6:.1f}M parameters" for k, v in params.items()))


if __name__ == "__main__":
    main()
