"""The AUTOMATIC1111 API with its usual Python client, webuiapi (baseurl pointed at diffserve, the key as
the Basic-auth password), plus the errors and the sampler table."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import webuiapi
from PIL import Image

from . import web
from .jobs_helpers import Jobs
from .servers import png_bytes
from .waiting import wait_until


@pytest.fixture(scope="module")
def key(jobs_server):
    return jobs_server.create_key("--name", "a1111")


@pytest.fixture(scope="module")
def api(jobs_server, key):
    api = webuiapi.WebUIApi(baseurl=f"{jobs_server.url}/sdapi/v1", sampler="Euler a", steps=6)  # the one change
    api.set_auth("any-user", key)
    return api


def photo(side=64, color=(200, 80, 40)) -> Image.Image:
    import io

    return Image.open(io.BytesIO(png_bytes(side, side, color))).convert("RGB")


def test_img2img_with_seeds_and_the_grid_first(api):
    result = api.img2img(images=[photo()], prompt="a watercolor", negative_prompt="blurry", seed=1234, steps=6,
                         cfg_scale=6, width=64, height=64, batch_size=2, n_iter=1, denoising_strength=0.6,
                         sampler_name="DPM++ 2M", scheduler="karras", include_init_images=True)
    assert len(result.images) == 4  # grid, the two images, the init image
    assert result.images[0].size == (128, 64) and result.images[1].size == (64, 64)
    info = result.info
    assert info["all_seeds"] == [1234, 1235] and info["index_of_first_image"] == 1
    assert info["infotexts"][1].startswith("a watercolor\nNegative prompt: blurry\nSteps: 6, Sampler: DPM++ 2M, "
                                           "Schedule type: Karras, CFG scale: 6, Seed: 1235, Size: 64x64")
    assert result.parameters["denoising_strength"] == 0.6


def test_same_seed_same_image_and_random_seeds(api):
    a = api.img2img(images=[photo()], prompt="x", seed=7, width=64, height=64)
    b = api.img2img(images=[photo()], prompt="x", seed=7, width=64, height=64)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    c = api.img2img(images=[photo()], prompt="x", seed=-1, width=64, height=64)
    assert c.info["seed"] >= 0


def test_txt2img_and_inpainting(api):
    t2i = api.txt2img(prompt="a lighthouse", width=64, height=96, steps=4, seed=3)
    assert t2i.image.size == (64, 96) and t2i.info["denoising_strength"] is None
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    out = api.img2img(images=[photo(64, (10, 200, 10))], mask_image=mask, prompt="x", width=64, height=64)
    kept = np.asarray(out.image.convert("RGB"))[:, 40:]
    assert (kept == np.asarray(photo(64, (10, 200, 10)))[:, 40:]).all()


def test_models_options_samplers_and_the_checkpoint(api):
    names = api.util_get_model_names()
    assert "tiny-sd" in names and "tiny-sdxl" in names
    assert "DPM++ 2M" in api.util_get_sampler_names() and "karras" in api.util_get_scheduler_names()
    assert api.util_get_current_model() == "tiny-sd"
    api.util_set_model("tiny-sdxl", find_closest=False)
    assert api.util_get_current_model() == "tiny-sdxl"
    out = api.img2img(images=[photo()], prompt="x", width=64, height=64, steps=4)
    assert out.info["sd_model_name"] == "tiny-sdxl"
    api.set_options({"sd_model_checkpoint": "tiny-sd"})
    override = api.img2img(images=[photo()], prompt="x", width=64, height=64, steps=4,
                           override_settings={"sd_model_checkpoint": "tiny-sdxl"})
    assert override.info["sd_model_name"] == "tiny-sdxl" and api.util_get_current_model() == "tiny-sd"


def test_progress_and_interrupt_of_the_callers_job(api, jobs_server, key):
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("answer", _slow(api)))
    worker.start()
    seen = wait_until(api.get_progress, 60, every=0.05, accept=lambda progress: progress["state"]["sampling_step"] >= 1,
                      what="progress past the first sampling step")
    assert seen and 0 < seen["progress"] < 1 and seen["state"]["sampling_steps"] == 50 and seen["eta_relative"] > 0
    assert seen["state"]["job_count"] == 1
    other = webuiapi.WebUIApi(baseurl=f"{jobs_server.url}/sdapi/v1")
    other.set_auth("x", jobs_server.create_key("--name", "a1111-other"))
    assert other.get_progress()["state"]["job_count"] == 0  # per caller
    api.interrupt()
    worker.join(60)
    # A1111's answer: the interrupted call succeeds with the image so far (the batched path: an img2img)
    answer = result["answer"]
    assert isinstance(answer, webuiapi.WebUIApiResult), answer
    assert answer.image.size == (512, 512) and answer.info["steps"] == 50
    jobs = Jobs(jobs_server, key)
    assert jobs.http.get("/v1/jobs", params={"limit": 1}).json()["data"][0]["status"] == "succeeded"


def _slow(api) -> object:
    try:
        return api.img2img(images=[photo(512)], prompt="slow", width=512, height=512, steps=50,
                           denoising_strength=1.0, sampler_name="DDIM")
    except Exception as e:  # noqa: BLE001 - an error is what the test would read
        return e


def test_errors(jobs_server, key, api):
    url = f"{jobs_server.url}/sdapi/v1/img2img"
    body = {"init_images": [], "prompt": "x"}
    assert web.post(url, json=body).status_code == 401
    r = web.post(url, json={**body, "sampler_name": "DPM++ 2S a"}, auth=("u", key))
    assert r.status_code == 400 and "valid: Euler a, Euler, LMS" in r.json()["detail"]
    r = web.post(url, json={"init_images": ["aGVsbG8="], "prompt": "x", "scheduler": "exponential"},
                 auth=("u", key))
    assert r.status_code == 400 and r.json()["detail"].startswith("scheduler 'exponential' is not supported")
    r = web.post(url, json=body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 400 and r.json()["detail"] == "init_images is required"
    r = web.post(url, json={"init_images": ["not base64 at all!"], "prompt": "x"}, auth=("u", key))
    assert r.status_code == 400 and "init_images" in r.json()["detail"]
    r = web.post(f"{jobs_server.url}/sdapi/v1/options", json={"sd_model_checkpoint": "nope"}, auth=("u", key))
    assert r.status_code == 400 and r.json()["detail"] == "Model not found: nope"
    assert json.loads(web.get(f"{jobs_server.url}/sdapi/v1/nothing").text) == {"detail": "Not Found"}
