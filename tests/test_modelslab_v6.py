"""ModelsLab v6 img2img through the real server over HTTP, on the tiny built-in model."""

from __future__ import annotations

import base64
import io
import sqlite3

import pytest
from PIL import Image

from . import web
from .servers import png_bytes
from .waiting import wait_until

IMG2IMG = "/api/v6/images/img2img"


def body(key, image_host, **over):
    """The v6 page's example body, with a local model and image, at test-friendly steps."""
    b = {
        "key": key,
        "model_id": "tiny-sd",
        "prompt": "women playing tennis",
        "negative_prompt": None,
        "init_image": image_host.url("/cat.png"),
        "samples": "1",
        "num_inference_steps": "4",
        "safety_checker": "yes",
        "enhance_prompt": "yes",
        "guidance_scale": 7.5,
        "strength": 0.7,
        "scheduler": "UniPCMultistepScheduler",
        "seed": None,
        "lora_model": None,
        "tomesd": "yes",
        "use_karras_sigmas": "yes",
        "vae": None,
        "lora_strength": None,
        "embeddings_model": None,
        "webhook": None,
        "track_id": None,
    }
    b.update(over)
    return b


def download(url: str) -> bytes:
    r = web.get(url, timeout=30)
    assert r.status_code == 200, url
    return r.content


def job_count(server) -> int:
    with sqlite3.connect(server.data_dir / "diffserve.db") as db:
        return db.execute("select count(*) from jobs").fetchone()[0]


def poll(server, job_id, key, path=None, timeout=60):
    path = path or f"/api/v6/images/fetch/{job_id}"
    return wait_until(lambda: server.post(path, {"key": key}).json(), timeout, every=0.2,
                      accept=lambda out: out["status"] != "processing", what=f"{path} to answer other than processing")


def test_vendor_example_returns_an_image(server, key, image_host):
    r = server.post(IMG2IMG, body(key, image_host))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "success", out
    assert isinstance(out["id"], int)
    assert out["generationTime"] > 0
    assert out["nsfw_content_detected"] is False
    assert len(out["output"]) == 1 and out["proxy_links"] == out["output"]
    img = Image.open(io.BytesIO(download(out["output"][0])))
    assert img.format == "PNG" and img.size == (64, 64)
    meta = out["meta"]
    assert (meta["W"], meta["H"], meta["steps"], meta["n_samples"]) == (64, 64, 4, 1)
    assert (meta["device"], meta["dtype"]) == ("cpu", "fp32")  # where and in what type the job ran
    assert isinstance(meta["seed"], int) and meta["seed"] >= 0
    assert meta["model_id"] == "tiny-sd" and meta["guidance_scale"] == 7.5 and meta["strength"] == 0.7
    assert meta["scheduler"] == "UniPCMultistepScheduler" and meta["init_image"] == image_host.url("/cat.png")
    assert meta["tomesd"] == "yes" and meta["safety_checker"] == "yes" and meta["base64"] == "no"
    assert "noise" in meta["model_note"]


def test_output_size_is_init_size_rounded_down_to_8(server, key, image_host):
    out = server.post(IMG2IMG, body(key, image_host, init_image=image_host.url("/wide.png"))).json()
    assert out["status"] == "success", out
    assert (out["meta"]["W"], out["meta"]["H"]) == (96, 64)
    assert Image.open(io.BytesIO(download(out["output"][0]))).size == (96, 64)


def test_width_and_height_when_given_set_the_output_size(server, key, image_host):
    out = server.post(IMG2IMG, body(key, image_host, width="96", height=48)).json()
    assert out["status"] == "success", out
    assert Image.open(io.BytesIO(download(out["output"][0]))).size == (96, 48)


def test_same_seed_same_bytes_other_seed_other_image(server, key, image_host):
    a = server.post(IMG2IMG, body(key, image_host, seed=1234)).json()
    b = server.post(IMG2IMG, body(key, image_host, seed="1234")).json()
    c = server.post(IMG2IMG, body(key, image_host, seed=1235)).json()
    assert a["status"] == b["status"] == c["status"] == "success"
    assert a["id"] != b["id"]
    assert download(a["output"][0]) == download(b["output"][0])
    assert download(a["output"][0]) != download(c["output"][0])


