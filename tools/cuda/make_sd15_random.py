"""Fills a full-size SD 1.5-architecture diffusers folder with random weights, drawing them on the GPU.

For GPU machines that cannot receive the 4.3 GB folder that tools/bench/make_sd15_random.py writes: carry only
its small files (model_index.json, the four config.json files, scheduler/ and tokenizer/) and draw the weights
where they are used. Each module gets its default initialisation from a fixed seed, in float32, and is saved
as `model.safetensors` / `diffusion_pytorch_model.safetensors` with the state_dict's own key names.

    python3 tools/cuda/make_sd15_random.py SKELETON_DIR OUT_DIR
"""

import pathlib
import shutil
import sys
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel


def save(module, path):
    tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "pt"})
    return sum(v.numel() for v in tensors.values())


def main():
    skeleton, out = map(pathlib.Path, sys.argv[1:3])
    start = time.time()
    shutil.copytree(skeleton, out, dirs_exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device), torch.no_grad():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(out / "unet"))
        n_unet = save(unet, out / "unet" / "diffusion_pytorch_model.safetensors")
        del unet
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(out / "vae"))
        n_vae = save(vae, out / "vae" / "diffusion_pytorch_model.safetensors")
        del vae
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(out / "text_encoder"))
        n_text = save(text, out / "text_encoder" / "model.safetensors")
    print(
        f"wrote {out} on {device} in {time.time() - start:.1f} s: unet {n_unet / 1e6:.1f}M, "
        f"vae {n_vae / 1e6:.1f}M, text_encoder {n_text / 1e6:.1f}M parameters"
    )


if __name__ == "__main__":
    main()
