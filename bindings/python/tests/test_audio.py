"""AudioLDMPipeline against diffusers' on the tiny AudioLDM fixture (tests/fixtures/audioldm, written by diffusers
0.42.1): waveforms and final latents for DDIM, DPM++ 2M with two waveforms, and the model's default length without
guidance; diffusers' errors for what cannot be honoured."""

import numpy as np
import pytest

import diffuse
from conftest import FIXTURES, LATENT_TOLERANCE, MODELS, cases, reference

TINY = FIXTURES / "audioldm" / "tiny"


@pytest.fixture(scope="module")
def pipe():
    return diffuse.AudioLDMPipeline.from_pretrained(TINY)


@pytest.mark.parametrize("case", cases("audioldm"), ids=lambda c: c["name"])
def test_waveforms_equal_diffusers(pipe, case):
    expected = reference("audioldm", "pipeline")
    name = case["name"]
    own = pipe.scheduler
    if case["scheduler"] != type(own).__name__:
        pipe.scheduler = getattr(diffuse, case["scheduler"]).from_config(own.config)
    finals = []
    try:
        audios = pipe(case["prompt"], negative_prompt=case["negative_prompt"] or None,
                      num_inference_steps=case["steps"], guidance_scale=case["guidance"],
                      audio_length_in_s=case["audio_length_s"], num_waveforms_per_prompt=case["waveforms"],
                      generator=diffuse.Generator("cpu").manual_seed(case["seed"]),
                      callback=lambda step, t, latents: finals.append(np.asarray(latents))).audios
    finally:
        pipe.scheduler = own
    want = expected[f"{name}.waveform"]
    assert isinstance(audios, np.ndarray) and audios.dtype == np.float32
    assert audios.shape == want.shape
    peak = float(np.abs(want).max())
    assert float(np.abs(audios - want).max()) <= 1e-3 * peak
    assert len(finals) == case["steps"]
    assert float(np.abs(finals[-1] - expected[f"{name}.latents"]).max()) <= LATENT_TOLERANCE
    assert pipe.sampling_rate == 16000


def test_bad_requests_raise_diffusers_errors(pipe):
    with pytest.raises(ValueError, match="audio_length_in_s"):
        pipe("rain", audio_length_in_s=0.0)
    with pytest.raises(ValueError, match="num_waveforms_per_prompt"):
        pipe("rain", num_waveforms_per_prompt=0)
    with pytest.raises(ValueError, match="prompt_embeds"):
        pipe("rain", prompt_embeds=np.zeros((1, 32), dtype=np.float32))
    with pytest.raises(ValueError, match="output_type"):
        pipe("rain", output_type="pil")
    with pytest.raises(ValueError, match="StableDiffusionPipeline"):
        diffuse.AudioLDMPipeline.from_pretrained(MODELS / "sd1")
