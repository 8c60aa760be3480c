"""The package as a diffusers user meets it: the seed's script on the bundled model, schedulers by diffusers name,
generators, output types, errors as Python exceptions, and the GIL released while generating."""

import threading

import numpy as np
import pytest
from PIL import Image

import diffuse
from conftest import BUNDLED, FIXTURES, MODELS, assert_images, assert_latents

SEED_SCRIPT = """
from diffuse import StableDiffusionPipeline, StableDiffusionImg2ImgPipeline, DPMSolverMultistepScheduler, Generator
pipe = StableDiffusionPipeline.from_pretrained(MODEL_ID, torch_dtype="float32")
pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
pipe = pipe.to("cpu")
pipe.enable_xformers_memory_efficient_attention()
images = pipe(prompt=PROMPT, negative_prompt="", num_inference_steps=15, guidance_scale=7.5,
              num_images_per_prompt=2, generator=Generator("cpu").manual_seed(42)).images
image = images[0]
image.save(OUT)
img2img = StableDiffusionImg2ImgPipeline.from_pretrained(MODEL_ID, torch_dtype="float32").to("cpu")
refined = img2img(prompt=PROMPT, image=image, strength=0.75, guidance_scale=8.0, num_inference_steps=20).images[0]
"""


def test_seed_script_on_the_bundled_model(tmp_path):
    """The seed's example with its imports changed runs on the bundled model, and its images are diffusers'."""
    import json
    from safetensors.numpy import load_file
    case = json.loads((FIXTURES / "bundled" / "case.json").read_text())
    assert case["scheduler"] == "DPMSolverMultistepScheduler" and case["steps"] == 15
    scope = {"MODEL_ID": str(BUNDLED), "PROMPT": case["prompt"], "OUT": str(tmp_path / "generated_portrait.png")}
    exec(SEED_SCRIPT, scope)
    assert_images(scope["images"], load_file(str(FIXTURES / "bundled" / "reference.safetensors"))["images"])
    assert Image.open(tmp_path / "generated_portrait.png").size == (32, 32)
    assert scope["refined"].size == (32, 32)


def test_every_diffusers_scheduler_class_is_importable_and_round_trips():
    pipe = diffuse.StableDiffusionPipeline.from_pretrained(MODELS / "sd1")
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    for name in diffuse.schedulers.SCHEDULER_CLASSES:
        scheduler = getattr(diffuse, name).from_config(pipe.scheduler.config)
        assert scheduler.config["_class_name"] == name
        assert scheduler.config.num_train_timesteps == 1000
    with pytest.raises(TypeError, match="read-only"):
        pipe.scheduler.config["beta_start"] = 0.1
    with pytest.raises(ValueError, match="algorithm_type"):
        diffuse.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="nonsense")


