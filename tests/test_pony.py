"""ModelsLab enterprise pony img2img (SDXL) and the enterprise fetch endpoints, over HTTP."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from .dialects import download, job_row, poll_modelslab

IMG2IMG = "/api/v1/enterprise/pony/img2img"


@pytest.fixture(scope="module")
def key(dialect_server):
    return dialect_server.create_key("--name", "pony")


def body(key_text, image_host, **over):
    """The pony page's example body: local model and image, 64 px, and a low strength so the tiny SDXL
    runs 2 of its 21 steps."""
    b = {
        "key": key_text,
        "model_id": "tiny-sdxl",
        "prompt": "women playing tennis",
        "negative_prompt": None,
        "init_image": image_host.url("/cat.png"),
        "width": "64",
        "height": "64",
        "samples": "1",
        "num_inference_steps": "21",
        "safety_checker": "yes",
        "enhance_prompt": "yes",
        "guidance_scale": 7.5,
        "strength": 0.1,
        "scheduler": "UniPCMultistepScheduler",
        "seed": None,
        "lora_model": None,
        "tomesd": "yes",
        "use_karras_sigmas": "yes",
        "vae": None,
        "lora_strength": None,
        "webhook": None,
        "track_id": None,
    }
    b.update(over)
    return b


def test_vendor_example_then_both_fetch_forms(dialect_server, key, image_host):
    out = dialect_server.post(IMG2IMG, body(key, image_host)).json()
    assert out["status"] == "success", out
    assert Image.open(io.BytesIO(download(out["output"][0]))).size == (64, 64)
    m = out["meta"]
    assert (m["model_id"], m["steps"], m["scheduler"], m["tomesd"]) == \
        ("tiny-sdxl", 21, "UniPCMultistepScheduler", "yes")
    assert job_row(dialect_server, out["id"], "dialect")[0] == "pony"
    for path in ("/api/v1/enterprise/pony/fetch", "/api/v1/enterprise/fetch"):
        again = dialect_server.post(path, {"key": key, "request_id": out["id"]}).json()
        assert again["status"] == "success" and again["output"] == out["output"], path


def test_page_defaults_512_square_21_steps_and_the_pony_model(dialect_server, key, image_host):
    # strength 0 returns the init image at the output size without denoising: the 512 px default is
    # checked without paying for a 512 px generation on a CPU
    b = body(key, image_host, strength=0)
    for field in ("model_id", "width", "height", "num_inference_steps", "scheduler"):
        b.pop(field)
    out = dialect_server.post(IMG2IMG, b).json()
    assert out["status"] == "success", out
    m = out["meta"]
    assert (m["model_id"], m["W"], m["H"], m["steps"], m["guidance_scale"]) == ("tiny-sdxl", 512, 512, 21, 7.5)
    assert Image.open(io.BytesIO(download(out["output"][0]))).size == (512, 512)


def test_instant_response_answers_processing_with_the_pony_fetch_url(dialect_server, key, image_host):
    p = dialect_server.post(IMG2IMG, body(key, image_host, instant_response="yes", seed=9)).json()
    assert p["status"] == "processing", p
    assert p["fetch_result"] == f"{dialect_server.url}/api/v1/enterprise/pony/fetch/{p['id']}"
    done = poll_modelslab(dialect_server, p["fetch_result"], {"key": key})
    assert done["status"] == "success" and done["meta"]["seed"] == 9 and done["output"] == p["future_links"]


@pytest.mark.parametrize("change,status,message", [
    ({"num_inference_steps": "30"}, 400, "num_inference_steps must be one of: 21, 31, 41 (got 30)"),
    ({"scheduler": "KarrasVeScheduler"}, 400, "scheduler must be one of: EulerDiscreteScheduler"),
    ({"samples": 5}, 400, "samples must be between 1 and 4"),
    ({"guidance_scale": 25}, 400, "guidance_scale must be between 1 and 20"),
    ({"width": 2048}, 400, "width must be between 32 and 512"),
    ({"strength": "strong"}, 400, "strength must be a number"),
    ({"clip_skip": 9}, 400, "clip_skip must be between 1 and 8"),
    ({"model_id": "realistic-vision-51"}, 400, "Model not found: realistic-vision-51"),
    ({"prompt": ""}, 400, "prompt is required"),
    ({"init_image": "http://127.0.0.1:1/x.png"}, 400, "Unable to fetch image from provided URL"),
    ({"key": "nope"}, 401, "Invalid API key"),
])
def test_errors_in_the_vendor_shape(dialect_server, key, image_host, change, status, message):
    r = dialect_server.post(IMG2IMG, body(key, image_host, **change))
    assert r.status_code == status and r.json()["status"] == "error" and message in r.json()["message"], r.text


@pytest.mark.parametrize("path,b,status,message", [
    ("/api/v1/enterprise/pony/fetch", {}, 400, "request_id is required"),
    ("/api/v1/enterprise/fetch", {"request_id": "abc"}, 400, "request_id must be an integer"),
    ("/api/v1/enterprise/fetch", {"request_id": 999999999}, 404, "Request not found: 999999999"),
])
def test_fetch_errors(dialect_server, key, path, b, status, message):
    r = dialect_server.post(path, {"key": key, **b})
    assert r.status_code == status and message in r.json()["message"], r.text
