"""Writes a full-size AudioLDM-S pipeline (cvssp/audioldm-s-full-v2's architecture) with random weights.

The configs are the published ones as tests/fixtures/audioldm/published/audioldm-s-full-v2 holds them (UNet with
128/256/384/640 channels and class-label conditioning, the 8-channel mel VAE, CLAP's 12-layer RoBERTa text tower,
the 5-stage HiFi-GAN vocoder at 16 kHz); the tokenizer is the fixtures' small RoBERTa BPE with AudioLDM's
model_max_length of 512 (the real 50,265-token vocabulary is not downloadable here; the text encoder keeps its
full embedding table). Weights are drawn by each module's default initialisation from a fixed seed, stored as
float32. ~1.5 GB: write it OUTSIDE the repository.

    /opt/refenv/bin/python tools/bench/make_audioldm_random.py /work/bench-models/audioldm-s-random
"""

import argparse
import json
import pathlib
import sys

import torch
from diffusers import AudioLDMPipeline, AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import ClapTextConfig, ClapTextModelWithProjection, RobertaTokenizer, SpeechT5HifiGan, SpeechT5HifiGanConfig

REPO = pathlib.Path(__file__).resolve().parents[2]
PUBLISHED = REPO / "tests/fixtures/audioldm/published/audioldm-s-full-v2"


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
    torch.manual_seed(args.seed)
    drop = ("architectures", "dtype", "torch_dtype", "transformers_version", "model_type")
    with torch.no_grad():
        unet = UNet2DConditionModel.from_config(published(PUBLISHED / "unet/config.json")).eval()
        vae = AutoencoderKL.from_config(published(PUBLISHED / "vae/config.json")).eval()
        text_config = {k: v for k, v in published(PUBLISHED / "text_encoder/config.json").items() if k not in drop}
        text_encoder = ClapTextModelWithProjection(ClapTextConfig(**text_config)).eval()
        vocoder_config = {k: v for k, v in published(PUBLISHED / "vocoder/config.json").items() if k not in drop}
        vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**vocoder_config)).eval()
    scheduler = DDIMScheduler.from_config(published(PUBLISHED / "scheduler/scheduler_config.json"))
    tokenizer = RobertaTokenizer.from_pretrained(REPO / "tests/fixtures/audioldm/tokenizer_vocab_merges",
                                                 model_max_length=512)
    pipe = AudioLDMPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                            scheduler=scheduler, vocoder=vocoder)
    pipe.save_pretrained(out, safe_serialization=True)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in
              [("unet", unet), ("vae", vae), ("text_encoder", text_encoder), ("vocoder", vocoder)]}
    print(f"wrote {out}: " + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in params.items()))


if __name__ == "__main__":
    main()
