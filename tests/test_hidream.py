"""`model_id: "hidream-o1"` on the v6 endpoint: the HiDream family with the HiDream O1 page's limits."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from .dialects import download

IMG2IMG = "/api/v6/images/img2img"


@pytest.fixture(scope="module")
def key(dialect_server):
    return dialect_server.create_key("--name", "hidream")


def body(key_text, image_host, **over):
    """The HiDream O1 page's example body; local image, 1024 px (the page's smallest) and strength 0.1 so
    the tiny HiDream build runs 3 of the 31 steps."""
    b = {
        "key": key_text,
        "model_id": "hidream-o1",
        "prompt": "a cat sitting on a bench, oil painting style",
        "negative_prompt": "blurry, low quality",
        "init_image": image_host.url("/cat.png"),
        "strength": 0.1,
        "width": 1024,
        "height": 1024,
        "samples": 1,
        "num_inference_steps": 31,
        "safety_checker": "no",
        "seed": None,
        "guidance_scale": 7.5,
        "webhook": None,
        "track_id": None,
    }
    b.update(over)
    return b


def test_vendor_example_at_1024(dialect_server, key, image_host):
    out = dialect_server.post(IMG2IMG, body(key, image_host)).json()
    assert out["status"] == "success", out
    assert Image.open(io.BytesIO(download(out["output"][0]))).size == (1024, 1024)
    m = out["meta"]
    assert (m["model_id"], m["steps"], m["W"], m["H"], m["guidance_scale"]) == ("hidream-o1", 31, 1024, 1024, 7.5)


def test_page_defaults_2048_square_and_30_steps(dialect_server, key, image_host):
    # strength 0 returns the init image at the output size: the default size is checked without a 2048 px run
    b = body(key, image_host, strength=0)
    for field in ("width", "height", "num_inference_steps", "guidance_scale"):
        b.pop(field)
    out = dialect_server.post(IMG2IMG, b).json()
    assert out["status"] == "success", out
    assert (out["meta"]["W"], out["meta"]["H"], out["meta"]["steps"]) == (2048, 2048, 30)
    assert Image.open(io.BytesIO(download(out["output"][0]))).size == (2048, 2048)


@pytest.mark.parametrize("change,message", [
    ({"width": 512}, "width must be between 1024 and 2048 but is 512"),
    ({"height": 4096}, "height must be between 1024 and 2048 but is 4096"),
    ({"width": 1028}, "width must be divisible by 8 but is 1028"),
    ({"num_inference_steps": 10}, "num_inference_steps must be between 20 and 50 but is 10"),
    ({"num_inference_steps": 51}, "num_inference_steps must be between 20 and 50 but is 51"),
    ({"guidance_scale": 25}, "guidance_scale must be between 1 and 20 but is 25"),
    ({"samples": 5}, "samples must be between 1 and 4 but is 5"),
])
def test_page_limits(dialect_server, key, image_host, change, message):
    r = dialect_server.post(IMG2IMG, body(key, image_host, **change))
    assert r.status_code == 400 and r.json() == {"status": "error", "message": message}, r.text
