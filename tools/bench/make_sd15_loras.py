"""Three LoRAs for the full-size SD 1.5 model of make_sd15_random.py, shaped like those on model sites (kohya
format, fp16, random values): a rank-32 attention LoRA with text-encoder layers, a rank-16 LoCon (convolutions
and attention) and a rank-64 LoCon on every UNet layer (LCM-LoRA's size).

    python make_sd15_loras.py MODEL OUT_DIR
"""

import pathlib
import sys

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def shapes(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_slice(k).get_shape() for k in f.keys()}


ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
CONVOLUTIONS = ("conv1", "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv")
TEXT = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def lora(gen, weights, prefix, parts, rank, alpha, text_model_prefix=False):
    out = {}
    for name, shape in weights.items():
        if not name.endswith(".weight") or len(shape) not in (2, 4):
            continue
        module = name[: -len(".weight")]
        if not any(module.endswith(p) for p in parts):
            continue
        if text_model_prefix and not module.startswith("text_model."):
            module = "text_model." + module
        key = prefix + module.replace(".", "_")
        down_shape = (rank, shape[1]) + tuple(shape[2:])
        up_shape = (shape[0], rank) + ((1, 1) if len(shape) == 4 else ())
        out[f"{key}.lora_down.weight"] = (torch.randn(down_shape, generator=gen) * 0.01).half()
        out[f"{key}.lora_up.weight"] = (torch.randn(up_shape, generator=gen) * 0.01).half()
        out[f"{key}.alpha"] = torch.tensor(float(alpha)).half()
    return out


def main(model, out):
    out.mkdir(parents=True, exist_ok=True)
    unet = shapes(model / "unet" / "diffusion_pytorch_model.safetensors")
    text = shapes(model / "text_encoder" / "model.safetensors")
    gen = torch.Generator().manual_seed(0)
    files = {
        "attention_r32": {**lora(gen, unet, "lora_unet_", ATTENTION, 32, 16),
                          **lora(gen, text, "lora_te_", TEXT, 32, 16, text_model_prefix=True)},
        "locon_r16": lora(gen, unet, "lora_unet_", ATTENTION + CONVOLUTIONS, 16, 8),
        "locon_r64": lora(gen, unet, "lora_unet_", ATTENTION + CONVOLUTIONS, 64, 64),
    }
    for stem, tensors in files.items():
        path = out / f"{stem}.safetensors"
        save_file(tensors, str(path))
        params = sum(t.numel() for t in tensors.values())
        print(f"{path}: {len(tensors) // 3} layers, {params / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))
