"""Shared paths and comparisons: the references are the repository's fixtures, written by diffusers itself
(tools/fixtures), so these tests need neither torch nor diffusers."""

import json
import pathlib

import numpy as np
import pytest
from safetensors.numpy import load_file

ROOT = pathlib.Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures"
MODELS = FIXTURES / "models"
BUNDLED = ROOT / "models" / "diffuse-tiny"

# Final latents may differ from diffusers' by float rounding accumulated over the steps (the Rust tests' bound).
LATENT_TOLERANCE = 1e-3


def cases(area):
    return json.loads((FIXTURES / area / "cases.json").read_text())


def reference(area, name):
    return load_file(str(FIXTURES / area / f"{name}.safetensors"))


def assert_latents(got, expected):
    got = np.asarray(got, dtype=np.float32)
    assert got.shape == expected.shape
    diff = float(np.abs(got - expected).max())
    assert diff <= LATENT_TOLERANCE, f"latents differ from diffusers' by {diff}"


def assert_images(images, expected):
    """PIL images against diffusers' 8-bit images: within 1/255 per channel."""
    got = np.stack([np.asarray(image) for image in images]).astype(np.int16)
    assert got.shape == expected.shape
    diff = int(np.abs(got - expected.astype(np.int16)).max())
    assert diff <= 1, f"images differ from diffusers' by {diff}/255"


@pytest.fixture(scope="session")
def torch():
    return pytest.importorskip("torch")
