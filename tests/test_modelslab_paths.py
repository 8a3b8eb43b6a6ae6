"""Every path ModelsLab's clients use: v7 (the CLI's), the enterprise image paths and management ops the
official SDK calls, unknown paths in each API's own error shape -- with the vendor's own SDK and CLI."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from . import web
from .jobs_helpers import data_uri


@pytest.fixture(scope="module")
def key(jobs_server):
    return jobs_server.create_key("--name", "modelslab-paths")


@pytest.fixture(scope="module")
def admin(jobs_server):
    return jobs_server.create_key("--admin", "--name", "modelslab-admin")


def test_v7_image_to_image_with_the_key_in_a_header(jobs_server, key, image_host):
    r = web.post(f"{jobs_server.url}/api/v7/images/image-to-image", headers={"Key": key}, timeout=120, json={
        "init_image": image_host.url("/cat.png"), "model_id": "tiny-sd", "prompt": "a cat", "strength": 0.7})
    out = r.json()
    assert r.status_code == 200 and out["status"] == "success", out
    fetched = web.post(f"{jobs_server.url}/api/v7/images/fetch/{out['id']}", headers={"Key": key}, json={}).json()
    assert fetched["status"] == "success" and fetched["output"] == out["output"]


def test_v7_aspect_ratio_and_image_lists(jobs_server, key):
    url = f"{jobs_server.url}/api/v7/images/image-to-image"
    wide = web.post(url, timeout=120, json={"key": key, "init_image": [data_uri()], "prompt": "x",
                                              "aspect_ratio": "16:9", "num_inference_steps": 4}).json()
    assert wide["status"] == "success" and (wide["meta"]["W"], wide["meta"]["H"]) == (512, 288)
    two = web.post(url, timeout=120, json={"key": key, "init_image": [data_uri(), data_uri()], "prompt": "x"})
    assert two.status_code == 400
    assert two.json() == {"status": "error", "message": "init_image: model tiny-sd (sd models) takes no reference "
                                                        "images besides the init image"}
    kontext = web.post(url, timeout=120, json={
        "key": key, "model_id": "tiny-flux-kontext", "init_image": data_uri(), "init_image_2": data_uri(48, 48),
        "prompt": "put them together", "num_inference_steps": 2}).json()
    assert kontext["status"] == "success", kontext
    bad = web.post(url, json={"key": key, "init_image": data_uri(), "prompt": "x", "aspect_ratio": "wide"})
    assert bad.status_code == 400 and "aspect_ratio" in bad.json()["message"]


def test_enterprise_image_paths_and_their_fetch(jobs_server, key):
    for path, fetch in (("/api/v1/enterprise/images/img2img", "/api/v1/enterprise/images/fetch"),
                        ("/api/v1/enterprise/img2img", "/api/v1/enterprise/fetch")):
        out = web.post(f"{jobs_server.url}{path}", timeout=120, json={
            "key": key, "init_image": data_uri(), "prompt": "x", "num_inference_steps": 4,
            "instant_response": True}).json()
        assert out["status"] == "processing" and out["fetch_result"].endswith(f"{fetch}/{out['id']}"), out
        fetched = web.post(out["fetch_result"], json={"key": key}, timeout=60).json()
        assert fetched["id"] == out["id"] and fetched["status"] in ("processing", "success")


def test_management_under_enterprise_images(jobs_server, admin, key):
    details = web.post(f"{jobs_server.url}/api/v1/enterprise/images/system_details", json={"key": admin}).json()
    assert details["status"] == "ok" and details["worker_count"] == 1
    update = web.post(f"{jobs_server.url}/api/v1/enterprise/images/update", json={"key": admin}).json()
    assert update["status"] == "success" and update["version"] == "0.1.0"
    refused = web.post(f"{jobs_server.url}/api/v1/enterprise/images/clear_queue", json={"key": key})
    assert refused.status_code == 403 and refused.json()["message"] == "This endpoint needs an admin API key"


def test_unknown_paths_answer_in_each_apis_shape(jobs_server):
    r = web.post(f"{jobs_server.url}/api/v6/images/nothing-here", json={})
    assert r.status_code == 404 and r.json() == {"status": "error",
                                                 "message": "Not Found: POST /api/v6/images/nothing-here"}
    r = web.get(f"{jobs_server.url}/api/v6/images/img2img")
    assert r.status_code == 405 and r.json()["status"] == "error" and "Method Not Allowed" in r.json()["message"]
    r = web.get(f"{jobs_server.url}/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = web.post(f"{jobs_server.url}/getNothing", json={})
    assert r.status_code == 404 and r.json()["status"] == "FAILED" and r.json()["error"] == "Service Not Found"
    assert "detail" not in web.delete(f"{jobs_server.url}/api/v1/enterprise/fetch/1").json()


def test_the_official_python_sdk(jobs_server, key, admin, image_host):
    from modelslab_py.core.apis.community import Community
    from modelslab_py.core.client import Client
    from modelslab_py.schemas.community import Image2Image

    def client(api_key: str) -> Client:
        c = Client(api_key=api_key)
        c.base_url = f"{jobs_server.url}/api/"  # the one change: the base URL
        return c

    for enterprise in (False, True):
        api = Community(client(key), enterprise=enterprise)
        out = api.image_to_image(Image2Image(prompt="a cat", model_id="tiny-sd", init_image=image_host.url("/cat.png"),
                                             num_inference_steps=4, strength=0.5))
        assert out["status"] == "success" and out["output"], out
        assert api.fetch(str(out["id"]))["status"] == "success"
    details = Community(client(admin), enterprise=True).system_details()
    assert details["status"] == "ok" and details["workers"][0]["worker_id"] == "worker-0"
    assert Community(client(admin), enterprise=True).clear_cache()["status"] == "success"


def test_the_official_cli(jobs_server, key, image_host, tmp_path):
    binary = shutil.which("modelslab", path=str(Path(sys.executable).parent))
    assert binary, "modelslab-cli is in the test lock"
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"], "MODELSLAB_NO_UPDATE_CHECK": "1"}
    out = subprocess.run([binary, "generate", "image-to-image", "--base-url", jobs_server.url, "--api-key", key,
                          "--init-image", image_host.url("/cat.png"), "--prompt", "a cat", "--model", "tiny-sd",
                          "--strength", "0.6", "--output-dir", str(tmp_path / "out"), "--no-update-check"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    saved = list((tmp_path / "out").glob("*.png"))
    assert len(saved) == 1 and Image.open(saved[0]).size == (64, 64)


def test_the_sdks_realtime_text2img_and_inpaint(jobs_server, key, image_host):
    """`Realtime(client, enterprise=...)`: text_to_image and inpainting on /api/v6/realtime and
    /api/v1/enterprise/realtime, on the server's realtime model."""
    from modelslab_py.core.apis.realtime import Realtime
    from modelslab_py.core.client import Client
    from modelslab_py.schemas.realtime import RealtimeInpaintingSchema, RealtimeText2ImageSchema

    mask = image_host.add("/realtime-mask.png", half_mask())
    for enterprise in (False, True):
        client = Client(api_key=key)
        client.base_url = f"{jobs_server.url}/api/"  # the one change: the base URL
        api = Realtime(client, enterprise=enterprise)
        out = api.text_to_image(RealtimeText2ImageSchema(prompt="a cat", width=64, height=96, samples=2))
        assert out["status"] == "success" and len(out["output"]) == 2, out
        assert Image.open(io.BytesIO(web.get(out["output"][0]).content)).size == (64, 96)
        out = api.inpainting(RealtimeInpaintingSchema(prompt="a cat", init_image=image_host.url("/cat.png"),
                                                      mask_image=mask, strength=1.0, width=64, height=64))
        assert out["status"] == "success", out
        kept = np.asarray(Image.open(io.BytesIO(web.get(out["output"][0]).content)).convert("RGB"))[:, 40:]
        source = np.asarray(Image.open(io.BytesIO(web.get(image_host.url("/cat.png")).content)).convert("RGB"))
        assert (kept == source[:, 40:]).all()  # black half of the mask kept


