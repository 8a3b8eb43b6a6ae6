"""A1111 generation fields beyond the draft's, over loopback HTTP: `styles`, `script_name` (the SD upscale
script; unknown ones refused with 422, as A1111 does), `send_images=false`."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from . import web
from .servers import png_bytes


@pytest.fixture(scope="module")
def post(server):
    key = server.create_key("--name", "a1111-scripts")

    def post(path: str, body: dict) -> httpx.Response:
        return web.post(f"{server.url}/sdapi/v1{path}", json=body, auth=("me", key), timeout=120)

    return post


def init_image(width: int = 64, height: int = 64) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(width, height)).decode()


BASE = {"prompt": "a lighthouse", "seed": 3, "steps": 3, "width": 64, "height": 64}


def test_sd_upscale_answers_the_upscaled_size(post):
    answer = post("/img2img", {**BASE, "init_images": [init_image(64, 48)], "denoising_strength": 0.5,
                               "script_name": "SD upscale", "script_args": ["", 8, "Lanczos", 2.0]})
    assert answer.status_code == 200, answer.text
    image = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
    assert image.size == (128, 96) and "Size: 128x96" in answer.json()["info"]
    kept = post("/img2img", {**BASE, "init_images": [init_image(64, 48)], "script_name": "sd upscale",
                             "script_args": ["", 8, "None", 2.0]}).json()  # upscaler None: A1111 keeps the size
    assert "Size: 64x48" in kept["info"]


@pytest.mark.parametrize("path, body, field", [
    ("/img2img", {"init_images": [init_image()], "script_name": "X/Y/Z plot"}, "script_name"),
    ("/txt2img", {"script_name": "sd upscale"}, "script_name"),  # an img2img script
    ("/img2img", {"init_images": [init_image()], "script_name": "sd upscale", "script_args": ["", 8, "ESRGAN", 2]},
     "script_args"),
    ("/txt2img", {"styles": ["no such style"]}, "styles"),
])
def test_what_is_not_served_is_a_422_naming_the_field(post, path, body, field):
    answer = post(path, {**BASE, **body})
    assert answer.status_code == 422 and answer.json()["detail"].startswith(field), answer.text


def test_styles_wrap_the_prompt_as_a1111s_do(post):
    answer = post("/txt2img", {**BASE, "styles": ["Watercolor"], "negative_prompt": "fog"}).json()
    info = json.loads(answer["info"])
    assert info["prompt"] != "a lighthouse" and "a lighthouse" in info["prompt"]
    assert info["negative_prompt"].startswith("fog, ") and len(info["negative_prompt"]) > len("fog, ")


def test_send_images_false_answers_no_images(post):
    answer = post("/txt2img", {**BASE, "send_images": False})
    assert answer.status_code == 200 and answer.json()["images"] == []
    assert json.loads(answer.json()["info"])["all_seeds"] == [3]


def test_hires_fix_upscales_then_redraws(post):
    base = {**BASE, "sampler_name": "Euler", "seed": 21}
    first = Image.open(io.BytesIO(base64.b64decode(post("/txt2img", base).json()["images"][0])))
    kept = post("/txt2img", {**base, "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Lanczos",
                             "denoising_strength": 0}).json()  # strength 0: A1111 keeps the upscaled image
    upscaled = Image.open(io.BytesIO(base64.b64decode(kept["images"][0])))
    assert upscaled.tobytes() == first.convert("RGB").resize((128, 128), Image.Resampling.LANCZOS).tobytes()
    redrawn = post("/txt2img", {**base, "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Lanczos",
                                "denoising_strength": 0.6, "hr_second_pass_steps": 4}).json()
    image = Image.open(io.BytesIO(base64.b64decode(redrawn["images"][0])))
    assert image.size == (128, 128) and image.tobytes() != upscaled.tobytes()
    infotext = json.loads(redrawn["info"])["infotexts"][0]
    assert "Hires upscale: 2, Hires steps: 4, Hires upscaler: Lanczos" in infotext
    assert "Denoising strength: 0.6" in image.info["parameters"]  # the PNG says what made it


@pytest.mark.parametrize("body, field", [({"hr_upscaler": "4x-UltraSharp"}, "hr_upscaler"),
                                         ({"hr_scale": 4, "width": 256, "height": 256}, "width")])
def test_hires_fix_refusals_come_before_the_first_pass(post, body, field):
    answer = post("/txt2img", {**BASE, "enable_hr": True, **body})
    assert answer.status_code == 400 and field in answer.json()["detail"], answer.text


def test_tiling_wraps_the_convolutions(post):
    plain = post("/txt2img", {**BASE, "seed": 5}).json()
    tiled = post("/txt2img", {**BASE, "seed": 5, "tiling": True}).json()
    assert "Tiling: True" in tiled["info"] and "Tiling" not in plain["info"]
    images = [Image.open(io.BytesIO(base64.b64decode(a["images"][0]))).convert("RGB") for a in (plain, tiled)]
    assert images[0].tobytes() != images[1].tobytes()
