"""The official `openai` Python SDK against `diffuse serve`: generate and edit images, list models, errors."""

import base64
import io
import urllib.request

import openai
import pytest
from PIL import Image

from conftest import API_KEY


def client(server, key="unused"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def png_image(data):
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def test_images_generate_returns_pngs_with_parameters(server):
    result = client(server).images.generate(
        model="sd1",
        prompt="a red fox",
        n=2,
        size="64x64",
        response_format="b64_json",
        extra_body={"steps": 3, "seed": 42, "negative_prompt": "blurry", "scheduler": "Euler a"},
    )
    assert len(result.data) == 2
    images = [png_image(base64.b64decode(d.b64_json)) for d in result.data]
    assert all(image.size == (64, 64) for image in images)
    parameters = images[0].info["parameters"]
    assert parameters.startswith("a red fox\nNegative prompt: blurry\nSteps: 3, Sampler: Euler a,")
    assert "Seed: 42" in parameters
    assert images[0].tobytes() != images[1].tobytes()
    again = client(server).images.generate(
        model="sd1", prompt="a red fox", n=2, size="64x64", response_format="b64_json",
        extra_body={"steps": 3, "seed": 42, "negative_prompt": "blurry", "scheduler": "Euler a"},
    )
    assert base64.b64decode(again.data[0].b64_json) == base64.b64decode(result.data[0].b64_json)


def test_url_response_format_serves_the_image(server):
    result = client(server).images.generate(
        prompt="a lake", size="64x64", response_format="url", extra_body={"steps": 2, "seed": 1}
    )
    with urllib.request.urlopen(result.data[0].url, timeout=30) as response:
        assert response.status == 200
        assert png_image(response.read()).size == (64, 64)


def test_images_edit_with_a_mask(server):
    source = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(source, format="PNG")
    mask = io.BytesIO()
    transparent_left = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    transparent_left.paste((0, 0, 0, 0), (0, 0, 32, 64))
    transparent_left.save(mask, format="PNG")
    result = client(server).images.edit(
        image=("image.png", source.getvalue(), "image/png"),
        mask=("mask.png", mask.getvalue(), "image/png"),
        prompt="a blue square",
        response_format="b64_json",
        extra_body={"steps": 3, "seed": 5},
    )
    image = png_image(base64.b64decode(result.data[0].b64_json))
    assert image.size == (64, 64)
    assert "Denoising strength: 1.0" in image.info["parameters"]


def test_models_list(server):
    assert [m.id for m in client(server).models.list()] == ["sd1"]


def test_bad_requests_raise_with_the_field_named(server):
    with pytest.raises(openai.BadRequestError) as error:
        client(server).images.generate(prompt="x", n=50, extra_body={"steps": 2})
    assert error.value.status_code == 400
    assert error.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as error:
        client(server).images.generate(prompt="x", model="dall-e-3")
    assert error.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as error:
        client(server).images.generate(prompt="x", size="1000x1000")
    assert error.value.body["param"] == "size"


def test_api_key(keyed_server):
    with pytest.raises(openai.AuthenticationError):
        client(keyed_server, "wrong").images.generate(prompt="x", size="64x64", extra_body={"steps": 2})
    result = client(keyed_server, API_KEY).images.generate(
        prompt="x", size="64x64", response_format="b64_json", extra_body={"steps": 2, "seed": 3}
    )
    assert png_image(base64.b64decode(result.data[0].b64_json)).size == (64, 64)
