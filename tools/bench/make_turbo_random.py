"""Writes a full-size SD-Turbo-architecture pipeline with random weights, and a full-size random TAESD beside it.

SD-Turbo is SD 2.1's architecture (UNet2DConditionModel with 1024-wide cross-attention and linear projections, the
23-layer OpenCLIP ViT-H/14 text encoder, the SD VAE) distilled to run in 1 to 4 steps without guidance; its
scheduler is EulerDiscreteScheduler with trailing timesteps. The UNet and text encoder configs are the published
SD 2 ones (tools/fixtures/published/stabilityai/stable-diffusion-2-inpainting, with 4 input channels), the VAE and
scheduler as in make_sd15_random.py; TAESD (diffusers' AutoencoderTiny) at its published default config. Weights
are drawn by each module's default initialisation from a fixed seed, stored as float32. ~5.2 GB: write it OUTSIDE
the repository.

    /opt/refenv/bin/python tools/bench/make_turbo_random.py /work/bench-models/sd-turbo-random
    # writes /work/bench-models/sd-turbo-random and /work/bench-models/sd-turbo-random-taesd
"""

import argparse
import json
import pathlib
import sys

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

REPO = pathlib.Path(__file__).resolve().parents[2]
SD2 = REPO / "tools/fixtures/published/stabilityai/stable-diffusion-2-inpainting"
sys.path.insert(0, str(REPO / "tools/bench"))
from make_sd15_random import SCHEDULER, VAE  # noqa: E402


def published(path):
    config = json.loads(path.read_text())
    return {k: v for k, v in config.items() if not k.startswith("_")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path, help="folder to write (outside the repository)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = args.out.resolve()
    if REPO in out.parents or out == REPO:
        sys.exit(f"error: {out} is inside the repository; weights are never committed")
    unet_config = {**published(SD2 / "unet/config.json"), "in_channels": 4}
    text_config = {k: v for k, v in published(SD2 / "text_encoder/config.json").items()
                   if k not in ("architectures", "torch_dtype", "transformers_version")}
    torch.manual_seed(args.seed)
    with torch.no_grad():
        unet = UNet2DConditionModel.from_config(unet_config).eval()
        vae = AutoencoderKL(**VAE).eval()
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config)).eval()
        taesd = AutoencoderTiny().eval()
    scheduler = {k: v for k, v in SCHEDULER.items() if k not in ("skip_prk_steps", "set_alpha_to_one")}
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(REPO / "tests/fixtures/tokenizer/sd2"),
        unet=unet, scheduler=EulerDiscreteScheduler(**scheduler, timestep_spacing="trailing"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    taesd.save_pretrained(out.parent / f"{out.name}-taesd")
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in
              [("unet", unet), ("vae", vae), ("text_encoder", text_encoder), ("taesd decoder", taesd.decoder)]}
    print(f"wrote {out}: " + ", ".join(f"{k} {v / 1e6:.1f}M parameters" for k, v in params.items()))


if __name__ == "__main__":
    main()
