"""Assets over HTTP on the running test server: a LoRA added to its models file while it runs is
used by the next request (no restart), and unknown or incomplete asset requests are 400s naming
the field, answered before any job is created."""

from __future__ import annotations

import sqlite3

import pytest

from diffserve.engine.models.registry import ModelRegistry
from diffserve.engine.tiny.sd import build_tiny_sd

from . import web
from .tiny_assets import TinyAssets, build_tiny_assets

IMG2IMG = "/api/v6/images/img2img"


@pytest.fixture(scope="module")
def assets(models_root) -> TinyAssets:
    return build_tiny_assets(build_tiny_sd(models_root / "tiny-sd"), models_root / "tiny-assets")


@pytest.fixture(scope="module")
def served_lora(server, assets) -> str:
    """A kohya-format LoRA written into the running server's models file (as `diffserve models add` would)."""
    registry = ModelRegistry.load(server.data_dir / "models.json", server.models_root)
    registry.add_asset("loras", "tiny-detail", {"kind": "file", "location": str(assets.lora_kohya), "family": "sd"},
                       replace=True)
    return "tiny-detail"


def body(key, image_host, **over):
    b = {"key": key, "model_id": "tiny-sd", "prompt": "a lighthouse", "init_image": image_host.url("/cat.png"),
         "samples": 1, "num_inference_steps": 4, "strength": 0.7, "seed": 3, "safety_checker": "no",
         "enhance_prompt": "no", "tomesd": "no"}
    b.update(over)
    return b


def image_bytes(server, b) -> bytes:
    r = server.post(IMG2IMG, b)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "success", out
    return web.get(out["output"][0], timeout=30).content


def job_count(server) -> int:
    with sqlite3.connect(server.data_dir / "diffserve.db") as db:
        return db.execute("select count(*) from jobs").fetchone()[0]


def test_lora_request_over_http(server, key, image_host, served_lora):
    plain = image_bytes(server, body(key, image_host))
    with_lora = image_bytes(server, body(key, image_host, lora_model=served_lora, lora_strength="0.9"))
    assert with_lora != plain
    assert image_bytes(server, body(key, image_host)) == plain  # the worker's pipeline is back to the base model


@pytest.mark.parametrize("over, field, message", [
    ({"lora_model": "tiny-detail, no-such-lora"}, "lora_model", "lora_model: LoRA not found: no-such-lora"),
    ({"vae": "no-such-vae"}, "vae", "vae: VAE not found: no-such-vae"),
    ({"ip_adapter_id": "ip-adapter_sd15"}, "ip_adapter_image", "ip_adapter_image is required with ip_adapter_id"),
    ({"ip_adapter_id": "ip-adapter_sdxl", "ip_adapter_image": "http://127.0.0.1:9/face.png"}, "ip_adapter_id",
     "ip_adapter_id: IP-Adapter ip-adapter_sdxl is for sdxl models; tiny-sd is a model of the sd family"),
])
def test_unknown_or_incomplete_assets_are_refused_at_submit(server, key, image_host, served_lora, over, field,
                                                            message):
    jobs = job_count(server)
    r = server.post(IMG2IMG, body(key, image_host, **over))
    assert r.status_code == 400, r.text
    assert r.json() == {"status": "error", "message": message} and field in message
    assert job_count(server) == jobs
