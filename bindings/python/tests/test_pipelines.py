"""Parity with diffusers on the tiny pipelines: every case of tests/fixtures/pipelines run through the Python
classes as a diffusers script runs it (class by task, scheduler swapped with from_config, CPU generator)."""

import pytest
from PIL import Image

import diffuse
from conftest import FIXTURES, MODELS, assert_images, assert_latents, cases, reference

# The fixtures name schedulers as A1111 does; these are the diffusers classes and options they stand for
# (tools/fixtures/fixtures_pipelines.py).
SCHEDULERS = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DDIM": ("DDIMScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
}

PIPELINE_CASES = cases("pipelines")


def pipeline_for(case):
    root = FIXTURES / "pipelines" / "sd1_inpaint" if case["model"] == "sd1_inpaint" else MODELS / case["model"]
    xl = case["model"] == "sdxl"
    if case["mask"] is not None:
        cls = diffuse.StableDiffusionInpaintPipeline
    elif case["image"] is not None:
        cls = diffuse.StableDiffusionXLImg2ImgPipeline if xl else diffuse.StableDiffusionImg2ImgPipeline
    else:
        cls = diffuse.StableDiffusionXLPipeline if xl else diffuse.StableDiffusionPipeline
    variant = "fp16" if case["model"] == "sd2" else None
    pipe = cls.from_pretrained(root, torch_dtype="float32", variant=variant, safety_checker=None)
    if case["scheduler"] is not None:
        name, options = SCHEDULERS[case["scheduler"]]
        pipe.scheduler = getattr(diffuse, name).from_config(pipe.scheduler.config, **options)
    return pipe.to("cpu")


def call(pipe, case, output_type):
    kwargs = dict(prompt=case["prompt"], negative_prompt=case["negative_prompt"] or None,
                  num_inference_steps=case["steps"], guidance_scale=case["guidance"],
                  num_images_per_prompt=case["num_images"],
                  generator=diffuse.Generator("cpu").manual_seed(case["seed"]), output_type=output_type,
                  clip_skip=case["clip_skip"], eta=case["eta"])
    if case["image"] is None or case["mask"] is not None:
        kwargs.update(width=case["width"], height=case["height"])
    if case["image"] is None:
        kwargs["guidance_rescale"] = case["guidance_rescale"]
    else:
        kwargs.update(image=Image.open(FIXTURES / "pipelines" / case["image"]), strength=case["strength"])
        if case["mask"] is not None:
            kwargs["mask_image"] = Image.open(FIXTURES / "pipelines" / case["mask"])
    return pipe(**kwargs).images


@pytest.mark.parametrize("case", PIPELINE_CASES, ids=[c["name"] for c in PIPELINE_CASES])
def test_pipeline_case_equals_diffusers(case):
    expected = reference("pipelines", case["name"])
    pipe = pipeline_for(case)
    assert_latents(call(pipe, case, "latent"), expected["latents"])
    images = call(pipe, case, "pil")
    assert all(isinstance(image, Image.Image) for image in images)
    assert_images(images, expected["images"])


PYTHON_CASES = cases("python")


def run_python_case(case):
    cls = getattr(diffuse, case["pipeline"])
    pipe = cls.from_pretrained(MODELS / case["model"], safety_checker=None)
    if case["scheduler"] is not None:
        pipe.scheduler = getattr(diffuse, case["scheduler"]).from_config(pipe.scheduler.config)
    pipe = pipe.to("cpu")
    pipe.enable_xformers_memory_efficient_attention()
    kwargs = dict(prompt=case["prompt"], negative_prompt=case["negative_prompt"],
                  num_inference_steps=case["num_inference_steps"], guidance_scale=case["guidance_scale"],
                  num_images_per_prompt=case["num_images_per_prompt"])
    if case["image"] is not None:
        from conftest import ROOT
        kwargs.update(image=Image.open(ROOT / case["image"]), strength=case["strength"])
    else:
        kwargs.update(width=case["width"], height=case["height"])
    if case["interrupt_at"] is not None:
        seen = []

        def stop(pipe, index, timestep, callback_kwargs):
            seen.append(index)
            if index == case["interrupt_at"]:
                pipe._interrupt = True
            return callback_kwargs
        kwargs["callback_on_step_end"] = stop
    outputs = {}
    for output_type in ("latent", "np"):
        generator = diffuse.Generator(case["generator"]).manual_seed(case["seed"])
        for _ in range(case["calls"]):
            result = pipe(generator=generator, output_type=output_type, **kwargs).images
        outputs[output_type] = result
    if case["interrupt_at"] is not None:
        assert seen[-1] == case["interrupt_at"], "the generation went on after pipe._interrupt was set"
    return outputs


