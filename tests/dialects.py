"""The server the dialect tests share, and helpers to read its database and poll its jobs."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from diffserve.engine.tiny.flux import FLUX_TINY_LIMITS

from . import web
from .servers import DiffserveServer
from .waiting import wait_until

FLUX_DEV = "ap-fGhKl3mfkdlpqrshuwwabc"
IDEOGRAM = "ap-hTjXy7qplkzvnmwqrsdabc"
REDUX = "ap-gFhLq9zvbnmopxkytswabc"
CANNY = "ap-mNqZx4rtyjvbcfghwklpde"
DEPTH = "ap-gWfZx8rjvtyqopmnbcdehij"
PULID = "ap-hJkLm8nqwertyuiopasdfg"
GPT_IMAGE = "ap-zuzhawbgipcrnxdtefhjbnvhc"
KONTEXT = "ap-tK7gR4jP9sWbC1mNfE8uVzH2"
LOCAL_SD = "ap-local-tiny-sd"  # an app the operator defines: tiny SD, output follows the input image
LOCAL_BIG = "ap-local-big"  # the same model allowed up to 2048 px: shows the 1536 px input fit
LOCAL_BROKEN = "ap-local-broken"  # a model whose weights are missing: its jobs fail in the worker

# What an operator of this test server configured (DIFFSERVE_QOLABA_APPS).
QOLABA_APPS = {
    IDEOGRAM: {"model": "tiny-sd", "sizes": ["64x96"]},  # a closed model served by a local one
    KONTEXT: {"model": "tiny-flux-kontext-fast", "sizes": ["64x64"]},  # page sizes are too big for a tiny model
    LOCAL_SD: "tiny-sd",
    LOCAL_BIG: "tiny-sd-big",
    LOCAL_BROKEN: "broken-model",
}


def models_file(models_root: Path) -> dict:
    """Aliases of the built-in tiny models, the way an operator tunes a model's limits and defaults."""
    kontext_limits = FLUX_TINY_LIMITS.model_copy(update={"default_steps": 2}).model_dump()
    return {"models": {
        "tiny-sd-big": {"kind": "folder", "location": str(models_root / "tiny-sd"), "builtin": "tiny-sd",
                        "limits": {"min_size": 32, "max_size": 2048}},
        "broken-model": {"kind": "folder", "location": str(models_root / "no-such-model")},
        "tiny-flux-kontext-fast": {"kind": "folder", "location": str(models_root / "tiny-flux-kontext"),
                                   "builtin": "tiny-flux-kontext", "family": "flux-kontext",
                                   "limits": kontext_limits},
    }}


def start_dialect_server(data_dir: Path, models_root: Path) -> DiffserveServer:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "models.json").write_text(json.dumps(models_file(models_root)))
    env = {
        "DIFFSERVE_QOLABA_APPS": json.dumps(QOLABA_APPS),
        "DIFFSERVE_REALTIME_STEPS": "2",
    }
    return DiffserveServer(data_dir, models_root, env).start()


def jobs_table(server: DiffserveServer, *columns: str) -> dict[int, tuple]:
    with sqlite3.connect(server.data_dir / "diffserve.db") as db:
        rows = db.execute(f"select id, {', '.join(columns)} from jobs").fetchall()
    return {row[0]: row[1:] for row in rows}


def job_row(server: DiffserveServer, job_id: int, *columns: str) -> tuple:
    return jobs_table(server, *columns)[int(job_id)]


def poll_modelslab(server: DiffserveServer, url: str, body: dict, timeout: float = 120) -> dict:
    """POST `url` until the answer is no longer `processing`."""
    return wait_until(lambda: web.post(url, json=body, timeout=60).json(), timeout, every=0.2,
                      accept=lambda out: out["status"] != "processing", what=f"{url} to answer other than processing")


def download(url: str) -> bytes:
    r = web.get(url, timeout=30)
    assert r.status_code == 200, (url, r.status_code)
    return r.content
