"""ModelsLab enterprise realtime img2img (and its v6 twin) through the real server over HTTP."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from .dialects import download, job_row, poll_modelslab
from .servers import png_bytes

ENTERPRISE = "/api/v1/enterprise/realtime/img2img"
V6 = "/api/v6/realtime/img2img"


@pytest.fixture(scope="module")
def key(dialect_server):
    return dialect_server.create_key("--name", "realtime")


def body(key_text, image_host, **over):
    """The realtime page's example body; the image is local and the size test-friendly."""
    b = {
        "key": key_text,
        "prompt": "a cat sitting on a bench",
        "negative_prompt": "bad quality",
        "init_image": image_host.url("/cat.png"),
        "width": "64",
        "height": "64",
        "samples": "1",
        "temp": False,
        "safety_checker": False,
        "strength": 0.7,
        "seed": None,
        "webhook": None,
        "track_id": None,
    }
    b.update(over)
    return b


def test_vendor_example_runs_on_the_realtime_model(dialect_server, key, image_host):
    r = dialect_server.post(ENTERPRISE, body(key, image_host))
    out = r.json()
    assert r.status_code == 200 and out["status"] == "success", out
    img = Image.open(io.BytesIO(download(out["output"][0])))
    assert img.size == (64, 64)
    meta = out["meta"]
    # the server's realtime settings, not the client, choose model, scheduler, steps and guidance
    assert (meta["model_id"], meta["scheduler"], meta["steps"], meta["guidance_scale"]) == \
        ("tiny-sd", "LCMScheduler", 2, 1.0)
    assert meta["safety_checker"] == "no" and meta["temp"] == "no" and isinstance(meta["seed"], int)
    # flags this page does not have stay off (the v6 page's "yes" defaults are not realtime's)
    assert (meta["enhance_prompt"], meta["tomesd"], meta["use_karras_sigmas"]) == ("no", "no", "no")
    assert meta["prompt"] == "a cat sitting on a bench"
    assert job_row(dialect_server, out["id"], "dialect")[0] == "realtime"


def test_instant_response_then_fetch_on_both_paths(dialect_server, key, image_host):
    p = dialect_server.post(V6, body(key, image_host, instant_response=True, seed=5)).json()
    assert p["status"] == "processing" and p["output"] == [], p
    assert p["fetch_result"] == f"{dialect_server.url}/api/v6/realtime/fetch/{p['id']}"
    done = poll_modelslab(dialect_server, p["fetch_result"], {"key": key})
    assert done["status"] == "success" and done["output"] == p["future_links"]
    again = dialect_server.post(f"/api/v1/enterprise/realtime/fetch/{p['id']}", {"key": key}).json()
    assert again["output"] == done["output"] and again["meta"]["seed"] == 5
    e = dialect_server.post(ENTERPRISE, body(key, image_host, instant_response=True)).json()
    assert e["fetch_result"] == f"{dialect_server.url}/api/v1/enterprise/realtime/fetch/{e['id']}"
    assert poll_modelslab(dialect_server, e["fetch_result"], {"key": key})["status"] == "success"


def test_flags_as_booleans_or_words_and_base64_out(dialect_server, key, image_host):
    raw = base64.b64encode(png_bytes(48, 48)).decode()
    out = dialect_server.post(ENTERPRISE, body(key, image_host, init_image=raw, width=None, height=None,
                                               base64=True, safety_checker="yes", temp="no",
                                               enhance_prompt=False, seed="7")).json()
    assert out["status"] == "success", out
    assert Image.open(io.BytesIO(base64.b64decode(out["output"][0]))).size == (48, 48)
    m = out["meta"]
    assert (m["base64"], m["safety_checker"], m["seed"], m["init_image"]) == ("yes", "yes", 7, "base64")


@pytest.mark.parametrize("change,status,message", [
    ({"prompt": None}, 400, "prompt is required"),
    ({"init_image": ""}, 400, "init_image is required"),
    ({"width": 2048}, 400, "width must be between 32 and 512"),  # the page's 1024 cap, under the model's 512
    ({"samples": 5}, 400, "samples must be between 1 and 4"),
    ({"strength": 1.5}, 400, "strength must be between 0 and 1"),
    ({"safety_checker": "maybe"}, 400, "safety_checker must be"),
    ({"seed": "x"}, 400, "seed must be an integer"),
    ({"webhook": "ftp://x/y"}, 400, "webhook must be an http(s) URL"),
    ({"key": "wrong"}, 401, "Invalid API key"),
    ({"key": None}, 401, "API key required"),
])
def test_errors_in_the_vendor_shape(dialect_server, key, image_host, change, status, message):
    r = dialect_server.post(V6, body(key, image_host, **change))
    assert r.status_code == status and r.json()["status"] == "error" and message in r.json()["message"], r.text


def test_fetch_sees_only_the_keys_own_jobs(dialect_server, key, image_host):
    out = dialect_server.post(ENTERPRISE, body(key, image_host, instant_response=True)).json()
    other = dialect_server.create_key("--name", "realtime-other")
    r = dialect_server.post(f"/api/v1/enterprise/realtime/fetch/{out['id']}", {"key": other})
    assert r.status_code == 404 and r.json() == {"status": "error", "message": f"Request not found: {out['id']}"}
    bad = dialect_server.post("/api/v6/realtime/fetch/abc", {"key": key})
    assert bad.status_code == 400 and "request_id must be an integer" in bad.json()["message"]
