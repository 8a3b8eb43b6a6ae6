"""Enterprise server management through the real server over HTTP: admin keys only."""

from __future__ import annotations

import base64
import json
import shutil

import pytest

from . import web
from .dialects import download, jobs_table, poll_modelslab
from .servers import png_bytes
from .waiting import wait_until
from .webhook_receiver import Receiver

ENT = "/api/v1/enterprise"
V6 = "/api/v6/images/img2img"
ENDPOINTS = ("load_model", "verify_model", "get_all_models", "delete_model", "load_vae", "schedulers_list",
             "upload_image", "system_details", "clear_cache", "clear_queue", "restart_server")


@pytest.fixture(scope="module")
def admin(dialect_server):
    return dialect_server.create_key("--admin", "--name", "operator")


@pytest.fixture(scope="module")
def user(dialect_server):
    return dialect_server.create_key("--name", "management-user")


def call(server, key, name, prefix=ENT, **fields):
    return server.post(f"{prefix}/{name}", {"key": key, **fields})


def gen(key, image_host, **over):
    b = {"key": key, "model_id": "tiny-sd", "prompt": "a lighthouse", "init_image": image_host.url("/cat.png"),
         "num_inference_steps": 2, "strength": 0.5, "safety_checker": "no"}
    b.update(over)
    return b


def verify_until(server, admin, model_id, states, timeout=120):
    return wait_until(lambda: call(server, admin, "verify_model", model_id=model_id).json(), timeout,
                      accept=lambda v: v.get("model_status") in states, what=f"verify_model {model_id}: one of {states}")


@pytest.mark.parametrize("prefix", [ENT, f"{ENT}/realtime", f"{ENT}/pony"])
def test_non_admin_keys_are_refused_everywhere(dialect_server, user, prefix):
    for name in ENDPOINTS:
        r = call(dialect_server, user, name, prefix, model_id="tiny-sd")
        assert r.status_code == 403 and r.json() == {"status": "error",
                                                     "message": "This endpoint needs an admin API key"}, name
        r = call(dialect_server, "wrong-key", name, prefix)
        assert r.status_code == 401 and r.json()["message"] == "Invalid API key", name
    r = dialect_server.post("/api/v6/images/model_reload", {"key": user, "model_id": "tiny-sd"})
    assert r.status_code == 403


def test_system_details_and_lists(dialect_server, admin):
    # the shared server's worker keeps the models the tests before this one used (2 at most): run tiny-sd now,
    # so it is one of them whatever ran first
    ran = dialect_server.post("/api/v6/images/img2img", {
        "key": admin, "model_id": "tiny-sd", "prompt": "a boat", "num_inference_steps": "2", "strength": 0.5,
        "init_image": base64.b64encode(png_bytes(64, 64)).decode()}).json()
    assert ran["status"] == "success", ran
    d = call(dialect_server, admin, "system_details").json()
    assert d["status"] == "ok" and d["worker_count"] == 1 and d["workers"][0]["worker_id"] == "worker-0"
    assert (d["workers"][0]["device"], d["workers"][0]["dtype"]) == ("cpu", "fp32")  # servers.py pins fp32
    assert d["workers"][0]["model_cache_gb"] > 0
    assert d["model_count"] == len(d["models_loaded"]) >= 1 and "tiny-sd" in d["models_loaded"]
    assert d["queue_length"] == 0 and d["queue_time"] >= 0 and d["models_available"] >= 8
    assert "LCMScheduler" in call(dialect_server, admin, "schedulers_list").json()["schedulers"]
    pony = call(dialect_server, admin, "schedulers_list", f"{ENT}/pony").json()["schedulers"]
    assert len(pony) == 15 and "KarrasVeScheduler" not in pony
    models = call(dialect_server, admin, "get_all_models").json()
    assert {"tiny-sd", "tiny-sdxl", "hidream-o1"} <= set(models["models"])
    assert any(m["model_id"] == "tiny-sd" and m["loaded"] and m["builtin"] for m in models["model_details"])


