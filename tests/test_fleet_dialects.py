"""Every dialect once on the fleet (tests/fleet.py): the request goes in through an API process with no workers,
runs on a worker on another host, and comes back as the dialect's answer with an image the client can fetch."""

from __future__ import annotations

import base64
import io
import json

import openai
import pytest
import webuiapi
from PIL import Image

from . import web
from .dialects import LOCAL_SD, poll_modelslab
from .jobs_helpers import Jobs, data_uri
from .servers import png_bytes

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def key(fleet):
    return fleet.api.create_key("--name", "fleet-dialects", "--max-queued", "0")


def fetched(url: str) -> Image.Image:
    r = web.get(url, timeout=30)
    assert r.status_code == 200, (url, r.status_code)
    return Image.open(io.BytesIO(r.content))


def test_modelslab_v6_queued_then_fetched(fleet, key, image_host):
    out = fleet.api.post("/api/v6/images/img2img", {
        "key": key, "prompt": "a harbour", "init_image": image_host.url("/cat.png"), "num_inference_steps": "2",
        "strength": 0.5, "instant_response": "yes"}).json()
    assert out["status"] == "processing", out
    done = poll_modelslab(fleet.api, out["fetch_result"], {"key": key})
    assert done["status"] == "success" and fetched(done["output"][0]).size == (64, 64)


def test_modelslab_v7(fleet, key, image_host):
    out = fleet.api.post("/api/v7/images/image-to-image", {
        "key": key, "model_id": "tiny-sd", "prompt": "a lighthouse", "init_image": image_host.url("/cat.png"),
        "strength": 0.5}).json()
    if out["status"] == "processing":
        out = poll_modelslab(fleet.api, out["fetch_result"], {"key": key})
    assert out["status"] == "success", out
    assert fetched(out["output"][0]).size == (64, 64)


def test_realtime(fleet, key, image_host):
    out = fleet.api.post("/api/v1/enterprise/realtime/img2img", {
        "key": key, "prompt": "a cat", "init_image": image_host.url("/cat.png"), "width": "64", "height": "64",
        "strength": 0.7, "base64": True}).json()
    assert out["status"] == "success", out
    b64 = out["output"][0]
    b64 = web.get(b64).text if b64.startswith("http") else b64
    assert Image.open(io.BytesIO(base64.b64decode(b64.split(",")[-1]))).size == (64, 64)


def test_qolaba(fleet, key, image_host):
    out = web.post(f"{fleet.api.url}/getImagetoImage", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                   json={"app_id": LOCAL_SD, "image": image_host.url("/cat.png"), "prompt": "a boat",
                           "strength": 0.5}).json()
    assert out["status"] == "SUCCESS", out
    assert json.dumps(out).count("http") >= 1


def test_openai_images_edit(fleet, key):
    client = openai.OpenAI(api_key=key, base_url=f"{fleet.api.url}/v1", max_retries=0)
    out = client.images.edit(image=("in.png", png_bytes(64, 64), "image/png"), prompt="a watercolor",
                             model="tiny-sd", response_format="b64_json", quality="low")
    assert Image.open(io.BytesIO(base64.b64decode(out.data[0].b64_json))).size == (64, 64)


def test_automatic1111_img2img(fleet, key):
    api = webuiapi.WebUIApi(baseurl=f"{fleet.api.url}/sdapi/v1", sampler="Euler a", steps=4)
    api.set_auth("any-user", key)
    result = api.img2img(images=[Image.open(io.BytesIO(png_bytes(64, 64)))], prompt="a watercolor", seed=5,
                         width=64, height=64, denoising_strength=0.5)
    assert result.image.size == (64, 64)


def test_native_jobs_progress_and_cancel_reach_a_worker_elsewhere(fleet, key):
    jobs = Jobs(fleet.api, key)
    job = jobs.submit(init_image=data_uri(128, 128), steps=20, strength=1.0)
    seen = []
    with jobs.http.stream("GET", f"/v1/jobs/{job['id']}/events", timeout=120) as stream:
        event = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                seen.append((event, json.loads(line[6:])))
    assert seen[-1][0] == "succeeded", seen[-1]
    steps = [data["progress"]["step"] for event, data in seen if event == "running"]
    assert steps and steps[-1] > 0  # steps reported by the worker on its host, read from the store
    assert fetched(jobs.get(job["id"])["outputs"][0]).size == (128, 128)

    long = jobs.submit(init_image=data_uri(256, 256), steps=50, strength=1.0)
    jobs.wait(long["id"], lambda j: j["status"] == "running" and j["progress"]["step"] >= 1)
    assert jobs.http.post(f"/v1/jobs/{long['id']}/cancel").status_code in (200, 202)
    stopped = jobs.done(long["id"])
    assert stopped["status"] == "cancelled" and stopped["progress"]["step"] < 50, stopped
