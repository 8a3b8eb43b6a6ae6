"""A1111's /interrupt and /skip: the caller's running txt2img ends its denoising at the next step and the
waiting call answers 200 with the image so far, in A1111's shape (images, parameters, info; the PNG's
`parameters` chunk), never an error; the job succeeded. A txt2img runs on the worker's single path (the
img2img case, on the batched path, is test_a1111.py's webuiapi test). An interrupted first pass of the hires
fix skips the second pass, as A1111's does."""

from __future__ import annotations

import base64
import io
import json
import threading

import numpy as np
from PIL import Image

from .a1111_client import call  # noqa: F401 (the shared A1111 client fixture)
from .waiting import wait_until

STEPS = 50  # the most the tiny model takes: slow enough to be seen running, then stopped


def in_background(call, path: str, body: dict) -> tuple[threading.Thread, dict]:
    answer: dict = {}
    thread = threading.Thread(target=lambda: answer.setdefault("r", call("POST", path, json=body)))
    thread.start()
    return thread, answer


def running_step(call) -> int:
    """Wait until the caller's job has run a step; the step seen."""
    seen = wait_until(lambda: call("GET", "/progress").json(), 120, every=0.05,
                      accept=lambda p: p["state"]["sampling_step"] >= 1, what="the txt2img to run a step")
    return seen["state"]["sampling_step"]


def image_of(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def test_an_interrupted_txt2img_answers_200_with_the_image_so_far(call):
    body = {"prompt": "a slow lighthouse", "width": 128, "height": 128, "steps": STEPS, "seed": 42,
            "sampler_name": "Euler a"}
    thread, answer = in_background(call, "/txt2img", body)
    assert running_step(call) < STEPS
    assert call("POST", "/interrupt").status_code == 200
    thread.join(300)
    r = answer["r"]
    assert r.status_code == 200, r.text
    data = r.json()
    assert set(data) == {"images", "parameters", "info"} and len(data["images"]) == 1
    image = image_of(data["images"][0])
    assert image.size == (128, 128)
    info = json.loads(data["info"])
    assert info["all_seeds"] == [42] and info["steps"] == STEPS
    # the infotext says what was asked, as A1111's does for an interrupted image
    assert image.text["parameters"] == info["infotexts"][0]
    assert info["infotexts"][0].startswith(f"a slow lighthouse\nSteps: {STEPS}, Sampler: Euler a, ")
    assert call("GET", "/progress").json()["state"]["job_count"] == 0

    full = call("POST", "/txt2img", json=body)  # the same request run to its end: another (finished) image
    assert full.status_code == 200
    finished = image_of(full.json()["images"][0])
    assert finished.size == (128, 128)
    assert not np.array_equal(np.asarray(finished), np.asarray(image))


def test_skip_ends_the_job_too_and_an_interrupted_first_pass_has_no_second(call):
    body = {"prompt": "skipped", "width": 128, "height": 128, "steps": STEPS, "seed": 7, "enable_hr": True,
            "hr_scale": 1.5, "hr_upscaler": "Lanczos", "denoising_strength": 0.5}
    thread, answer = in_background(call, "/txt2img", body)
    running_step(call)
    assert call("POST", "/skip").status_code == 200
    thread.join(300)
    r = answer["r"]
    assert r.status_code == 200, r.text
    data = r.json()
    assert image_of(data["images"][0]).size == (128, 128)  # not 192: the second pass did not run
    assert "Hires" not in json.loads(data["info"])["infotexts"][0]


def test_interrupt_with_nothing_running_is_a_no_op(call):
    assert call("POST", "/interrupt").status_code == 200
    r = call("POST", "/txt2img", json={"prompt": "after", "width": 64, "height": 64, "steps": 3, "seed": 1})
    assert r.status_code == 200 and len(r.json()["images"]) == 1  # no stale request stops the next job
