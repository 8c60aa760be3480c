"""Noise streams: ``diffuse.Generator`` (torch's CPU and CUDA generators, bit for bit) and ``torch.Generator``."""

import random
import sys

from ._native import Generator

__all__ = ["Generator"]


def noise_stream(generator):
    """The engine's generator for a pipeline call's ``generator`` argument.

    A ``diffuse.Generator`` is used as is, and its stream continues across calls as torch's does. A
    ``torch.Generator`` maps to the generator of its device seeded with its seed; it must not have been drawn
    from since ``manual_seed``, since the engine starts streams from a seed. ``None`` draws a random seed.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != 1:
            raise ValueError(
                f"a list of {len(generator)} generators: diffuse draws a batch from one generator; pass one"
            )
        generator = generator[0]
    if generator is None:
        return Generator("cpu").manual_seed(random.getrandbits(63))
    if isinstance(generator, Generator):
        return generator
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(generator, torch.Generator):
        device = generator.device.type
        if device not in ("cpu", "cuda"):
            raise ValueError(f"a torch.Generator on {device!r}: diffuse reproduces the cpu and cuda generators")
        seed = generator.initial_seed()
        if device == "cpu" and not torch.equal(generator.get_state(), torch.Generator().manual_seed(seed).get_state()):
            raise ValueError(
                "the torch.Generator has been drawn from since manual_seed; diffuse starts a stream from its "
                "seed, so call manual_seed again (or use diffuse.Generator, whose stream continues across calls)"
            )
        return Generator(device).manual_seed(seed)
    raise TypeError(f"generator must be a diffuse.Generator or a torch.Generator, not {type(generator).__name__}")