def test_keys_the_pipeline_filled_go_back_to_defaults_in_from_config(tmp_path):
    """diffusers' SD pipeline sets steps_offset=1 on a file without it, and lists it in _use_default_values, so
    from_config gives the next class its own default (0) instead."""
    import json
    import shutil
    folder = tmp_path / "sd1"
    shutil.copytree(MODELS / "sd1", folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    del config["steps_offset"]
    config_path.write_text(json.dumps(config))
    pipe = diffuse.StableDiffusionPipeline.from_pretrained(folder)
    assert pipe.scheduler.config.steps_offset == 1
    assert pipe.scheduler.config["_use_default_values"] == ["steps_offset"]
    assert "steps_offset" not in diffuse.EulerDiscreteScheduler.from_config(pipe.scheduler.config).config


def test_generator_streams_and_seeds():
    g = diffuse.Generator("cuda:0").manual_seed(7)
    assert g.device == "cuda" and g.initial_seed() == 7
    assert diffuse.Generator().initial_seed() == 67280421310721
    with pytest.raises(ValueError, match="generator device"):
        diffuse.Generator("mps")
    with pytest.raises(ValueError, match="list of 2 generators"):
        diffuse.StableDiffusionPipeline.from_pretrained(MODELS / "sd1")(
            "x", num_inference_steps=1, generator=[diffuse.Generator(), diffuse.Generator()])


def test_output_types_and_return_dict():
    pipe = diffuse.StableDiffusionPipeline.from_pretrained(MODELS / "sd1")
    args = dict(prompt="a red circle", num_inference_steps=3, width=32, height=40)
    latents = pipe(**args, generator=diffuse.Generator().manual_seed(1), output_type="latent").images
    assert isinstance(latents, np.ndarray) and latents.shape == (1, 4, 5, 4)
    array = pipe(**args, generator=diffuse.Generator().manual_seed(1), output_type="np").images
    assert array.shape == (1, 40, 32, 3) and array.dtype == np.float32 and 0 <= array.min() <= array.max() <= 1
    images, nsfw = pipe(**args, generator=diffuse.Generator().manual_seed(1), return_dict=False)
    assert nsfw is None and images[0].size == (32, 40)
    assert_images(images, np.round(array * 255).astype(np.uint8))
    given = pipe(**args, latents=latents, output_type="latent").images
    with pytest.raises(AssertionError):
        assert_latents(given, latents)  # the given latents are the starting noise, not the result


def test_callback_sees_every_step_and_its_exception_ends_the_call():
    pipe = diffuse.StableDiffusionPipeline.from_pretrained(MODELS / "sd1")
    pipe.scheduler = diffuse.DDIMScheduler.from_config(pipe.scheduler.config)
    steps = []

    def record(pipe_, index, timestep, kwargs):
        steps.append((index, float(timestep), kwargs["latents"].shape))
        return kwargs
    pipe("a cat", num_inference_steps=4, width=32, height=32, callback_on_step_end=record)
    assert [s[0] for s in steps] == [0, 1, 2, 3] and steps[0][2] == (1, 4, 4, 4)
    assert steps[0][1] > steps[-1][1]

    class Stop(Exception):
        pass

    def fail(pipe_, index, timestep, kwargs):
        raise Stop(index)
    with pytest.raises(Stop):
        pipe("a cat", num_inference_steps=4, width=32, height=32, callback_on_step_end=fail)

    def replace(pipe_, index, timestep, kwargs):
        return {"latents": kwargs["latents"] * 0}
    with pytest.raises(ValueError, match="changed latents"):
        pipe("a cat", num_inference_steps=2, width=32, height=32, callback_on_step_end=replace)


@pytest.mark.parametrize("call, error, match", [
    (lambda p: p("x", num_inference_steps=0), ValueError, "invalid num_inference_steps: 0"),
    (lambda p: p("x", width=30), ValueError, "width"),
    (lambda p: p("x", guidance_rescale=2.0), ValueError, "guidance_rescale"),
    (lambda p: p(["a", "b"]), ValueError, "batch of 2 prompts"),
    (lambda p: p("x", sigmas=[1.0, 0.0]), ValueError, "sigmas"),
    (lambda p: p("x", output_type="tensor"), ValueError, "output_type"),
    (lambda p: p("x", not_an_argument=1), TypeError, "not_an_argument"),
    (lambda p: p(), ValueError, "prompt is required"),
])
def test_bad_calls_raise_python_exceptions(call, error, match):
    pipe = diffuse.StableDiffusionPipeline.from_pretrained(MODELS / "sd1")
    with pytest.raises(error, match=match):
        call(pipe)


def test_bad_loads_raise_python_exceptions(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        diffuse.StableDiffusionPipeline.from_pretrained(tmp_path / "does-not-exist")
    with pytest.raises(ValueError, match="torch_dtype"):
        diffuse.StableDiffusionPipeline.from_pretrained(MODELS / "sd1", torch_dtype="int8")
    with pytest.raises(ValueError, match="variant"):
        diffuse.StableDiffusionPipeline.from_pretrained(MODELS / "sd1", variant="int4")
    with pytest.raises(TypeError, match="device_map"):
        diffuse.StableDiffusionPipeline.from_pretrained(MODELS / "sd1", device_map="auto")
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(ValueError, match="pickle"):
        diffuse.StableDiffusionPipeline.from_single_file(pickle)
    with pytest.raises(ValueError, match="CUDA|cuda"):
        diffuse.StableDiffusionPipeline.from_pretrained(MODELS / "sd1").to("cuda")


def test_from_single_file_and_from_pipe():
    single = next((FIXTURES / "single_file").glob("*.safetensors"))
    pipe = diffuse.StableDiffusionPipeline.from_single_file(single)
    assert pipe.scheduler.config["_class_name"]
    text = diffuse.StableDiffusionPipeline.from_pretrained(MODELS / "sd1")
    text.load_lora_weights(FIXTURES / "loras" / "files" / "kohya_attn.safetensors", adapter_name="k")
    img2img = diffuse.StableDiffusionImg2ImgPipeline.from_pipe(text)
    assert img2img._engine is text._engine
    assert img2img.get_active_adapters() == ["k"]


def test_generation_releases_the_gil():
    """A Python thread keeps running while another generates."""
    pipe = diffuse.StableDiffusionPipeline.from_pretrained(MODELS / "sd1").load()
    done = threading.Event()
    ticks = 0

    def generate():
        pipe("a cat", num_inference_steps=30, width=64, height=64)
        done.set()
    worker = threading.Thread(target=generate)
    worker.start()
    while not done.is_set():
        ticks += 1
        done.wait(0.001)
    worker.join()
    assert ticks > 10, f"the main thread ran {ticks} times while generating"


def test_torch_values_are_accepted_and_returned(torch):
    """With torch installed: torch dtypes and devices, torch.Generator (CPU: mt19937; its seed must be fresh),
    torch tensors out for latent/pt output and into the callback."""
    from safetensors.numpy import load_file
    import json
    case = next(c for c in json.loads((FIXTURES / "pipelines" / "cases.json").read_text())
                if c["name"] == "t2i_dpmpp_2m_karras")
    pipe = diffuse.StableDiffusionPipeline.from_pretrained(MODELS / "sd1", torch_dtype=torch.float32)
    pipe = pipe.to(torch.device("cpu"))
    assert pipe.dtype == torch.float32 and pipe.device == torch.device("cpu")
    pipe.scheduler = diffuse.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)
    out = pipe(case["prompt"], num_inference_steps=case["steps"], num_images_per_prompt=case["num_images"],
               generator=torch.Generator("cpu").manual_seed(case["seed"]), output_type="latent").images
    assert isinstance(out, torch.Tensor)
    assert_latents(out.numpy(), load_file(str(FIXTURES / "pipelines" / f"{case['name']}.safetensors"))["latents"])
    used = torch.Generator("cpu").manual_seed(1)
    torch.randn(3, generator=used)
    with pytest.raises(ValueError, match="drawn from"):
        pipe("x", num_inference_steps=1, generator=used)
    pt = pipe("x", num_inference_steps=2, width=32, height=32, output_type="pt").images
    assert isinstance(pt, torch.Tensor) and pt.shape == (1, 3, 32, 32)
    half = diffuse.StableDiffusionPipeline.from_pretrained(MODELS / "sd1", torch_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16


def test_reseeding_a_generator_mid_generation_is_refused_not_deadlocked():
    pipe = diffuse.StableDiffusionPipeline.from_pretrained(MODELS / "sd1")
    generator = diffuse.Generator().manual_seed(3)
    errors = []

    def reseed(pipe_, index, timestep, kwargs):
        try:
            generator.manual_seed(4)
        except RuntimeError as e:
            errors.append(str(e))
        return kwargs
    pipe("a cat", num_inference_steps=2, width=32, height=32, generator=generator, callback_on_step_end=reseed)
    assert errors and "running generation" in errors[0]
    generator.manual_seed(4)
    assert generator.initial_seed() == 4