def test_load_verify_use_and_delete_a_local_folder_model(dialect_server, admin, user, image_host, models_root,
                                                         tmp_path):
    folder = tmp_path / "my-model"
    shutil.copytree(models_root / "tiny-sd", folder)
    hook = Receiver().start()
    try:
        r = call(dialect_server, admin, "load_model", url=str(folder), model_id="my-sd", model_type="huggingface",
                 from_safetensors="no", webhook=hook.url)
        out = r.json()
        assert out["status"] == "success" and out["message"] == "model load started", out
        v = verify_until(dialect_server, admin, "my-sd", ("loaded",))
        assert v["status"] == "success" and v["family"] == "sd" and v["workers"] == ["worker-0"]
        payload = hook.wait_for(1)[0].payload
        assert payload["status"] == "success" and payload["track_id"] == "my-sd"
    finally:
        hook.stop()
    img = dialect_server.post(V6, gen(user, image_host, model_id="my-sd")).json()
    assert img["status"] == "success" and img["meta"]["model_id"] == "my-sd", img
    again = call(dialect_server, admin, "load_model", url=str(folder), model_id="my-sd")
    assert again.status_code == 400 and "my-sd already exists" in again.json()["message"]
    assert call(dialect_server, admin, "delete_model", model_id="my-sd").json()["status"] == "success"
    gone = call(dialect_server, admin, "verify_model", model_id="my-sd")
    assert gone.status_code == 400 and gone.json() == {"status": "error", "message": "Model not found: my-sd"}
    refused = dialect_server.post(V6, gen(user, image_host, model_id="my-sd")).json()
    assert refused["message"] == "Model not found: my-sd"
    wait_until(lambda: web.get(f"{dialect_server.url}/health").json()["models_loaded"],
               accept=lambda loaded: "my-sd" not in loaded, what="my-sd out of /health's models_loaded")


def test_load_a_checkpoint_from_a_url(dialect_server, admin, user, image_host, models_root, tmp_path):
    from safetensors.torch import save_file

    from .ldm_checkpoint import diffusers_to_ldm_checkpoint

    checkpoint = tmp_path / "tiny.safetensors"
    save_file(diffusers_to_ldm_checkpoint(models_root / "tiny-sd"), str(checkpoint))
    config = tmp_path / "config"
    shutil.copytree(models_root / "tiny-sd", config, ignore=shutil.ignore_patterns("*.safetensors"))
    url = image_host.add("/models/download?id=1", checkpoint.read_bytes(), "application/octet-stream")
    out = call(dialect_server, admin, "load_model", url=url, model_id="ckpt-model", model_type="custom_ckpt",
               from_safetensors="yes", config=str(config)).json()
    assert out["status"] == "success" and out["model_status"] == "downloading", out
    verify_until(dialect_server, admin, "ckpt-model", ("loaded",))
    img = dialect_server.post(V6, gen(user, image_host, model_id="ckpt-model")).json()
    assert img["status"] == "success", img
    assert call(dialect_server, admin, "delete_model", model_id="ckpt-model").json()["status"] == "success"


def model_ids(server, admin) -> set[str]:
    return set(call(server, admin, "get_all_models").json()["models"])


def test_a_model_that_cannot_load_is_reported_failed_and_leaves_no_entry(dialect_server, admin):
    out = call(dialect_server, admin, "load_model", url="some-org/not-in-the-cache", model_id="uncached",
               revision="fp16").json()
    assert out["status"] == "success", out
    v = verify_until(dialect_server, admin, "uncached", ("failed",))
    assert v["status"] == "error" and "could not be loaded" in v["message"]
    assert "some-org/not-in-the-cache" in v["message"]
    wait_until(lambda: model_ids(dialect_server, admin), accept=lambda ids: "uncached" not in ids,
               what="uncached removed from the models")  # the failed warm-up removed it
    assert "uncached" not in (dialect_server.data_dir / "models.json").read_text()
    v = call(dialect_server, admin, "verify_model", model_id="uncached").json()
    assert v["model_status"] == "failed" and "some-org/not-in-the-cache" in v["message"], v  # still says why


