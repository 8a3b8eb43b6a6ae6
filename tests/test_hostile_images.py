"""Images are checked before they are decoded, in every dialect and every image field; requested sizes are checked
before any work; derived images (Kontext's stitched reference) keep within a pixel budget; reference images per
request are bounded. Against the hardened server (tests/hardened.py) over loopback.

Each refusal case is sent four times at once while a probe thread GETs `/health`: every answer is a 4xx in the
dialect's own error shape naming the field, no job is created, and `/health` never takes a second (the A1111 and
OpenAI-mask paths used to decode on the event loop, with no pixel limit: one 13000x13000 PNG takes 1.2 s to
decode here, so four at once would hold it ~5 s)."""

from __future__ import annotations

import sqlite3
import threading
from base64 import b64decode
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from . import web
from .bodies import IMG2IMG, body
from .hardened import QOLABA_REFS_APP
from .hostile_corpus import b64, valid_png
from .servers import png_bytes
from .waiting import wait_until

INIT = b64(png_bytes(64, 64))
HUGE = 20000  # px: a requested side far past every model's maximum
KONTEXT = "tiny-flux-kontext"
COPIES = 4


@pytest.fixture(scope="module")
def server(hardened_server):
    return hardened_server


@pytest.fixture(scope="module")
def key(server):
    return server.create_key("--name", "hostile-images")


@pytest.fixture(scope="module")
def bomb() -> str:
    """A complete, valid 13000x13000 PNG (169 M pixels, ~0.7 MB), base64."""
    return b64(valid_png(13000, 13000))


class HealthProbe:
    """GETs /health every 50 ms in a thread while the block runs; `worst` is the slowest answer (s)."""

    def __init__(self, url: str) -> None:
        self.url, self.times, self.stop = url, [], threading.Event()

    def __enter__(self) -> "HealthProbe":
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        while not self.times:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)

    def _run(self) -> None:
        with web.client(timeout=30) as client:
            while not self.stop.is_set():
                t0 = time.monotonic()
                ok = client.get(f"{self.url}/health").status_code == 200
                self.times.append(time.monotonic() - t0 if ok else float("inf"))
                time.sleep(0.05)

    @property
    def worst(self) -> float:
        return max(self.times)


def job_count(server) -> int:
    with sqlite3.connect(server.data_dir / "diffserve.db", timeout=30) as con:
        return con.execute("select count(*) from jobs").fetchone()[0]


def inputs_files(server) -> int:
    folder = Path(server.data_dir) / "inputs"
    return sum(1 for _ in folder.rglob("*")) if folder.exists() else 0


# --- one sender per dialect: (server, key, fields) -> response; and its error shape: response -> (field, text) --

def v6(server, key, fields):
    return server.post(IMG2IMG, body(key, **{"init_image": INIT, **fields}))


def v7(server, key, fields):
    return server.post("/api/v7/images/image-to-image",
                       {"key": key, "model_id": KONTEXT, "prompt": "x", "init_image": INIT, **fields})


def qolaba(server, key, fields):
    return server.post("/getImagetoImage", {"app_id": QOLABA_REFS_APP, "image": INIT, "prompt": "x", **fields},
                       headers={"Authorization": f"Bearer {key}"})


def native(server, key, fields):
    return server.post("/v1/jobs", {"prompt": "x", "init_image": INIT, "steps": 2, **fields},
                       headers={"Authorization": f"Bearer {key}"})


def a1111(path: str):
    def send(server, key, fields):
        base = {"prompt": "x", "steps": 2, "width": 64, "height": 64}
        if path == "img2img":
            base["init_images"] = [INIT]
        return server.post(f"/sdapi/v1/{path}", {**base, **fields}, auth=("user", key))
    return send


