"""The generation controls through the real server (ModelsLab v6 img2img over HTTP, tiny-sd).

What only the API shows: refusals at submit (400 in the vendor's shape, nothing queued), the
scheduler and the enhanced prompts recorded in `meta` of both the processing and the success
answers, and the safety checker's verdict and treatment in the response and the image.

This module's server runs the built-in test checker `tiny-flag-all`, which flags every image:
requests that compare images send safety_checker=no.
"""

from __future__ import annotations

import io
import sqlite3

import numpy as np
import pytest
from PIL import Image

from diffserve.engine.models.capabilities import SCHEDULERS, UNSUPPORTED_SCHEDULERS
from diffserve.engine.controls.prompts import QUALITY_NEGATIVE, QUALITY_TERMS

from . import web
from .servers import DiffserveServer
from .waiting import wait_until

IMG2IMG = "/api/v6/images/img2img"


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_root):
    """A server whose safety checker flags every image (DIFFSERVE_SAFETY_CHECKER=tiny-flag-all)."""
    srv = DiffserveServer(tmp_path_factory.mktemp("controls"), models_root,
                          env_overrides={"DIFFSERVE_SAFETY_CHECKER": "tiny-flag-all"}).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def key(server):
    return server.create_key("--name", "controls")


def v6(key, image_host, **over):
    b = {"key": key, "model_id": "tiny-sd", "prompt": "women playing tennis", "init_image": image_host.url("/cat.png"),
         "samples": "1", "num_inference_steps": "4", "guidance_scale": 7.5, "strength": 0.7, "seed": 42}
    b.update(over)
    return b


def jobs_in(server) -> int:
    with sqlite3.connect(server.data_dir / "diffserve.db") as db:
        return db.execute("select count(*) from jobs").fetchone()[0]


def image(url: str) -> np.ndarray:
    r = web.get(url, timeout=30)
    assert r.status_code == 200, url
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))


def success(server, b) -> dict:
    out = server.post(IMG2IMG, b).json()
    assert out["status"] == "success", out
    return out


def until_done(server, key, job_id, timeout=60) -> dict:
    return wait_until(lambda: server.post(f"/api/v6/images/fetch/{job_id}", {"key": key}).json(), timeout,
                      accept=lambda out: out["status"] != "processing", what=f"job {job_id} to finish")


REFUSED = [({"scheduler": name}, f"scheduler {name} cannot run image-to-image") for name in UNSUPPORTED_SCHEDULERS] + [
    ({"clip_skip": 5}, "clip_skip must be between 1 and 4 for model tiny-sd"),
    ({"scheduler": "UniPCMultistepScheduler", "algorithm_type": "dpmsolver+++"}, "algorithm_type applies only to"),
    ({"algorithm_type": "dpmsolver++++"}, "algorithm_type must be one of"),
    ({"enhance_style": "oil-smudge"}, "enhance_style 'oil-smudge' is not a known style"),
]


@pytest.mark.parametrize("change,message", REFUSED, ids=[m for _, m in REFUSED])
def test_controls_the_model_cannot_apply_are_refused_at_submit(server, key, image_host, change, message):
    before = jobs_in(server)
    r = server.post(IMG2IMG, v6(key, image_host, **change))
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"status", "message"} and r.json()["status"] == "error"
    assert r.json()["message"].startswith(message), r.json()
    if "scheduler" in change and "algorithm_type" not in change:
        assert all(name in r.json()["message"] for name in SCHEDULERS)  # the supported list
    assert jobs_in(server) == before


def test_meta_shows_the_scheduler_and_prompts_used_while_processing_and_when_done(server, key, image_host):
    queued = server.post(IMG2IMG, v6(key, image_host, instant_response="yes", enhance_style="anime")).json()
    assert queued["status"] == "processing", queued
    done = until_done(server, key, queued["id"])
    assert done["status"] == "success", done
    for meta in (queued["meta"], done["meta"]):
        assert meta["scheduler"] == "PNDMScheduler"  # none asked: the model's own, by name
        assert meta["prompt"].startswith("anime artwork, women playing tennis")
        assert meta["prompt"].endswith(QUALITY_TERMS)  # enhance_prompt absent = "yes" (the page's default)
        assert meta["negative_prompt"].endswith(QUALITY_NEGATIVE)
        assert (meta["enhance_prompt"], meta["enhance_style"]) == ("yes", "anime")
        assert (meta["use_karras_sigmas"], meta["tomesd"]) == ("no", "yes")  # PNDM takes no Karras sigmas


def test_meta_flags_say_what_was_applied(server, key, image_host):
    euler = success(server, v6(key, image_host, scheduler="EulerDiscreteScheduler"))["meta"]
    assert (euler["scheduler"], euler["use_karras_sigmas"]) == ("EulerDiscreteScheduler", "yes")
    ddim = success(server, v6(key, image_host, scheduler="DDIMScheduler", use_karras_sigmas="yes"))["meta"]
    assert (ddim["scheduler"], ddim["use_karras_sigmas"]) == ("DDIMScheduler", "no")
    dpm = success(server, v6(key, image_host, scheduler="DPMSolverMultistepScheduler", algorithm_type="dpmsolver+++"))
    assert dpm["meta"]["algorithm_type"] == "dpmsolver+++"
    plain = success(server, v6(key, image_host, enhance_prompt="no", negative_prompt=None))["meta"]
    assert (plain["prompt"], plain["negative_prompt"], plain["enhance_prompt"]) == ("women playing tennis", None, "no")


def test_each_control_changes_the_image_through_the_api(server, key, image_host):
    plain = dict(enhance_prompt="no", tomesd="no", use_karras_sigmas="no", safety_checker="no")
    base = image(success(server, v6(key, image_host, **plain))["output"][0])
    same = image(success(server, v6(key, image_host, **plain, clip_skip=1, scheduler="PNDMScheduler"))["output"][0])
    assert np.array_equal(base, same)  # clip_skip 1 and the model's own scheduler change nothing
    changes = ({"clip_skip": 2}, {"tomesd": "yes"}, {"scheduler": "EulerDiscreteScheduler"},
               {"enhance_prompt": "yes"}, {"enhance_style": "pixel-art"})
    seen = [base]
    for change in changes:
        got = image(success(server, v6(key, image_host, **{**plain, **change}))["output"][0])
        assert not any(np.array_equal(got, other) for other in seen), change
        seen.append(got)


def test_flagged_images_are_reported_and_treated(server, key, image_host):
    black = success(server, v6(key, image_host, safety_checker_type="black", samples=2))
    assert black["nsfw_content_detected"] is True
    assert all(not image(url).any() for url in black["output"])
    notice = success(server, v6(key, image_host))  # default type: sensitive_content_text
    assert notice["nsfw_content_detected"] is True and notice["meta"]["safety_checker_type"] == "sensitive_content_text"
    panel = image(notice["output"][0])
    assert panel.any() and (panel.min(axis=2) > 120).sum() >= 10  # light text on a dark panel
    off = success(server, v6(key, image_host, safety_checker="no"))
    assert off["nsfw_content_detected"] is False and not np.array_equal(image(off["output"][0]), panel)


def test_the_safety_checker_also_sees_unchanged_images(server, key, image_host):
    # strength 0 returns the init image without denoising; it is still checked (and here flagged)
    out = success(server, v6(key, image_host, strength=0, safety_checker_type="black"))
    assert out["nsfw_content_detected"] is True and not image(out["output"][0]).any()