def test_a_download_that_fails_leaves_no_entry_and_no_files(dialect_server, admin, image_host, models_root):
    out = call(dialect_server, admin, "load_model", url=image_host.url("/models/no-such-file"), model_id="gone",
               model_type="custom_ckpt").json()
    assert out["status"] == "success" and out["model_status"] == "downloading", out
    v = verify_until(dialect_server, admin, "gone", ("failed",))
    assert "download failed (HTTP 404)" in v["message"], v
    assert "gone" not in model_ids(dialect_server, admin)
    assert not (models_root / "downloads" / "gone").exists()


XSS_ID = "<img/src/onerror=alert(1)>"


@pytest.mark.parametrize("fields,message", [
    ({"url": "file:///etc/passwd", "model_id": "local"}, "url: the URL scheme 'file' is not accepted"),
    ({"url": "gopher://127.0.0.1:6379/_FLUSHALL", "model_id": "g"}, "url: the URL scheme 'gopher' is not accepted"),
    ({"url": "javascript:alert(1)", "model_id": "j"}, "url: the URL scheme 'javascript' is not accepted"),
    ({"url": "org/../../etc", "model_id": "dots"}, "is not a Hugging Face repo id"),
    ({"url": "<b>org</b>/model", "model_id": "markup"}, "is not a Hugging Face repo id"),
    ({"url": "org/model", "model_id": XSS_ID}, "model_id: an id may hold only letters, digits"),
    ({"url": "org/model", "model_id": "a/../../../../tmp/x"}, "model_id: an id may hold only"),
    ({"url": "org/model", "model_id": "quote\"d"}, "model_id: an id may hold only"),
    ({"url": "org/model", "model_id": "x" * 129}, "model_id: an id must be at most 128 characters"),
    ({"url": "http://127.0.0.1:1/w.safetensors", "model_id": XSS_ID}, "model_id: an id may hold only"),
    ({"url": "file:///etc/passwd", "model_id": "lora-file", "model_type": "lora"}, "the URL scheme 'file'"),
])
def test_load_model_refuses_bad_schemes_and_ids_and_keeps_no_entry(dialect_server, admin, fields, message):
    """admin load_model takes http(s) URLs, hub ids (org/name) and local paths only; ids are a safe charset
    (they are shown by the playground and name download folders). A refused load registers nothing."""
    r = call(dialect_server, admin, "load_model", **fields)
    assert r.status_code == 400 and r.json()["status"] == "error" and message in r.json()["message"], r.text
    assert fields["model_id"] not in model_ids(dialect_server, admin)
    models_file = json.loads((dialect_server.data_dir / "models.json").read_text())
    entries = {i: e for section in models_file.values() for i, e in section.items()}
    assert fields["model_id"] not in entries
    assert fields["url"] not in {e["location"] for e in entries.values()}


def test_load_vae_refuses_bad_schemes_and_ids(dialect_server, admin):
    for fields, message in (({"vae_id": "v", "vae_url": "file:///etc"}, "vae_url: the URL scheme 'file'"),
                            ({"vae_id": XSS_ID, "vae_url": "org/vae"}, "vae_id: an id may hold only")):
        r = call(dialect_server, admin, "load_vae", vae_type="diffusers", **fields)
        assert r.status_code == 400 and message in r.json()["message"], r.text


@pytest.mark.parametrize("fields,message", [
    ({"model_id": "x"}, "url is required"),
    ({"url": "org/model"}, "model_id is required"),
    ({"url": "org/model", "model_id": "x", "model_type": "diffusion"}, "model_type must be one of"),
    ({"url": "org/model", "model_id": "x", "model_type": "controlnet"}, "model_type controlnet is not supported"),
    ({"url": "/no/such/folder", "model_id": "x"}, "url: no such file or folder: /no/such/folder"),
    ({"url": "org/model", "model_id": "tiny-sd"}, "tiny-sd already exists"),
    ({"url": "org/model", "model_id": "bad id!"}, "model_id"),
    ({"url": "org/model", "model_id": "x", "webhook": "ftp://x"}, "webhook must be an http(s) URL"),
])
def test_load_model_errors(dialect_server, admin, fields, message):
    r = call(dialect_server, admin, "load_model", **fields)
    assert r.status_code == 400 and r.json()["status"] == "error" and message in r.json()["message"], r.text


