"""Values across the boundary: dtypes, devices, images and tensors as diffusers users pass and expect them."""

import sys

import numpy as np
from PIL import Image

DTYPES = {"float32": "float32", "fp32": "float32", "float": "float32", "float16": "float16", "fp16": "float16",
          "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def dtype_name(dtype):
    """``torch.float16``, ``"float16"``, ``"fp16"``, ... as the engine's dtype name; ``None`` is float32."""
    if dtype is None:
        return "float32"
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"invalid torch_dtype {dtype!r}: expected float32, float16 or bfloat16")
    return DTYPES[name]


def is_dtype(value):
    """Whether a ``.to()`` argument is a dtype (``torch.float16``, ``"float16"``) rather than a device."""
    return str(value).removeprefix("torch.") in DTYPES and not str(value).startswith(("cpu", "cuda"))


def device_name(device):
    """``"cuda"``, ``torch.device("cuda", 0)``, ``0`` ... as the engine's device name."""
    if isinstance(device, int):
        return f"cuda:{device}"
    return str(device)


def torch_module():
    """torch, when the program has it; diffuse never imports it first (it is optional and slow to import)."""
    return sys.modules.get("torch")


def from_engine_tensor(data, shape, as_torch=True):
    """An engine tensor ``(f32 bytes, shape)`` as a torch tensor when torch is loaded, else a numpy array."""
    array = np.frombuffer(data, dtype="<f4").reshape(shape).copy()
    torch = torch_module()
    if as_torch and torch is not None:
        return torch.from_numpy(array)
    return array


def to_engine_tensor(value, what):
    """A torch tensor or numpy array as ``(f32 bytes, shape)``."""
    torch = torch_module()
    if torch is not None and isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float32).numpy()
    array = np.ascontiguousarray(np.asarray(value, dtype="<f4"))
    if array.ndim != 4:
        raise ValueError(f"{what}: expected 4 dimensions [batch, channels, height, width], found shape {array.shape}")
    return array.tobytes(), list(array.shape)


def to_engine_image(image, what):
    """A PIL image (or an HWC uint8 array, or a one-item list of either) as ``(width, height, RGB bytes)``."""
    if isinstance(image, (list, tuple)):
        if len(image) != 1:
            raise ValueError(f"{what}: a list of {len(image)} images; diffuse takes one")
        image = image[0]
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            raise ValueError(f"{what}: an array must be uint8 [height, width, channels], found {image.dtype} {image.shape}")
        image = Image.fromarray(image.squeeze(2) if image.shape[2] == 1 else image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"{what}: expected a PIL image or a uint8 array, not {type(image).__name__}")
    rgb = image.convert("RGB")
    return rgb.width, rgb.height, rgb.tobytes()


def images_out(latents, decoded, images, output_type):
    """The pipeline output's ``images`` for ``output_type``, as diffusers gives them."""
    if output_type == "latent":
        return from_engine_tensor(*latents)
    if output_type == "pil":
        return [Image.frombytes("RGB", (w, h), data) for w, h, data in images]
    pixels = np.clip(np.frombuffer(decoded[0], dtype="<f4").reshape(decoded[1]) / 2 + 0.5, 0, 1)
    if output_type == "np":
        return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))
    torch = torch_module()
    if torch is None:
        raise ValueError('output_type="pt" needs torch; use "np" without it')
    return torch.from_numpy(np.ascontiguousarray(pixels))


OUTPUT_TYPES = ("pil", "np", "pt", "latent")
