"""diffusers' Stable Diffusion pipeline classes on the diffuse engine: the same names, arguments and defaults.

A script written for diffusers runs by changing its imports: ``from_pretrained`` / ``from_single_file``, ``.to()``,
``pipe.scheduler = X.from_config(pipe.scheduler.config)``, ``pipe(...)`` returning ``.images`` as PIL images, LoRAs
and textual inversion. With the same seed on a CPU generator, the images are diffusers' (within 1/255 in f32).
"""

import os
from dataclasses import dataclass
from typing import Any, List, Optional

from . import _native
from .convert import (OUTPUT_TYPES, device_name, dtype_name, from_engine_tensor, images_out, is_dtype,
                      to_engine_image, to_engine_tensor, torch_module)
from .generators import noise_stream
from .loaders import LoraLoaderMixin, TextualInversionLoaderMixin
from .schedulers import SchedulerMixin, scheduler_from_engine

__all__ = [
    "DiffusionPipeline",
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionPipelineOutput",
    "AutoencoderTiny",
]

# Keyword arguments of diffusers' from_pretrained that change nothing here: diffuse never runs a safety checker
# (diffusers' NSFW filter), reads safetensors only, and loads weights lazily anyway.
_IGNORED_LOAD_ARGS = {"safety_checker", "feature_extractor", "requires_safety_checker", "low_cpu_mem_usage",
                      "image_encoder", "add_watermarker"}


class AutoencoderTiny:
    """TAESD, diffusers' ``AutoencoderTiny``: ``pipe.vae = AutoencoderTiny.from_pretrained("madebyollin/taesd")``
    decodes with it instead of the VAE (faster, a little less detail), as in diffusers."""

    def __init__(self, spec):
        self._spec = spec

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, torch_dtype=None, **kwargs):
        """A TAESD folder or Hub id (its weights follow the pipeline's dtype and device)."""
        unknown = set(kwargs) - {"use_safetensors", "variant"}
        if unknown:
            raise TypeError(f"AutoencoderTiny.from_pretrained: unsupported arguments {sorted(unknown)}")
        if torch_dtype is not None:
            dtype_name(torch_dtype)
        return cls(os.fspath(pretrained_model_name_or_path))

    def __repr__(self):
        return f"AutoencoderTiny({self._spec!r})"


@dataclass
class StableDiffusionPipelineOutput:
    """What a pipeline call returns: ``images`` (PIL images, or an array/tensor for other output types) and
    ``nsfw_content_detected`` (always None: diffuse runs no safety checker)."""

    images: Any
    nsfw_content_detected: Optional[List[bool]] = None

    def __getitem__(self, index):
        return (self.images, self.nsfw_content_detected)[index]