def test_delete_errors(dialect_server, admin):
    r = call(dialect_server, admin, "delete_model", model_id="tiny-sd")
    assert r.status_code == 400 and "built in and cannot be removed" in r.json()["message"]
    r = call(dialect_server, admin, "delete_model", model_id="never-loaded")
    assert r.status_code == 400 and r.json()["message"] == "Model not found: never-loaded"
    assert call(dialect_server, admin, "delete_model").json()["message"] == "model_id is required"


def test_load_vae_and_use_it(dialect_server, admin, user, image_host, models_root):
    out = call(dialect_server, admin, "load_vae", vae_id="my-vae", vae_url=str(models_root / "tiny-sd" / "vae"),
               vae_type="diffusers").json()
    assert out == {"status": "success", "message": "VAE loaded", "vae_id": "my-vae"}
    img = dialect_server.post(V6, gen(user, image_host, vae="my-vae")).json()
    assert img["status"] == "success" and img["meta"]["vae"] == "my-vae", img
    r = call(dialect_server, admin, "load_vae", vae_id="v2", vae_url="x", vae_type="onnx")
    assert r.status_code == 400 and "vae_type must be one of: diffusers, safetensors, pt" in r.json()["message"]


def test_upload_image_and_base64_to_url(dialect_server, admin, user):
    png = png_bytes(40, 30)
    out = call(dialect_server, admin, "upload_image", base64_image=base64.b64encode(png).decode()).json()
    assert out["status"] == "success" and download(out["link"]) == png
    # base64_to_url: any key; a temporary URL (deleted after 24 h)
    jpeg = png_bytes(30, 20, fmt="JPEG")
    out = dialect_server.post("/api/v6/base64_to_url", {
        "key": user, "base64_string": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()}).json()
    assert out["status"] == "success" and "/temp/generations/" in out["output"][0], out
    assert out["output"][0].endswith(".jpg") and download(out["output"][0]) == jpeg
    big = base64.b64encode(b"\0" * (5 * 1024 * 1024 + 10)).decode()
    r = dialect_server.post("/api/v6/base64_to_url", {"key": user, "base64_string": big})
    assert r.status_code == 400 and "base64_string is too large" in r.json()["message"]
    r = dialect_server.post("/api/v6/base64_to_url", {"key": user, "base64_string": base64.b64encode(b"hi").decode()})
    assert r.status_code == 400 and "base64_string is not a valid image" in r.json()["message"]
    r = dialect_server.post("/api/v6/base64_to_url", {"key": user})
    assert r.status_code == 400 and r.json()["message"] == "base64_string is required"


def test_clear_cache_makes_workers_drop_their_models(dialect_server, admin, user, image_host):
    assert "tiny-sd" in web.get(f"{dialect_server.url}/health").json()["models_loaded"]
    out = call(dialect_server, admin, "clear_cache").json()
    assert out["status"] == "success", out
    wait_until(lambda: web.get(f"{dialect_server.url}/health").json()["models_loaded"],
               accept=lambda loaded: loaded == [], what="no model in /health's models_loaded")
    assert call(dialect_server, admin, "system_details").json()["model_count"] == 0
    assert dialect_server.post(V6, gen(user, image_host)).json()["status"] == "success"  # loads it again
    assert web.get(f"{dialect_server.url}/health").json()["models_loaded"] == ["tiny-sd"]
    reload = dialect_server.post("/api/v6/images/model_reload", {"key": admin, "model_id": "tiny-sd"}).json()
    assert reload["status"] == "success", reload
    wait_until(lambda: web.get(f"{dialect_server.url}/health").json()["models_loaded"],
               accept=lambda loaded: loaded == [], what="no model in /health's models_loaded")
    r = dialect_server.post("/api/v6/images/model_reload", {"key": admin, "model_id": "nope"})
    assert r.status_code == 400 and r.json()["message"] == "Model not found: nope"