def half_mask() -> bytes:
    """White (repaint) on the left half, black (keep) on the right."""
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    return buf.getvalue()


def test_the_clis_v7_text_to_image_and_inpaint(jobs_server, key, image_host, tmp_path):
    """`modelslab generate image` (/api/v7/images/text-to-image) and `generate inpaint` (/api/v7/images/inpaint)."""
    binary = shutil.which("modelslab", path=str(Path(sys.executable).parent))
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"], "MODELSLAB_NO_UPDATE_CHECK": "1"}
    common = ["--base-url", jobs_server.url, "--api-key", key, "--model", "tiny-sd", "--no-update-check"]
    mask = image_host.add("/cli-mask.png", half_mask())
    runs = {"image": ["--prompt", "a cat", "--width", "96", "--height", "64", "--steps", "4"],
            "inpaint": ["--prompt", "a cat", "--init-image", image_host.url("/cat.png"), "--mask-image", mask]}
    for command, args in runs.items():
        out_dir = tmp_path / command
        out = subprocess.run([binary, "generate", command, *common, *args, "--output-dir", str(out_dir)],
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        saved = list(out_dir.glob("*.png"))
        assert len(saved) == 1, out.stdout
        assert Image.open(saved[0]).size == ((96, 64) if command == "image" else (64, 64))