def openai_edit(server, key, fields):
    """`fields`: image (base64, or a list for image[]), mask (base64), other form fields."""
    fields = dict(fields)
    images = fields.pop("image", INIT)
    files = [("image[]" if isinstance(images, list) else "image", (f"i{n}.png", b64decode(i), "image/png"))
             for n, i in enumerate(images if isinstance(images, list) else [images])]
    if "mask" in fields:
        files.append(("mask", ("mask.png", b64decode(fields.pop("mask")), "image/png")))
    return web.post(f"{server.url}/v1/images/edits", data={"prompt": "x", "model": "tiny-sd", **fields},
                    files=files, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def modelslab_error(r):
    out = r.json()
    assert out["status"] == "error", out
    return None, out["message"]


def qolaba_error(r):
    out = r.json()
    assert out["status"] == "FAILED" and out["error"] == "Input Validation Error", out
    return None, out["error_data"]


def native_error(r):
    error = r.json()["error"]
    return error.get("field"), error["message"]


def a1111_error(r):
    out = r.json()
    assert set(out) == {"error", "detail", "body", "errors"}, out
    return None, out["detail"]


def openai_error(r):
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error", error
    return error["param"], error["message"]


Sender = Callable[..., httpx.Response]
SHAPES: dict[str, tuple[Sender, Callable]] = {
    "v6": (v6, modelslab_error), "v7": (v7, modelslab_error), "qolaba": (qolaba, qolaba_error),
    "native": (native, native_error), "a1111-img2img": (a1111("img2img"), a1111_error),
    "a1111-txt2img": (a1111("txt2img"), a1111_error), "openai-edits": (openai_edit, openai_error),
}


def refused_everywhere(server, key, dialect: str, fields: dict, field: str, text: str) -> None:
    """COPIES identical requests at once: each a 4xx in the dialect's shape naming `field`, no job, /health fast."""
    send, shape = SHAPES[dialect]
    before, files = job_count(server), inputs_files(server)
    with HealthProbe(server.url) as probe, ThreadPoolExecutor(COPIES) as pool:
        answers = list(pool.map(lambda _: send(server, key, fields), range(COPIES)))
    for r in answers:
        assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
        named, message = shape(r)
        assert text in message and (named in (None, field)) and (named == field or message.startswith(field)), \
            (field, r.text[:500])
        assert len(r.content) < 2000
    assert job_count(server) == before
    assert inputs_files(server) == files  # nothing stored, or removed again (an init image before a bad reference)
    assert probe.worst < 1.0, f"/health took {probe.worst:.2f} s while {dialect} was refusing {field}"


def bomb_cases():
    """(dialect, fields with the bomb at BOMB, the field named, text of the message)."""
    too_large = "is too large: 13000 x 13000 pixels"
    return [
        ("v6", {"init_image": "BOMB"}, "init_image", too_large),
        ("v7", {"init_image": [INIT, "BOMB"]}, "init_image", too_large),  # a reference on a Kontext model
        ("qolaba", {"image": "BOMB"}, "image", too_large),
        ("qolaba", {"file_urls": ["BOMB"]}, "file_urls", too_large),
        ("native", {"init_image": "BOMB"}, "init_image", too_large),
        ("native", {"model_id": KONTEXT, "extra_images": ["BOMB"]}, "extra_images", too_large),
        ("a1111-img2img", {"init_images": ["BOMB"]}, "init_images", too_large),
        ("a1111-img2img", {"mask": "BOMB"}, "mask", too_large),
        ("openai-edits", {"image": "BOMB"}, "image", too_large),
        ("openai-edits", {"image": [INIT, "BOMB"], "model": KONTEXT}, "image", too_large),
        ("openai-edits", {"mask": "BOMB"}, "mask", too_large),
    ]


def _with_bomb(value, bomb: str):
    if isinstance(value, list):
        return [_with_bomb(v, bomb) for v in value]
    return bomb if value == "BOMB" else value


@pytest.mark.parametrize("dialect,fields,field,text", bomb_cases(),
                         ids=[f"{d}-{f}-{i}" for i, (d, _, f, _) in enumerate(bomb_cases())])
def test_a_13000px_png_is_refused_by_its_header_everywhere(server, key, bomb, dialect, fields, field, text):
    fields = {k: _with_bomb(v, bomb) for k, v in fields.items()}
    refused_everywhere(server, key, dialect, fields, field, text)


SIZE_CASES = [
    ("v6", {"width": HUGE, "height": HUGE}, "width", "width must be between"),
    ("v7", {"width": HUGE, "height": 512}, "width", "width must be between"),
    ("qolaba", {"height": HUGE, "width": 512}, "height", "height must be between"),
    ("native", {"width": HUGE, "height": HUGE}, "width", "width must be between"),
    ("native", {"mode": "txt2img", "init_image": "", "height": HUGE}, "height", "height must be between"),
    ("a1111-img2img", {"width": HUGE, "height": HUGE}, "width", "width must be between"),
    ("a1111-txt2img", {"width": 512, "height": HUGE}, "height", "height must be between"),
    ("a1111-img2img", {"width": 0}, "width", "width must be between"),
    ("a1111-img2img", {"height": -64}, "height", "height must be between"),
    ("a1111-txt2img", {"width": -1}, "width", "width must be between"),
    ("a1111-img2img", {"resize_mode": 7}, "resize_mode", "resize_mode must be 0, 1, 2 or 3"),
    ("openai-edits", {"size": f"{HUGE}x{HUGE}"}, "size", f"size {HUGE}x{HUGE}"),
]


@pytest.mark.parametrize("dialect,fields,field,text", SIZE_CASES,
                         ids=[f"{d}-{f}-{i}" for i, (d, _, f, _) in enumerate(SIZE_CASES)])
def test_requested_sizes_are_checked_before_any_work(server, key, dialect, fields, field, text):
    refused_everywhere(server, key, dialect, fields, field, text)


REFS = [INIT] * 17  # one past the default limits.max_reference_images (16)
COUNT_CASES = [
    ("native", {"model_id": KONTEXT, "extra_images": REFS}, "extra_images", "too many reference images: 17 (max 16"),
    ("v7", {"init_image": [INIT, *REFS]}, "init_image", "too many reference images: 17 (max 16"),
    ("qolaba", {"file_urls": REFS}, "file_urls", "too many reference images: 17 (max 16"),
    ("a1111-img2img", {"init_images": [INIT, *REFS], "override_settings": {"sd_model_checkpoint": KONTEXT}},
     "init_images", "too many reference images: 17 (max 16"),
    ("openai-edits", {"image": [INIT] * 17, "model": KONTEXT}, "image", "at most 16 images"),  # OpenAI's own cap
]


@pytest.mark.parametrize("dialect,fields,field,text", COUNT_CASES, ids=[c[0] for c in COUNT_CASES])
def test_reference_images_per_request_are_bounded(server, key, dialect, fields, field, text):
    refused_everywhere(server, key, dialect, fields, field, text)


def worker_peak_mb(server) -> dict[int, float]:
    """VmHWM (peak resident memory) of every process under the server, MB."""
    peaks = {}
    for proc in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            continue
        peaks[proc.pid] = next(int(line.split()[1]) / 1024 for line in status.splitlines()
                               if line.startswith("VmHWM:"))
    return peaks


def test_an_extreme_kontext_reference_keeps_within_the_output_area(server, key):
    """A 2048x1 reference beside a 256x256 init image: scaled to the output height first (as before), it was a
    524288x256 strip (134 M pixels, ~0.8 GB with its copy) for a 65,536-pixel output. Now the stitched strip
    keeps within the output's area: the job succeeds and no worker's peak memory grows by more than 300 MB over
    a Kontext job with an ordinary reference (which loads the model and sets the baseline)."""
    def run(reference: bytes) -> dict:
        r = native(server, key, {"model_id": KONTEXT, "init_image": b64(png_bytes(256, 256)),
                                 "extra_images": [b64(reference)], "width": 256, "height": 256})
        assert r.status_code == 202, r.text
        headers = {"Authorization": f"Bearer {key}"}
        return wait_until(lambda: web.get(f"{server.url}/v1/jobs/{r.json()['id']}", headers=headers,
                                          timeout=30).json(), 300,
                          accept=lambda job: job["status"] in ("succeeded", "failed", "cancelled"),
                          what=f"job {r.json()['id']} to end")

    assert run(png_bytes(64, 64))["status"] == "succeeded"
    before = worker_peak_mb(server)
    job = run(png_bytes(2048, 1))
    after = worker_peak_mb(server)
    assert job["status"] == "succeeded", job["error"]
    growth = max(after[pid] - before.get(pid, 0.0) for pid in after)
    assert growth < 300, f"a worker's peak memory grew {growth:.0f} MB for a 2048x1 reference"