def slow(key, image_host, seed):
    """A job long enough to still be running while the test acts (128 px, 30 full-strength steps)."""
    image_host.add("/slow.png", png_bytes(128, 128))
    return gen(key, image_host, init_image=image_host.url("/slow.png"), num_inference_steps=30, strength=1,
               seed=seed, instant_response="yes")


def running(server, job_id):
    return jobs_table(server, "status")[job_id][0] == "running"


def test_clear_queue_cancels_waiting_jobs_with_a_reason(dialect_server, admin, user, image_host):
    first = dialect_server.post(V6, slow(user, image_host, 1)).json()
    wait_until(lambda: running(dialect_server, first["id"]), every=0.02, what=f"job {first['id']} running")
    queued = [dialect_server.post(V6, gen(user, image_host, instant_response="yes", seed=s)).json()["id"]
              for s in (2, 3)]
    out = call(dialect_server, admin, "clear_queue").json()
    assert out["status"] == "success" and out["cancelled"] == queued, out
    for job_id in queued:
        r = dialect_server.post(f"/api/v6/images/fetch/{job_id}", {"key": user}).json()
        assert r["status"] == "failed" and r["message"] == "Cancelled by the server operator (clear_queue)", r
    done = poll_modelslab(dialect_server, first["fetch_result"], {"key": user})
    assert done["status"] == "success"  # the running job was not touched


def test_restart_server_restarts_workers_without_losing_jobs(dialect_server, admin, user, image_host):
    before = call(dialect_server, admin, "system_details").json()["workers"][0]
    first = dialect_server.post(V6, slow(user, image_host, 4)).json()
    wait_until(lambda: running(dialect_server, first["id"]), every=0.02, what=f"job {first['id']} running")
    waiting = dialect_server.post(V6, gen(user, image_host, instant_response="yes", seed=5)).json()
    out = call(dialect_server, admin, "restart_server").json()
    assert out["status"] == "success", out
    for job in (first, waiting):
        assert poll_modelslab(dialect_server, job["fetch_result"], {"key": user})["status"] == "success"
    after = wait_until(lambda: call(dialect_server, admin, "system_details").json()["workers"],
                       accept=lambda w: w and w[0]["pid"] != before["pid"] and w[0]["state"] == "idle",
                       what="a new idle worker process")
    assert after[0]["worker_id"] == "worker-0"
    workers = jobs_table(dialect_server, "worker_id", "attempts")
    assert workers[first["id"]] == ("worker-0", 1)  # finished by the old process, not run twice
    assert dialect_server.post(V6, gen(user, image_host)).json()["status"] == "success"


def test_openapi_shows_every_dialect_with_its_body(dialect_server):
    spec = web.get(f"{dialect_server.url}/openapi.json").json()
    expect = {  # path -> a field its body schema must show
        "/api/v1/enterprise/realtime/img2img": "instant_response", "/api/v6/realtime/img2img": "init_image",
        "/api/v1/enterprise/pony/img2img": "num_inference_steps", "/api/v1/enterprise/pony/fetch": "request_id",
        "/api/v1/enterprise/fetch": "request_id", "/getImagetoImage": "inference_type",
        "/getImageToImage": "file_urls", "/getImage": "refID", "/api/v1/enterprise/load_model": "from_safetensors",
        "/api/v1/enterprise/pony/verify_model": "model_id", "/api/v1/enterprise/realtime/clear_queue": "key",
        "/api/v6/base64_to_url": "base64_string", "/api/v6/images/model_reload": "model_id",
    }
    for path, field in expect.items():
        schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert field in schema["properties"], path
