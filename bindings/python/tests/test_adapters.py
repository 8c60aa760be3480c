"""LoRAs and textual inversion through diffusers' methods, against the diffusers references of
tests/fixtures/loras and tests/fixtures/embeddings; each case is also shown to move the output."""

import re

import numpy as np
import pytest

import diffuse
from conftest import FIXTURES, MODELS, assert_latents, cases, reference

LORA_CASES = cases("loras")
EMBEDDING_CASES = cases("embeddings")


def pipeline(case):
    cls = diffuse.StableDiffusionXLPipeline if case["model"] == "sdxl" else diffuse.StableDiffusionPipeline
    pipe = cls.from_pretrained(MODELS / case["model"])
    if case["scheduler"] == "LCMScheduler":
        pipe.scheduler = diffuse.LCMScheduler.from_config(pipe.scheduler.config)
    return pipe


def latents(pipe, case, prompt):
    return pipe(prompt=prompt, negative_prompt=case["negative_prompt"] or None, num_inference_steps=case["steps"],
                guidance_scale=case["guidance"], generator=diffuse.Generator("cpu").manual_seed(case["seed"]),
                output_type="latent").images


@pytest.mark.parametrize("case", LORA_CASES, ids=[c["name"] for c in LORA_CASES])
def test_lora_equals_diffusers(case):
    pipe = pipeline(case)
    prompt = re.sub(r"<lora:[^>]*>", "", case["prompt"]).strip()
    plain = latents(pipe, case, prompt)
    names, weights = [], []
    for i, lora in enumerate(case["loras"]):
        pipe.load_lora_weights(FIXTURES / "loras" / "files", weight_name=f"{lora['name']}.safetensors",
                               adapter_name=f"a{i}")
        names.append(f"a{i}")
        te, unet = lora["text_encoder_weight"], lora["unet_weight"]
        weights.append(te if te == unet else {"text_encoder": te, "unet": unet})
    pipe.set_adapters(names, adapter_weights=weights)
    assert pipe.get_active_adapters() == names
    adapted = latents(pipe, case, prompt)
    assert_latents(adapted, reference("loras", case["name"])["latents"])
    assert float(np.abs(adapted - plain).max()) > 0.05, "the LoRA did not change the output"
    pipe.disable_lora()
    assert_latents(latents(pipe, case, prompt), plain)


def test_last_loaded_adapter_is_the_active_one_and_scale_multiplies_it():
    case = next(c for c in LORA_CASES if c["name"] == "sd1_peft_no_alpha")
    pipe = pipeline(case)
    files = FIXTURES / "loras" / "files"
    pipe.load_lora_weights(files / "kohya_attn.safetensors")
    pipe.load_lora_weights(files / "peft_plain.safetensors")
    assert pipe.get_active_adapters() == ["default_1"]
    weight = case["loras"][0]["unet_weight"]
    got = pipe(prompt=case["prompt"], negative_prompt=case["negative_prompt"] or None,
               num_inference_steps=case["steps"], guidance_scale=case["guidance"],
               generator=diffuse.Generator("cpu").manual_seed(case["seed"]), output_type="latent",
               cross_attention_kwargs={"scale": weight}).images
    assert_latents(got, reference("loras", case["name"])["latents"])
    pipe.fuse_lora(lora_scale=weight)
    pipe.unload_lora_weights()
    assert_latents(latents(pipe, case, case["prompt"]), reference("loras", case["name"])["latents"])


@pytest.mark.parametrize("case", EMBEDDING_CASES, ids=[c["name"] for c in EMBEDDING_CASES])
def test_textual_inversion_equals_diffusers(case):
    case = {**case, "scheduler": None}
    pipe = pipeline(case)
    before = latents(pipe, case, case["prompt"])
    for embedding in case["embeddings"]:
        pipe.load_textual_inversion(FIXTURES / "embeddings" / "files" / f"{embedding['file']}.safetensors",
                                    token=embedding["token"])
    got = latents(pipe, case, case["prompt"])
    assert_latents(got, reference("embeddings", case["name"])["latents"])
    assert float(np.abs(got - before).max()) > 0.05, "the embedding did not change the output"


def test_missing_lora_file_names_it():
    pipe = diffuse.StableDiffusionPipeline.from_pretrained(MODELS / "sd1")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        pipe.load_lora_weights(FIXTURES / "loras" / "files", weight_name="nope.safetensors")
    with pytest.raises(ValueError, match="not loaded"):
        pipe.set_adapters(["ghost"])