@pytest.mark.parametrize("case", PYTHON_CASES, ids=[c["name"] for c in PYTHON_CASES])
def test_seed_script_calls_equal_diffusers(case):
    """The seed script's calls (a CUDA generator, image-to-image with strength 0.75 and guidance 8), pipe._interrupt
    from a callback, and one generator over two calls, against diffusers' outputs; `np` output within 1/255."""
    import numpy as np
    expected = reference("python", case["name"])
    outputs = run_python_case(case)
    assert_latents(outputs["latent"], expected["latents"])
    assert outputs["np"].dtype == np.float32 and outputs["np"].shape == expected["np"].shape
    diff = float(np.abs(outputs["np"] - expected["np"]).max())
    assert diff <= 1 / 255, f"np output differs from diffusers' by {diff * 255:.2f}/255"


def test_taesd_as_the_vae_equals_diffusers():
    """`pipe.vae = AutoencoderTiny.from_pretrained(...)` decodes with TAESD, as in diffusers
    (tests/fixtures/taesd)."""
    import json
    case = json.loads((FIXTURES / "taesd" / "case.json").read_text())
    pipe = diffuse.StableDiffusionPipeline.from_pretrained(MODELS / "sd1")
    pipe.scheduler = getattr(diffuse, case["scheduler"]).from_config(pipe.scheduler.config)
    pipe.vae = diffuse.AutoencoderTiny.from_pretrained(FIXTURES / "taesd" / "taesd")
    images = pipe(case["prompt"], negative_prompt=case["negative_prompt"], num_inference_steps=case["steps"],
                  guidance_scale=case["guidance"], width=case["width"], height=case["height"],
                  generator=diffuse.Generator("cpu").manual_seed(case["seed"])).images
    assert_images(images, reference("taesd", "pipeline")["images"])
    with pytest.raises(ValueError, match="_class_name"):
        pipe.vae = diffuse.AutoencoderTiny.from_pretrained(MODELS / "sd1" / "vae")


def test_quantize_int8_moves_the_image_a_little_and_needs_float32():
    """``quantize="int8"`` (diffuse's own argument) runs the UNet in int8: the image moves, but stays within 30 dB
    PSNR of float32's; other dtypes and unknown values are refused naming ``quantize``."""
    import numpy as np

    root = MODELS / "sd1"
    try:
        quantized = diffuse.StableDiffusionPipeline.from_pretrained(root, quantize="int8")
    except ValueError as e:
        if "AVX512-VNNI" in str(e):
            pytest.skip(str(e))
        raise
    plain = diffuse.StableDiffusionPipeline.from_pretrained(root)

    def draw(pipe):
        generator = diffuse.Generator("cpu").manual_seed(5)
        image = pipe("a red cube", num_inference_steps=4, generator=generator, output_type="np").images[0]
        return np.asarray(image, dtype=np.float64)

    a, b = draw(plain), draw(quantized)
    mse = float(np.mean((a - b) ** 2))
    assert mse > 0, "int8 drew float32's image"
    assert 10 * np.log10(1.0 / mse) > 30
    with pytest.raises(ValueError, match="quantize"):
        diffuse.StableDiffusionPipeline.from_pretrained(root, quantize="int4")
    with pytest.raises(ValueError, match="quantize"):
        quantized.to(dtype="bfloat16")