def test_random_seed_is_returned_and_reproduces_the_image(server, key, image_host):
    a = server.post(IMG2IMG, body(key, image_host, seed=None)).json()
    seed = a["meta"]["seed"]
    b = server.post(IMG2IMG, body(key, image_host, seed=seed)).json()
    assert download(a["output"][0]) == download(b["output"][0])


def test_each_generation_control_applied_changes_the_image(server, key, image_host):
    base = dict(seed=7)
    ref = download(server.post(IMG2IMG, body(key, image_host, **base)).json()["output"][0])
    for change in ({"prompt": "a red bicycle"}, {"negative_prompt": "blurry"}, {"guidance_scale": 3},
                   {"strength": 0.9}, {"num_inference_steps": 6}):
        out = server.post(IMG2IMG, body(key, image_host, **base, **change)).json()
        assert out["status"] == "success", (change, out)
        assert download(out["output"][0]) != ref, change


def test_strength_zero_returns_the_init_image(server, key, image_host):
    out = server.post(IMG2IMG, body(key, image_host, strength=0)).json()
    got = Image.open(io.BytesIO(download(out["output"][0]))).convert("RGB")
    assert got.tobytes() == Image.open(io.BytesIO(png_bytes(64, 64))).convert("RGB").tobytes()


def test_samples_gives_that_many_distinct_images(server, key, image_host):
    out = server.post(IMG2IMG, body(key, image_host, samples=3, seed=5)).json()
    assert out["status"] == "success" and out["meta"]["n_samples"] == 3
    images = [download(u) for u in out["output"]]
    assert len(set(images)) == 3


def test_loose_forms_are_coerced_and_echoed_normalised(server, key, image_host):
    out = server.post(IMG2IMG, body(
        key, image_host, samples="2", num_inference_steps="5", guidance_scale="6.5", strength="0.5",
        seed="99", safety_checker=False, tomesd="no", use_karras_sigmas=True, base64=False, temp="no",
        clip_skip="2", width=None, height="", instant_response="no", track_id=12345, unknown_field="ignored",
    )).json()
    assert out["status"] == "success", out
    m = out["meta"]
    assert (m["n_samples"], m["steps"], m["guidance_scale"], m["strength"], m["seed"]) == (2, 5, 6.5, 0.5, 99)
    assert (m["safety_checker"], m["tomesd"], m["use_karras_sigmas"], m["temp"]) == ("no", "no", "yes", "no")
    assert m["clip_skip"] == 2 and m["track_id"] == "12345" and m["instant_response"] == "no"


def test_instant_response_then_fetch_in_both_forms(server, key, image_host):
    r = server.post(IMG2IMG, body(key, image_host, instant_response="yes", seed=3))
    p = r.json()
    assert p["status"] == "processing", p
    assert isinstance(p["id"], int) and p["eta"] >= 0 and p["output"] == []
    assert p["fetch_result"] == f"{server.url}/api/v6/images/fetch/{p['id']}"
    assert len(p["future_links"]) == 1 and p["meta"]["seed"] == 3
    done = poll(server, p["id"], key)
    assert done["status"] == "success" and done["id"] == p["id"]
    assert done["output"] == p["future_links"]
    by_body = server.post("/api/v6/images/fetch", {"key": key, "request_id": str(p["id"])}).json()
    assert by_body["status"] == "success" and by_body["output"] == done["output"]
    assert download(done["output"][0])


def test_base64_in_and_out(server, key, image_host):
    raw = base64.b64encode(png_bytes(64, 64)).decode()
    for init in (raw, "data:image/png;base64," + raw):
        out = server.post(IMG2IMG, body(key, image_host, init_image=init, base64="yes", seed=11)).json()
        assert out["status"] == "success", out
        img = Image.open(io.BytesIO(base64.b64decode(out["output"][0])))
        assert img.size == (64, 64)
        assert out["meta"]["base64"] == "yes" and out["meta"]["init_image"] == "base64"
        assert download(out["proxy_links"][0]) == base64.b64decode(out["output"][0])


