"""LoRAs and textual-inversion embeddings with diffusers' methods: ``load_lora_weights``, ``set_adapters``,
``fuse_lora``, ``load_textual_inversion``. The engine merges the active LoRAs into its own copy of the changed layers
per generation (the loaded weights are never modified), reading kohya/A1111, diffusers/PEFT, LoCon, LoHa and LoKr
files."""

import os

_DEFAULT_LORA_FILE = "pytorch_lora_weights.safetensors"
_DEFAULT_EMBEDDING_FILE = "learned_embeds.safetensors"


def _local_file(path_or_folder, weight_name, default, what):
    if isinstance(path_or_folder, dict):
        raise ValueError(f"{what}: a state dict; diffuse reads {what} files (save it with safetensors first)")
    path = os.fspath(path_or_folder)
    if os.path.isdir(path):
        path = os.path.join(path, weight_name or default)
    elif weight_name and not os.path.isfile(path):
        path = os.path.join(path, weight_name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: no such {what} file (diffuse reads local files: huggingface_hub.hf_hub_download(repo_id, "
            f"filename) fetches one from the Hub)"
        )
    return path


class LoraLoaderMixin:
    """diffusers' LoRA methods. Adapters are named (``default_0``, ``default_1``, ... when unnamed); the last
    loaded one is active with weight 1 until ``set_adapters`` chooses."""

    def __init__(self):
        self._adapters = {}  # name -> file
        self._active = {}  # name -> (text encoder weight, unet weight)
        self._fused = []  # (file, text encoder weight, unet weight)
        self._lora_enabled = True

    def _copy_adapters_from(self, other):
        self._adapters = dict(other._adapters)
        self._active = dict(other._active)
        self._fused = list(other._fused)
        self._lora_enabled = other._lora_enabled

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name=None, weight_name=None,
                          **kwargs):
        """Loads a LoRA file (or a folder's ``weight_name``, by default ``pytorch_lora_weights.safetensors``) as
        ``adapter_name`` and makes it the active adapter, as diffusers does."""
        unknown = set(kwargs) - {"use_safetensors", "low_cpu_mem_usage", "hotswap"}
        if unknown:
            raise TypeError(f"load_lora_weights: unsupported arguments {sorted(unknown)}")
        path = _local_file(pretrained_model_name_or_path_or_dict, weight_name, _DEFAULT_LORA_FILE, "LoRA")
        if adapter_name is None:
            adapter_name = f"default_{len(self._adapters)}"
        if adapter_name in self._adapters:
            raise ValueError(f"adapter name {adapter_name!r} is already in use; choose another adapter_name")
        self._adapters[adapter_name] = path
        self._active = {adapter_name: (1.0, 1.0)}

    def set_adapters(self, adapter_names, adapter_weights=None):
        """Makes ``adapter_names`` the active adapters, with ``adapter_weights`` (one number each, or a dict
        ``{"text_encoder": w, "unet": w}`` for separate weights; 1.0 by default)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if adapter_weights is None:
            adapter_weights = [1.0] * len(names)
        elif not isinstance(adapter_weights, (list, tuple)):
            adapter_weights = [adapter_weights] * len(names)
        if len(adapter_weights) != len(names):
            raise ValueError(f"{len(names)} adapters and {len(adapter_weights)} weights")
        active = {}
        for name, weight in zip(names, adapter_weights):
            if name not in self._adapters:
                raise ValueError(f"adapter {name!r} is not loaded; loaded: {sorted(self._adapters)}")
            active[name] = _weights(weight)
        self._active = active

    def get_active_adapters(self):
        """The active adapters' names."""
        return list(self._active)

    def get_list_adapters(self):
        """The loaded adapters by component, as diffusers lists them."""
        names = list(self._adapters)
        return {"text_encoder": names, "unet": names}

    def delete_adapters(self, adapter_names):
        """Forgets the named adapters."""
        for name in [adapter_names] if isinstance(adapter_names, str) else adapter_names:
            self._adapters.pop(name, None)
            self._active.pop(name, None)

    def disable_lora(self):
        """Generates without the (unfused) adapters until ``enable_lora``."""
        self._lora_enabled = False

    def enable_lora(self):
        """Uses the active adapters again."""
        self._lora_enabled = True

    def unload_lora_weights(self):
        """Forgets every unfused adapter (fused ones stay, as in diffusers)."""
        self._adapters = {}
        self._active = {}

    def fuse_lora(self, components=("text_encoder", "unet"), lora_scale=1.0, safe_fusing=False, adapter_names=None):
        """Makes the active adapters (or ``adapter_names``) part of the model, times ``lora_scale``."""
        names = self._active if adapter_names is None else {n: self._active.get(n, (1.0, 1.0)) for n in adapter_names}
        comps = set(components)
        for name, (te, unet) in names.items():
            if name not in self._adapters:
                raise ValueError(f"adapter {name!r} is not loaded")
            self._fused.append((self._adapters[name], te * lora_scale if "text_encoder" in comps else 0.0,
                                unet * lora_scale if "unet" in comps else 0.0))
        for name in list(names):
            self._active.pop(name, None)

    def unfuse_lora(self, components=("text_encoder", "unet")):
        """Takes fused adapters out of the model again."""
        self._fused = []

    def _active_loras(self, scale):
        """``(file, text encoder weight, unet weight)`` of every LoRA the next generation applies."""
        loras = list(self._fused)
        if self._lora_enabled:
            loras += [(self._adapters[n], te * scale, unet * scale) for n, (te, unet) in self._active.items()]
        return loras


def _weights(weight):
    if isinstance(weight, dict):
        unknown = set(weight) - {"text_encoder", "text_encoder_2", "unet"}
        if unknown:
            raise ValueError(f"adapter weights by component: text_encoder and unet only, not {sorted(unknown)}")
        te = weight.get("text_encoder", weight.get("text_encoder_2", 1.0))
        unet = weight.get("unet", 1.0)
        if isinstance(unet, dict):
            raise ValueError("per-block UNet adapter weights are not supported; give one number")
        return float(te), float(unet)
    return float(weight), float(weight)


class TextualInversionLoaderMixin:
    """diffusers' ``load_textual_inversion``: A1111 and diffusers embedding files (SDXL's ``clip_l``/``clip_g``
    too), each token usable in prompts afterwards."""

    def __init__(self):
        self._embeddings_loaded = []  # (file, token or None)

    def load_textual_inversion(self, pretrained_model_name_or_path, token=None, weight_name=None, **kwargs):
        """Loads one embedding file (or a list of them, with a list of tokens). ``token`` defaults to the file's
        stored token, or its file name."""
        unknown = set(kwargs) - {"use_safetensors", "tokenizer", "text_encoder"}
        if unknown:
            raise TypeError(f"load_textual_inversion: unsupported arguments {sorted(unknown)}")
        paths = pretrained_model_name_or_path
        if not isinstance(paths, (list, tuple)):
            paths = [paths]
        tokens = token if isinstance(token, (list, tuple)) else [token] * len(paths)
        if len(tokens) != len(paths):
            raise ValueError(f"{len(paths)} embeddings and {len(tokens)} tokens")
        for path, tok in zip(paths, tokens):
            file = _local_file(path, weight_name, _DEFAULT_EMBEDDING_FILE, "textual-inversion")
            if any(tok is not None and tok == t for _, t in self._embeddings_loaded):
                raise ValueError(f"token {tok!r} is already in the tokenizer")
            self._embeddings_loaded.append((file, tok))

    def unload_textual_inversion(self, tokens=None):
        """Forgets the loaded embeddings (those of ``tokens``, or all)."""
        if tokens is None:
            self._embeddings_loaded = []
        else:
            drop = {tokens} if isinstance(tokens, str) else set(tokens)
            self._embeddings_loaded = [(f, t) for f, t in self._embeddings_loaded if t not in drop]

    def _embeddings(self):
        return list(self._embeddings_loaded)