class DiffusionPipeline(LoraLoaderMixin, TextualInversionLoaderMixin):
    """A loaded model: the shared parts of the pipeline classes. Weights are read at the first call."""

    def __init__(self, engine, scheduler=None):
        self._engine = engine
        self._own_scheduler = scheduler_from_engine(*engine.scheduler_config())
        self.scheduler = scheduler or self._own_scheduler
        self._interrupt = False
        LoraLoaderMixin.__init__(self)
        TextualInversionLoaderMixin.__init__(self)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, torch_dtype=None, variant=None, scheduler=None,
                        use_safetensors=None, revision=None, quantize=None, **kwargs):
        """Opens a diffusers folder or Hub id (``org/name``; downloaded into the Hugging Face cache, or read from it
        offline with ``HF_HUB_OFFLINE=1``), in ``torch_dtype`` (a torch dtype, or its name without torch).
        ``quantize="int8"`` (diffuse's own, CPUs with AVX512-VNNI, float32 only) runs the UNet's large linear layers
        and convolutions with int8 weights and activations: faster, images close to but not equal to float32's."""
        _check_load_args(use_safetensors, kwargs)
        model = os.fspath(pretrained_model_name_or_path)
        if revision:
            model = f"{model}@{revision}"
        engine = _native.Pipeline.open(model, variant=variant, dtype=dtype_name(torch_dtype), quantize=quantize)
        return cls(engine, scheduler)

    @classmethod
    def from_single_file(cls, pretrained_model_link_or_path, *, torch_dtype=None, config=None, scheduler=None,
                         use_safetensors=None, quantize=None, **kwargs):
        """Opens one ``.safetensors`` checkpoint (CompVis/AUTOMATIC1111 layout: SD 1.x, 2.x, XL); its configs are
        built in, or taken from ``config`` (a folder or Hub id). Pickles (``.ckpt``) are refused."""
        _check_load_args(use_safetensors, kwargs)
        path = os.fspath(pretrained_model_link_or_path)
        engine = _native.Pipeline.open(path, config=config, dtype=dtype_name(torch_dtype), quantize=quantize)
        return cls(engine, scheduler)

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """This class on the same loaded model as ``pipeline`` (no second copy of the weights)."""
        if kwargs:
            raise TypeError(f"from_pipe: unsupported arguments {sorted(kwargs)}")
        new = cls(pipeline._engine, pipeline.scheduler)
        # diffusers' from_pipe shares the components: their LoRAs, embeddings and decoder come along.
        new._copy_adapters_from(pipeline)
        new._embeddings_loaded = list(pipeline._embeddings_loaded)
        new._tiny_vae = pipeline.vae
        return new

    def to(self, *args, device=None, dtype=None):
        """Moves the pipeline to a device (``"cpu"``, ``"cuda"``, ``torch.device``) and/or dtype; returns it."""
        for arg in args:
            if is_dtype(arg):
                dtype = arg
            else:
                device = arg
        self._engine.set_options(device=None if device is None else device_name(device),
                                 dtype=None if dtype is None else dtype_name(dtype))
        return self

    @property
    def vae(self):
        """The ``AutoencoderTiny`` set as the decoder (``pipe.vae = AutoencoderTiny.from_pretrained(...)``), if any;
        the model's own VAE lives inside the engine."""
        return getattr(self, "_tiny_vae", None)

    @vae.setter
    def vae(self, value):
        if value is not None and not isinstance(value, AutoencoderTiny):
            raise TypeError(f"pipe.vae takes a diffuse.AutoencoderTiny (TAESD) or None, not {type(value).__name__}")
        self._engine.set_tiny_decoder(None if value is None else value._spec)
        self._tiny_vae = value

    @property
    def device(self):
        """The device, as a ``torch.device`` when torch is loaded."""
        torch = torch_module()
        return torch.device(self._engine.device) if torch is not None else self._engine.device

    @property
    def dtype(self):
        """The compute dtype, as a torch dtype when torch is loaded."""
        torch = torch_module()
        return getattr(torch, self._engine.dtype) if torch is not None else self._engine.dtype

    @property
    def interrupt(self):
        """Set ``pipe._interrupt = True`` in ``callback_on_step_end`` to end the generation after this step."""
        return self._interrupt

    # Accepted for compatibility. diffuse's CPU attention is flash-style (score blocks of bounded size, never the
    # whole matrix); in diffusers these switches lower memory and change no image either.
    def enable_xformers_memory_efficient_attention(self, attention_op=None):
        """Accepted: diffuse's attention is always memory-efficient."""

    def disable_xformers_memory_efficient_attention(self):
        """Accepted: diffuse's attention is always memory-efficient."""

    def enable_attention_slicing(self, slice_size="auto"):
        """Accepted: diffuse's attention is always memory-efficient."""

    def disable_attention_slicing(self):
        """Accepted: diffuse's attention is always memory-efficient."""

    def enable_vae_slicing(self):
        """Accepted: changes no image."""

    def disable_vae_slicing(self):
        """Accepted: changes no image."""

    def set_progress_bar_config(self, **kwargs):
        """Accepted: diffuse shows no progress bar (use ``callback_on_step_end``)."""

    def load(self):
        """Reads the weights now rather than at the first call."""
        self._engine.load()
        return self

    def _run(self, *, prompt, negative_prompt, num_inference_steps, guidance_scale, guidance_rescale, clip_skip,
             width, height, num_images_per_prompt, eta, generator, latents, image, mask_image, strength,
             output_type, return_dict, cross_attention_kwargs, callback_on_step_end,
             callback_on_step_end_tensor_inputs, prompt_syntax, unsupported):
        for name, value in unsupported.items():
            if value is not None:
                raise ValueError(f"{name} is not supported by diffuse's {type(self).__name__}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"invalid output_type {output_type!r}: expected one of {', '.join(OUTPUT_TYPES)}")
        prompt = _one_text(prompt, "prompt")
        if prompt is None:
            raise ValueError("prompt is required")
        negative_prompt = _one_text(negative_prompt, "negative_prompt") or ""
        lora_scale = 1.0
        if cross_attention_kwargs:
            unknown = set(cross_attention_kwargs) - {"scale"}
            if unknown:
                raise ValueError(f"cross_attention_kwargs: only 'scale' (the LoRA scale) is supported, not {sorted(unknown)}")
            lora_scale = float(cross_attention_kwargs.get("scale", 1.0))
        inputs = list(callback_on_step_end_tensor_inputs or [])
        if set(inputs) - {"latents"}:
            raise ValueError(f"callback_on_step_end_tensor_inputs: only 'latents' is available, not {inputs}")

        self._interrupt = False
        on_step = None
        if callback_on_step_end is not None:
            def on_step(index, timestep, latents_now):
                tensor = from_engine_tensor(*latents_now)
                torch = torch_module()
                t = torch.tensor(timestep) if torch is not None else timestep
                given = {"latents": tensor} if "latents" in inputs else {}
                returned = callback_on_step_end(self, index, t, dict(given))
                if isinstance(returned, dict) and "latents" in returned and returned["latents"] is not tensor:
                    raise ValueError("callback_on_step_end returned changed latents; diffuse's callbacks observe "
                                     "the latents and cannot replace them")
                return self._interrupt
        else:
            def on_step(index, timestep, latents_now):
                return self._interrupt

        latents_out, decoded, images = self._engine.generate(
            prompt=prompt,
            negative_prompt=negative_prompt,
            steps=int(num_inference_steps),
            guidance_scale=float(guidance_scale),
            guidance_rescale=float(guidance_rescale),
            clip_skip=clip_skip,
            width=width,
            height=height,
            num_images=int(num_images_per_prompt),
            eta=float(eta),
            scheduler=None if self.scheduler is self._own_scheduler else _engine_scheduler(self.scheduler),
            image=None if image is None else to_engine_image(image, "image"),
            mask=None if mask_image is None else to_engine_image(mask_image, "mask_image"),
            strength=float(strength),
            latents=None if latents is None else to_engine_tensor(latents, "latents"),
            prompt_syntax=prompt_syntax,
            loras=self._active_loras(lora_scale),
            embeddings=self._embeddings(),
            output="latent" if output_type == "latent" else "images",
            generator=noise_stream(generator),
            callback=on_step,
        )
        result = images_out(latents_out, decoded, images, output_type)
        if not return_dict:
            return (result, None)
        return StableDiffusionPipelineOutput(images=result)


class StableDiffusionPipeline(DiffusionPipeline):
    """Text-to-image (diffusers' ``StableDiffusionPipeline``; SD 1.x and 2.x, LCM-distilled UNets too)."""

    def __call__(self, prompt=None, height=None, width=None, num_inference_steps=50, timesteps=None, sigmas=None,
                 guidance_scale=7.5, negative_prompt=None, num_images_per_prompt=1, eta=0.0, generator=None,
                 latents=None, prompt_embeds=None, negative_prompt_embeds=None, ip_adapter_image=None,
                 ip_adapter_image_embeds=None, output_type="pil", return_dict=True, cross_attention_kwargs=None,
                 guidance_rescale=0.0, clip_skip=None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",), prompt_syntax="plain"):
        """Generates images from ``prompt``. ``prompt_syntax="a1111"`` reads AUTOMATIC1111's prompt syntax
        (weights, ``BREAK``, ``<lora:…>`` tags, any length); the default reads the prompt as diffusers does."""
        return self._run(prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
                         guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, clip_skip=clip_skip,
                         width=width, height=height, num_images_per_prompt=num_images_per_prompt, eta=eta,
                         generator=generator, latents=latents, image=None, mask_image=None, strength=1.0,
                         output_type=output_type, return_dict=return_dict,
                         cross_attention_kwargs=cross_attention_kwargs, callback_on_step_end=callback_on_step_end,
                         callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                         prompt_syntax=prompt_syntax,
                         unsupported=dict(timesteps=timesteps, sigmas=sigmas, prompt_embeds=prompt_embeds,
                                          negative_prompt_embeds=negative_prompt_embeds,
                                          ip_adapter_image=ip_adapter_image,
                                          ip_adapter_image_embeds=ip_adapter_image_embeds))


class StableDiffusionImg2ImgPipeline(DiffusionPipeline):
    """Image-to-image (diffusers' ``StableDiffusionImg2ImgPipeline``)."""

    def __call__(self, prompt=None, image=None, strength=0.8, num_inference_steps=50, timesteps=None, sigmas=None,
                 guidance_scale=7.5, negative_prompt=None, num_images_per_prompt=1, eta=0.0, generator=None,
                 prompt_embeds=None, negative_prompt_embeds=None, ip_adapter_image=None,
                 ip_adapter_image_embeds=None, output_type="pil", return_dict=True, cross_attention_kwargs=None,
                 clip_skip=None, callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",),
                 prompt_syntax="plain"):
        """Redraws ``image`` (a PIL image) after ``prompt``; ``strength`` is how much of the schedule runs."""
        if image is None:
            raise ValueError("image is required: the image to start from")
        return self._run(prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
                         guidance_scale=guidance_scale, guidance_rescale=0.0, clip_skip=clip_skip, width=None,
                         height=None, num_images_per_prompt=num_images_per_prompt, eta=eta, generator=generator,
                         latents=None, image=image, mask_image=None, strength=strength, output_type=output_type,
                         return_dict=return_dict, cross_attention_kwargs=cross_attention_kwargs,
                         callback_on_step_end=callback_on_step_end,
                         callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                         prompt_syntax=prompt_syntax,
                         unsupported=dict(timesteps=timesteps, sigmas=sigmas, prompt_embeds=prompt_embeds,
                                          negative_prompt_embeds=negative_prompt_embeds,
                                          ip_adapter_image=ip_adapter_image,
                                          ip_adapter_image_embeds=ip_adapter_image_embeds))


class StableDiffusionInpaintPipeline(DiffusionPipeline):
    """Inpainting (diffusers' ``StableDiffusionInpaintPipeline``): 9-channel inpainting UNets, and any other UNet
    by blending the kept area back after each step. White in ``mask_image`` is repainted."""

    def __call__(self, prompt=None, image=None, mask_image=None, masked_image_latents=None, height=None, width=None,
                 padding_mask_crop=None, strength=1.0, num_inference_steps=50, timesteps=None, sigmas=None,
                 guidance_scale=7.5, negative_prompt=None, num_images_per_prompt=1, eta=0.0, generator=None,
                 latents=None, prompt_embeds=None, negative_prompt_embeds=None, ip_adapter_image=None,
                 ip_adapter_image_embeds=None, output_type="pil", return_dict=True, cross_attention_kwargs=None,
                 clip_skip=None, callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",),
                 prompt_syntax="plain"):
        """Repaints the white area of ``mask_image`` in ``image`` after ``prompt``."""
        if image is None or mask_image is None:
            raise ValueError("image and mask_image are required")
        return self._run(prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
                         guidance_scale=guidance_scale, guidance_rescale=0.0, clip_skip=clip_skip, width=width,
                         height=height, num_images_per_prompt=num_images_per_prompt, eta=eta, generator=generator,
                         latents=latents, image=image, mask_image=mask_image, strength=strength,
                         output_type=output_type, return_dict=return_dict,
                         cross_attention_kwargs=cross_attention_kwargs, callback_on_step_end=callback_on_step_end,
                         callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                         prompt_syntax=prompt_syntax,
                         unsupported=dict(masked_image_latents=masked_image_latents,
                                          padding_mask_crop=padding_mask_crop, timesteps=timesteps,
                                          sigmas=sigmas, prompt_embeds=prompt_embeds,
                                          negative_prompt_embeds=negative_prompt_embeds,
                                          ip_adapter_image=ip_adapter_image,
                                          ip_adapter_image_embeds=ip_adapter_image_embeds))


class StableDiffusionXLPipeline(DiffusionPipeline):
    """SDXL text-to-image (diffusers' ``StableDiffusionXLPipeline``): both text encoders read ``prompt``."""

    def __call__(self, prompt=None, prompt_2=None, height=None, width=None, num_inference_steps=50,
                 timesteps=None, sigmas=None, denoising_end=None, guidance_scale=5.0, negative_prompt=None,
                 negative_prompt_2=None, num_images_per_prompt=1, eta=0.0, generator=None, latents=None,
                 prompt_embeds=None, negative_prompt_embeds=None, pooled_prompt_embeds=None,
                 negative_pooled_prompt_embeds=None, ip_adapter_image=None, ip_adapter_image_embeds=None,
                 output_type="pil", return_dict=True, cross_attention_kwargs=None, guidance_rescale=0.0,
                 original_size=None, crops_coords_top_left=(0, 0), target_size=None, negative_original_size=None,
                 negative_crops_coords_top_left=(0, 0), negative_target_size=None, clip_skip=None,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",), prompt_syntax="plain"):
        """Generates images from ``prompt`` with an SDXL model."""
        _same_text(prompt, prompt_2, "prompt_2")
        _same_text(negative_prompt, negative_prompt_2, "negative_prompt_2")
        _default_crops(crops_coords_top_left, negative_crops_coords_top_left)
        return self._run(prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
                         guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, clip_skip=clip_skip,
                         width=width, height=height, num_images_per_prompt=num_images_per_prompt, eta=eta,
                         generator=generator, latents=latents, image=None, mask_image=None, strength=1.0,
                         output_type=output_type, return_dict=return_dict,
                         cross_attention_kwargs=cross_attention_kwargs, callback_on_step_end=callback_on_step_end,
                         callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                         prompt_syntax=prompt_syntax,
                         unsupported=dict(timesteps=timesteps, sigmas=sigmas, denoising_end=denoising_end,
                                          prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                                          pooled_prompt_embeds=pooled_prompt_embeds,
                                          negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                                          ip_adapter_image=ip_adapter_image,
                                          ip_adapter_image_embeds=ip_adapter_image_embeds,
                                          original_size=original_size, target_size=target_size,
                                          negative_original_size=negative_original_size,
                                          negative_target_size=negative_target_size))


class StableDiffusionXLImg2ImgPipeline(DiffusionPipeline):
    """SDXL image-to-image and the SDXL refiner (diffusers' ``StableDiffusionXLImg2ImgPipeline``)."""

    def __call__(self, prompt=None, prompt_2=None, image=None, strength=0.3, num_inference_steps=50,
                 timesteps=None, sigmas=None, denoising_start=None, denoising_end=None, guidance_scale=5.0,
                 negative_prompt=None, negative_prompt_2=None, num_images_per_prompt=1, eta=0.0, generator=None,
                 latents=None, prompt_embeds=None, negative_prompt_embeds=None, pooled_prompt_embeds=None,
                 negative_pooled_prompt_embeds=None, ip_adapter_image=None, ip_adapter_image_embeds=None,
                 output_type="pil", return_dict=True, cross_attention_kwargs=None, guidance_rescale=0.0,
                 original_size=None, crops_coords_top_left=(0, 0), target_size=None, negative_original_size=None,
                 negative_crops_coords_top_left=(0, 0), negative_target_size=None, aesthetic_score=6.0,
                 negative_aesthetic_score=2.5, clip_skip=None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",), prompt_syntax="plain"):
        """Redraws ``image`` after ``prompt`` with an SDXL model (or refiner)."""
        if image is None:
            raise ValueError("image is required: the image to start from")
        _same_text(prompt, prompt_2, "prompt_2")
        _same_text(negative_prompt, negative_prompt_2, "negative_prompt_2")
        _default_crops(crops_coords_top_left, negative_crops_coords_top_left)
        if (aesthetic_score, negative_aesthetic_score) != (6.0, 2.5):
            raise ValueError("aesthetic_score and negative_aesthetic_score: diffuse uses the defaults 6.0 and 2.5")
        return self._run(prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
                         guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, clip_skip=clip_skip,
                         width=None, height=None, num_images_per_prompt=num_images_per_prompt, eta=eta,
                         generator=generator, latents=None, image=image, mask_image=None, strength=strength,
                         output_type=output_type, return_dict=return_dict,
                         cross_attention_kwargs=cross_attention_kwargs, callback_on_step_end=callback_on_step_end,
                         callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                         prompt_syntax=prompt_syntax,
                         unsupported=dict(latents=latents, timesteps=timesteps, sigmas=sigmas,
                                          denoising_start=denoising_start, denoising_end=denoising_end,
                                          prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                                          pooled_prompt_embeds=pooled_prompt_embeds,
                                          negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                                          ip_adapter_image=ip_adapter_image,
                                          ip_adapter_image_embeds=ip_adapter_image_embeds,
                                          original_size=original_size, target_size=target_size,
                                          negative_original_size=negative_original_size,
                                          negative_target_size=negative_target_size))


def _check_load_args(use_safetensors, kwargs):
    if use_safetensors is False:
        raise ValueError("use_safetensors=False: diffuse reads safetensors only and never unpickles")
    unknown = set(kwargs) - _IGNORED_LOAD_ARGS
    if unknown:
        raise TypeError(f"unsupported loading arguments: {', '.join(sorted(unknown))}")


def _one_text(value, name):
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"{name}: a batch of {len(value)} prompts; diffuse draws num_images_per_prompt images "
                             f"of one prompt per call")
        return value[0]
    return value


def _same_text(first, second, name):
    if second is not None and _one_text(second, name) != _one_text(first, name):
        raise ValueError(f"{name}: diffuse gives both SDXL text encoders the same text; leave {name} unset")


def _default_crops(*crops):
    if any(tuple(c) != (0, 0) for c in crops):
        raise ValueError("crops_coords_top_left: diffuse conditions on (0, 0), diffusers' default")


def _engine_scheduler(scheduler):
    if not isinstance(scheduler, SchedulerMixin):
        raise TypeError(f"pipe.scheduler must be a diffuse scheduler (e.g. DPMSolverMultistepScheduler.from_config("
                        f"pipe.scheduler.config)), not {type(scheduler).__name__}")
    return scheduler._engine_config()
