"""diffusers' ``AudioLDMPipeline`` on the diffuse engine: text to 16 kHz audio, with diffusers' arguments and
defaults. With the same seed on a CPU generator, the waveforms are diffusers' (within 1e-3 of their peak in f32)."""

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _native
from .convert import device_name, dtype_name, from_engine_tensor, is_dtype, to_engine_tensor, torch_module
from .generators import noise_stream
from .pipelines import _check_load_args, _engine_scheduler, _one_text
from .schedulers import scheduler_from_engine

__all__ = ["AudioLDMPipeline", "AudioPipelineOutput"]


@dataclass
class AudioPipelineOutput:
    """What ``AudioLDMPipeline`` returns: ``audios``, ``[num_waveforms, samples]`` (numpy, or torch for
    ``output_type="pt"``)."""

    audios: Any

    def __getitem__(self, index):
        return (self.audios,)[index]


class AudioLDMPipeline:
    """Text-to-audio (diffusers' ``AudioLDMPipeline``: cvssp/audioldm-s-full-v2 and its siblings)."""

    def __init__(self, engine, scheduler=None):
        self._engine = engine
        self._own_scheduler = scheduler_from_engine(*engine.scheduler_config())
        self.scheduler = scheduler or self._own_scheduler
        self.sampling_rate = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, torch_dtype=None, variant=None, scheduler=None,
                        use_safetensors=None, revision=None, **kwargs):
        """Opens a diffusers folder or Hub id of an AudioLDM pipeline, in ``torch_dtype``."""
        _check_load_args(use_safetensors, kwargs)
        model = os.fspath(pretrained_model_name_or_path)
        if revision:
            model = f"{model}@{revision}"
        engine = _native.AudioPipeline.open(model, variant=variant, dtype=dtype_name(torch_dtype))
        if engine.pipeline_class != "AudioLDMPipeline":
            raise ValueError(f"{model} is a {engine.pipeline_class}, not an AudioLDMPipeline")
        return cls(engine, scheduler)

    def to(self, *args, device=None, dtype=None):
        """Moves the pipeline to a device and/or dtype; returns it."""
        for arg in args:
            if is_dtype(arg):
                dtype = arg
            else:
                device = arg
        self._engine.set_options(device=None if device is None else device_name(device),
                                 dtype=None if dtype is None else dtype_name(dtype))
        return self

    def set_progress_bar_config(self, **kwargs):
        """Accepted: diffuse shows no progress bar (use ``callback``)."""

    def load(self):
        """Reads the weights now rather than at the first call."""
        self._engine.load()
        return self

    def __call__(self, prompt=None, audio_length_in_s=None, num_inference_steps=10, guidance_scale=2.5,
                 negative_prompt=None, num_waveforms_per_prompt=1, eta=0.0, generator=None, latents=None,
                 prompt_embeds=None, negative_prompt_embeds=None, return_dict=True, callback=None,
                 callback_steps=1, cross_attention_kwargs=None, output_type="np"):
        """Generates ``num_waveforms_per_prompt`` waveforms of ``audio_length_in_s`` seconds (default: the model's)
        from ``prompt``. ``callback(step, timestep, latents)`` runs every ``callback_steps`` steps."""
        for name, value in dict(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                                cross_attention_kwargs=cross_attention_kwargs).items():
            if value is not None:
                raise ValueError(f"{name} is not supported by diffuse's AudioLDMPipeline")
        if output_type not in ("np", "pt"):
            raise ValueError(f'invalid output_type {output_type!r}: expected "np" or "pt"')
        if not isinstance(callback_steps, int) or callback_steps <= 0:
            raise ValueError(f"callback_steps has to be a positive integer but is {callback_steps!r}")
        prompt = _one_text(prompt, "prompt")
        if prompt is None:
            raise ValueError("prompt is required")
        negative_prompt = _one_text(negative_prompt, "negative_prompt") or ""

        def on_step(index, timestep, latents_now):
            if callback is not None and index % callback_steps == 0:
                torch = torch_module()
                t = torch.tensor(timestep) if torch is not None else timestep
                callback(index, t, from_engine_tensor(*latents_now))

        _, waveforms, self.sampling_rate = self._engine.generate(
            prompt=prompt,
            negative_prompt=negative_prompt,
            audio_length_s=None if audio_length_in_s is None else float(audio_length_in_s),
            steps=int(num_inference_steps),
            guidance_scale=float(guidance_scale),
            num_waveforms=int(num_waveforms_per_prompt),
            eta=float(eta),
            scheduler=None if self.scheduler is self._own_scheduler else _engine_scheduler(self.scheduler),
            latents=None if latents is None else to_engine_tensor(latents, "latents"),
            output="audio",
            generator=noise_stream(generator),
            callback=on_step,
        )
        audios = np.frombuffer(waveforms[0], dtype="<f4").reshape(waveforms[1]).copy()
        if output_type == "pt":
            torch = torch_module()
            if torch is None:
                raise ValueError('output_type="pt" needs torch; use "np" without it')
            audios = torch.from_numpy(audios)
        if not return_dict:
            return (audios,)
        return AudioPipelineOutput(audios=audios)