def test_jpeg_input(server, key, image_host):
    out = server.post(IMG2IMG, body(key, image_host, init_image=image_host.url("/cat.jpg"))).json()
    assert out["status"] == "success", out


ERRORS = [
    ({"prompt": None}, 400, "prompt is required"),
    ({"prompt": "   "}, 400, "prompt is required"),
    ({"init_image": None}, 400, "init_image is required"),
    ({"samples": 5}, 400, "samples must be between 1 and 4"),
    ({"samples": "0"}, 400, "samples must be between 1 and 4"),
    ({"samples": "many"}, 400, "samples must be an integer"),
    ({"samples": 1.5}, 400, "samples must be an integer"),
    ({"num_inference_steps": 500}, 400, "num_inference_steps must be between 1 and 50"),
    ({"guidance_scale": 25}, 400, "guidance_scale must be between 1 and 20"),
    ({"guidance_scale": "high"}, 400, "guidance_scale must be a number"),
    ({"strength": 1.5}, 400, "strength must be between 0 and 1"),
    ({"strength": -0.1}, 400, "strength must be between 0 and 1"),
    ({"seed": -1}, 400, "seed must be between 0 and"),
    ({"seed": 2**70}, 400, "seed must be between 0 and"),
    ({"clip_skip": 9}, 400, "clip_skip must be between 1 and 8"),
    ({"width": 100}, 400, "width must be divisible by 8"),
    ({"height": 8}, 400, "height must be between 32 and 512"),
    ({"safety_checker": "maybe"}, 400, "safety_checker must be"),
    ({"safety_checker_type": "smudge"}, 400, "safety_checker_type must be one of"),
    ({"scheduler": "FancyScheduler"}, 400, "scheduler must be one of"),
    ({"ip_adapter_scale": 2}, 400, "ip_adapter_scale must be between 0 and 1"),
    ({"lora_strength": "0.5,abc"}, 400, "lora_strength must be comma-separated numbers"),
    ({"lora_model": "a,b", "lora_strength": "0.5,0.6,0.7"}, 400, "lora_strength has 3 values for 2"),
    ({"webhook": "ftp://example.com/x"}, 400, "webhook must be an http(s) URL"),
    ({"prompt": 42}, 400, "prompt must be a string"),
    ({"model_id": "nope"}, 400, "Model not found: nope"),
    ({"init_image": "http://127.0.0.1:1/missing.png"}, 400, "Unable to fetch image from provided URL"),
    ({"init_image": "not base64 and not a url!!"}, 400, "init_image is not a valid URL or base64 image"),
    ({"init_image": base64.b64encode(b"definitely not an image").decode()}, 400, "init_image is not a valid image"),
]


@pytest.mark.parametrize("change,status,message", ERRORS, ids=[m for _, _, m in ERRORS])
def test_errors_in_vendor_shape_and_nothing_queued(server, key, image_host, change, status, message):
    before = job_count(server)
    r = server.post(IMG2IMG, body(key, image_host, **change))
    assert r.status_code == status, r.text
    out = r.json()
    assert out["status"] == "error" and message in out["message"], out
    assert set(out) == {"status", "message"}
    assert job_count(server) == before


def test_image_url_errors(server, key, image_host):
    for path, message in (("/missing.png", "Unable to fetch image from provided URL"),
                          ("/not-an-image.png", "init_image is not a valid image")):
        r = server.post(IMG2IMG, body(key, image_host, init_image=image_host.url(path)))
        assert r.status_code == 400 and message in r.json()["message"], r.text


@pytest.mark.parametrize("key_value,message", [(None, "API key required"), ("", "API key required"),
                                               ("wrong-key", "Invalid API key"), (123, "API key required")])
