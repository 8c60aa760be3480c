"""diffuse: Stable Diffusion on the diffuse engine (Rust), with diffusers' pipeline classes, arguments and defaults.

A diffusers script runs by changing its imports::

    from diffuse import StableDiffusionPipeline, DPMSolverMultistepScheduler, Generator

    pipe = StableDiffusionPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    image = pipe("a photo of an astronaut", num_inference_steps=20,
                 generator=Generator("cpu").manual_seed(42)).images[0]

``Generator("cpu")`` and ``Generator("cuda")`` reproduce torch's CPU and CUDA generators bit for bit on any
device; a ``torch.Generator`` is accepted too. torch is optional.
"""

from . import schedulers
from .audio import AudioLDMPipeline, AudioPipelineOutput
from .generators import Generator
from .pipelines import (AutoencoderTiny, DiffusionPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline,
                        StableDiffusionPipeline, StableDiffusionPipelineOutput, StableDiffusionXLImg2ImgPipeline,
                        StableDiffusionXLPipeline)
from .schedulers import *  # noqa: F401,F403 (every scheduler class by its diffusers name)
from .schedulers import SCHEDULER_CLASSES, SchedulerMixin

__all__ = ["AudioLDMPipeline", "AudioPipelineOutput", "AutoencoderTiny", "Generator", "DiffusionPipeline", "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline",
           "StableDiffusionInpaintPipeline", "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
           "StableDiffusionPipelineOutput", "SchedulerMixin", *sorted(SCHEDULER_CLASSES)]
