"""The `webuiapi` A1111 client against `diffuse serve`: txt2img, img2img, inpainting, PNG info, listings."""

from PIL import Image

import webuiapi


def api(server):
    return webuiapi.WebUIApi(host=server.host, port=int(server.port), sampler="Euler a", steps=3)


def test_txt2img_batches_with_a1111_seeds(server):
    result = api(server).txt2img(
        prompt="a castle", negative_prompt="people", width=64, height=64, seed=42, cfg_scale=6,
        batch_size=2, n_iter=2,
    )
    assert len(result.images) == 4
    assert all(image.size == (64, 64) for image in result.images)
    assert result.info["all_seeds"] == [42, 43, 44, 45]
    assert result.info["sampler_name"] == "Euler a"
    assert result.parameters["prompt"] == "a castle"
    assert result.images[0].info["parameters"] == result.info["infotexts"][0]
    assert "Seed: 43" in result.info["infotexts"][1]
    again = api(server).txt2img(prompt="a castle", negative_prompt="people", width=64, height=64,
                                seed=43, cfg_scale=6)
    assert again.image.tobytes() == result.images[1].tobytes(), "seed + i reproduces image i alone"


def test_img2img_and_inpainting(server):
    client = api(server)
    base = client.txt2img(prompt="a hill", width=64, height=64, seed=7).image
    reworked = client.img2img(images=[base], prompt="a hill at night", denoising_strength=0.6,
                              width=64, height=64, seed=8)
    assert reworked.image.size == (64, 64)
    assert reworked.info["denoising_strength"] == 0.6
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    inpainted = client.img2img(images=[base], mask_image=mask, prompt="a tower", denoising_strength=1.0,
                               width=64, height=64, seed=9)
    assert inpainted.image.size == (64, 64)
    corner = (2, 2)
    assert abs(inpainted.image.getpixel(corner)[0] - base.convert("RGB").getpixel(corner)[0]) < 40


def test_png_info_samplers_models_progress(server):
    client = api(server)
    image = client.txt2img(prompt="a tree", width=64, height=64, seed=1).image
    info = client.png_info(image)
    assert info.info.startswith("a tree\nSteps: 3, Sampler: Euler a")
    assert "Euler a" in client.util_get_sampler_names()
    [title] = client.util_get_model_names()
    assert title.startswith("sd1 [") and len(title) == len("sd1 [0123456789]"), "A1111's 'name [hash]'"
    assert client.util_get_current_model() == title
    progress = client.get_progress()
    assert progress["state"]["job_count"] == 0
    client.util_wait_for_ready(check_interval=0.1)
    assert client.interrupt() == {"interrupted": 0}


def test_util_set_model_switches_the_served_model(two_model_server):
    client = api(two_model_server)
    assert [title.split(" [")[0] for title in client.util_get_model_names()] == ["sd1", "sd2"]
    assert client.util_get_current_model().startswith("sd1 [")
    client.util_set_model("sd2")
    assert client.util_get_current_model().startswith("sd2 [")
    result = client.txt2img(prompt="a tree", width=64, height=64, seed=1)
    assert result.info["sd_model_name"] == "sd2"
    assert "Model: sd2" in result.info["infotexts"][0]
    client.util_set_model("sd1")
    assert client.txt2img(prompt="a tree", width=64, height=64, seed=1).info["sd_model_name"] == "sd1"


def test_interrupt_answers_with_the_image_as_it_stood(server):
    client = api(server)
    assert client.interrupt() == {"interrupted": 0}
    assert client.skip() is None


def test_the_server_logs_each_request_and_job(server):
    api(server).txt2img(prompt="a log line", width=64, height=64, seed=2)
    log = server.read_log()
    assert "POST /sdapi/v1/txt2img 200" in log, log
    assert "model sd1 steps 3/3 images 1" in log and "succeeded" in log, log
    assert "\x1b[" not in log, "no colour codes when stderr is not a terminal"