def test_bad_keys_are_refused_before_anything_is_queued(server, image_host, key_value, message):
    before = job_count(server)
    r = server.post(IMG2IMG, body(key_value, image_host))
    assert r.status_code == 401 and r.json() == {"status": "error", "message": message}
    assert job_count(server) == before


@pytest.mark.parametrize("raw,message", [
    (b"{not json", "Invalid JSON body"),
    (b"[1, 2, 3]", "Request body must be a JSON object"),
    (b"", "Request body must be a JSON object"),
    (b'{"key": "x", "guidance_scale": NaN}', "Invalid JSON body"),
    (b'{"key": "x", "strength": Infinity}', "Invalid JSON body"),
])
def test_malformed_bodies(server, raw, message):
    r = web.post(f"{server.url}{IMG2IMG}", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["status"] == "error" and message in r.json()["message"], r.text


def test_a_key_sees_only_its_own_jobs(server, key, other_key, image_host):
    job = server.post(IMG2IMG, body(key, image_host)).json()
    for path, b in ((f"/api/v6/images/fetch/{job['id']}", {"key": other_key}),
                    ("/api/v6/images/fetch", {"key": other_key, "request_id": job["id"]})):
        r = server.post(path, b)
        assert r.status_code == 404 and r.json() == {"status": "error", "message": f"Request not found: {job['id']}"}
    assert server.post(f"/api/v6/images/fetch/{job['id']}", {"key": key}).json()["status"] == "success"


@pytest.mark.parametrize("path,b,message", [
    ("/api/v6/images/fetch/abc", {}, "request_id must be an integer"),
    ("/api/v6/images/fetch/999999999", {}, "Request not found: 999999999"),
    ("/api/v6/images/fetch/99999999999999999999999", {}, "Request not found"),
    ("/api/v6/images/fetch", {}, "request_id is required"),
    ("/api/v6/images/fetch", {"request_id": "x"}, "request_id must be an integer"),
])
def test_fetch_errors(server, key, path, b, message):
    r = server.post(path, {"key": key, **b})
    assert r.status_code in (400, 404) and message in r.json()["message"], r.text


def test_fetch_needs_a_valid_key(server, key, image_host):
    job = server.post(IMG2IMG, body(key, image_host)).json()
    r = server.post(f"/api/v6/images/fetch/{job['id']}", {"key": "nope"})
    assert r.status_code == 401 and r.json()["message"] == "Invalid API key"


def test_revoked_key_is_refused(server, image_host):
    k = server.create_key("--name", "short-lived")
    assert server.post(IMG2IMG, body(k, image_host)).json()["status"] == "success"
    assert "revoked" in server.cli("keys", "revoke", "short-lived")
    r = server.post(IMG2IMG, body(k, image_host))
    assert r.status_code == 401 and r.json()["message"] == "Invalid API key"


def test_output_urls_are_unguessable_and_listing_is_off(server, key, image_host):
    out = server.post(IMG2IMG, body(key, image_host)).json()
    name = out["output"][0].rsplit("/", 1)[1]
    token = name.rsplit("-", 1)[0]
    assert len(token) >= 22  # 128 random bits
    assert web.get(f"{server.url}/generations/").status_code == 404
    assert web.get(f"{server.url}/generations/{str(out['id'])}-0.png").status_code == 404


def test_health(server):
    r = web.get(f"{server.url}/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["workers"] >= 1
    assert "tiny-sd" in r.json()["models_loaded"]


@pytest.mark.parametrize("change,message", [({"samples": 5}, "samples must be between 1 and 4"),
                                            ({"guidance_scale": 25}, "guidance_scale must be between 1 and 20")])
def test_v6_caps_hold_on_models_that_allow_more(server, key, image_host, change, message):
    # tiny-flux takes 8 samples and guidance 30 (Qolaba's ranges); the v6 page caps them at 4 and 20
    r = server.post(IMG2IMG, body(key, image_host, model_id="tiny-flux", scheduler=None, **change))
    assert r.status_code == 400 and message in r.json()["message"], r.text
