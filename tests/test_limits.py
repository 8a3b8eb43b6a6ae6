"""Limits through the real server: the per-key queue cap (429), request_count, and every size bound."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import contextmanager

import pytest
from PIL import Image, PngImagePlugin

from . import web
from .bodies import IMG2IMG, body
from .hardened import QOLABA_APP
from .servers import DiffserveServer, png_bytes
from .waiting import wait_until

REQUEST_COUNT = "/api/v6/processing/request_count"
LIMITS = {
    "DIFFSERVE_LIMITS__MAX_QUEUED_PER_KEY": "2",
    "DIFFSERVE_LIMITS__MAX_PROMPT_CHARS": "100",
    "DIFFSERVE_LIMITS__MAX_TEXT_CHARS": "64",
    "DIFFSERVE_LIMITS__MAX_BODY_BYTES": "300000",
    "DIFFSERVE_LIMITS__MAX_BATCH_PIXELS": str(64 * 64 * 2),
    "DIFFSERVE_IMAGES__MAX_BYTES": "100000",
    "DIFFSERVE_IMAGES__MAX_PIXELS": str(128 * 128),
    "DIFFSERVE_QOLABA_APPS": json.dumps({QOLABA_APP: "tiny-sd"}),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_root):
    srv = DiffserveServer(tmp_path_factory.mktemp("limits"), models_root, env_overrides=LIMITS).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def key(server):
    BLOCKER.append(server.create_key("--name", "blocker", "--max-queued", "0"))
    return server.create_key("--name", "default-cap")


def db(server) -> sqlite3.Connection:
    return sqlite3.connect(server.data_dir / "diffserve.db", timeout=30)


def job_count(server) -> int:
    with db(server) as con:
        return con.execute("select count(*) from jobs").fetchone()[0]


def unfinished(server) -> int:
    with db(server) as con:
        return con.execute("select count(*) from jobs where status in ('queued','running')").fetchone()[0]


@contextmanager
def workers_paused(server, image_host):
    """Freeze the (single) worker in the middle of a job, so queued jobs stay queued.

    The worker is stopped (SIGSTOP) only while the database shows it running a long "blocker" job
    (of another key): then it is not waiting on the queue's cross-process event, which an enqueue
    must be able to set, and it holds no database write lock (checked; else it is let go and retried).
    """
    with db(server) as con:
        pids = [pid for (pid,) in con.execute("select pid from workers")]
    assert len(pids) == 1
    pid = pids[0]
    for _ in range(20):
        blocker = server.post(IMG2IMG, body(BLOCKER[0], image_host, num_inference_steps=50, instant_response="yes"))
        job_id = blocker.json()["id"]
        wait_until(lambda: status(server, job_id), every=0.005, accept=lambda s: s != "queued",
                   what=f"blocker job {job_id} out of the queue")
        os.kill(pid, signal.SIGSTOP)
        if status(server, job_id) == "running" and writable(server):
            break
        os.kill(pid, signal.SIGCONT)
    else:
        raise AssertionError("could not catch the worker in a job")
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


BLOCKER: list[str] = []


def status(server, job_id: int) -> str:
    with db(server) as con:
        return con.execute("select status from jobs where id = ?", (job_id,)).fetchone()[0]


def writable(server) -> bool:
    try:
        probe = sqlite3.connect(server.data_dir / "diffserve.db", timeout=0.5)
        probe.execute("BEGIN IMMEDIATE")
        probe.rollback()
        probe.close()
        return True
    except sqlite3.OperationalError:
        return False


def wait_idle(server, timeout: float = 60) -> None:
    wait_until(lambda: unfinished(server), timeout, accept=lambda n: n == 0, what="no unfinished job")
    assert unfinished(server) == 0


def test_per_key_cap_answers_429_and_request_count_tracks_it(server, key, image_host):
    capped_at_one = server.create_key("--name", "one", "--max-queued", "1")
    uncapped = server.create_key("--name", "uncapped", "--max-queued", "0")
    wait_idle(server)
    with workers_paused(server, image_host):
        for _ in range(2):
            assert server.post(IMG2IMG, body(key, image_host, instant_response="yes")).json()["status"] == "processing"
        before = job_count(server)
        r = server.post(IMG2IMG, body(key, image_host, instant_response="yes"))
        assert r.status_code == 429, r.text
        out = r.json()
        assert set(out) == {"status", "message", "retry_after"}
        assert out["status"] == "error" and out["message"] == "Rate limit exceeded. Maximum 2 queued requests allowed."
        assert isinstance(out["retry_after"], int) and out["retry_after"] >= 1
        assert r.headers["retry-after"] == str(out["retry_after"])
        assert job_count(server) == before  # nothing queued, no image fetched into storage

        assert server.post(REQUEST_COUNT, {"key": key}).json() == {"status": "success", "processing_count": 2}
        # the same cap through the Qolaba dialect, in its envelope
        r = server.post("/getImagetoImage", {"app_id": QOLABA_APP, "image": image_host.url("/cat.png"),
                                             "prompt": "a cat", "celery": True},
                        headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 429 and r.json()["status"] == "FAILED", r.text
        assert r.json()["error_data"] == "Rate limit exceeded. Maximum 2 queued requests allowed."
        assert job_count(server) == before
        assert server.post(REQUEST_COUNT, {"key": capped_at_one}).json()["processing_count"] == 0

        assert server.post(IMG2IMG, body(capped_at_one, image_host, instant_response="yes")).status_code == 200
        r = server.post(IMG2IMG, body(capped_at_one, image_host, instant_response="yes"))
        assert r.status_code == 429 and "Maximum 1 queued requests" in r.json()["message"]
        for _ in range(3):  # max-queued 0: no cap
            assert server.post(IMG2IMG, body(uncapped, image_host, instant_response="yes")).status_code == 200
    wait_idle(server)
    assert server.post(REQUEST_COUNT, {"key": key}).json()["processing_count"] == 0
    assert server.post(IMG2IMG, body(key, image_host)).json()["status"] == "success"


def test_concurrent_submissions_do_not_overshoot_the_cap(server, key, image_host):
    wait_idle(server)
    with workers_paused(server, image_host):
        with web.client(timeout=60) as client:
            import concurrent.futures as cf

            with cf.ThreadPoolExecutor(6) as pool:
                codes = list(pool.map(
                    lambda _: client.post(f"{server.url}{IMG2IMG}",
                                          json=body(key, image_host, instant_response="yes")).status_code,
                    range(6)))
        assert codes.count(200) == 2 and codes.count(429) == 4, codes
        assert server.post(REQUEST_COUNT, {"key": key}).json()["processing_count"] == codes.count(200)
    wait_idle(server)


def test_request_count_needs_a_key(server):
    r = server.post(REQUEST_COUNT, {})
    assert r.status_code == 401 and r.json() == {"status": "error", "message": "API key required"}


def test_keys_cli_max_queued(server):
    out = subprocess.run([sys.executable, "-m", "diffserve.cli.main", "keys", "create", "--max-queued", "-1"],
                         env=server.env(), capture_output=True, text=True)
    assert out.returncode != 0 and "must be >= 0" in out.stderr
    server.create_key("--name", "listed", "--max-queued", "7")
    listing = server.cli("keys", "list")
    assert any("listed" in line and "max-queued 7" in line for line in listing.splitlines())


def test_body_size_limit_with_and_without_content_length(server, key, image_host):
    big = body(key, image_host, prompt="x" * 400_000)
    r = server.post(IMG2IMG, big)
    assert r.status_code == 400 and r.json() == {"status": "error",
                                                 "message": "Request body is too large (max 300000 bytes)"}

    def chunks():
        yield b'{"key": "%s", "prompt": "' % key.encode()
        for _ in range(40):
            yield b"y" * 10_000
        yield b'"}'

    r = web.post(f"{server.url}{IMG2IMG}", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 400 and "Request body is too large" in r.json()["message"]


@pytest.mark.parametrize("change,message", [
    ({"prompt": "p" * 101}, "prompt is too long: 101 characters (max 100)"),
    ({"negative_prompt": "n" * 5000}, "negative_prompt is too long: 5000 characters (max 100)"),
    ({"track_id": "t" * 65}, "track_id is too long: 65 characters (max 64)"),
    ({"scheduler": "S" * 1000}, "scheduler is too long: 1000 characters (max 64)"),
    ({"lora_model": "a," + "b" * 70}, "lora_model is too long: 70 characters (max 64)"),
    ({"webhook": "http://example.com/" + "w" * 100}, "webhook is too long"),
    ({"samples": 3}, "samples x width x height is too large: 3 x 64 x 64 = 12288 pixels (max 8192)"),
    ({"width": 128, "height": 128}, "samples x width x height is too large: 1 x 128 x 128 = 16384 pixels"),
])
def test_text_and_batch_limits(server, key, image_host, change, message):
    before = job_count(server)
    r = server.post(IMG2IMG, body(key, image_host, **change))
    assert r.status_code == 400 and r.json()["status"] == "error" and message in r.json()["message"], r.text
    assert job_count(server) == before


def test_at_the_limits_is_fine(server, key, image_host):
    out = server.post(IMG2IMG, body(key, image_host, prompt="p" * 100, track_id="t" * 64, samples=2)).json()
    assert out["status"] == "success" and len(out["output"]) == 2, out


def padded_png(extra_bytes: int) -> bytes:
    """A 64x64 PNG (few pixels) made large by a text chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text("padding", "z" * extra_bytes)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def test_image_byte_and_pixel_limits(server, key, image_host):
    heavy = padded_png(150_000)
    wide = png_bytes(200, 100)
    image_host.add("/heavy.png", heavy)
    cases = [
        (base64.b64encode(heavy).decode(), "init_image is too large"),
        (image_host.url("/heavy.png"), "init_image is too large"),
        (base64.b64encode(wide).decode(), "init_image is too large: 200 x 100 pixels (max 16384)"),
    ]
    before = job_count(server)
    for init, message in cases:
        r = server.post(IMG2IMG, body(key, image_host, init_image=init))
        assert r.status_code == 400 and message in r.json()["message"], r.text
    assert job_count(server) == before
    ok = server.post(IMG2IMG, body(key, image_host, init_image=base64.b64encode(padded_png(50_000)).decode()))
    assert ok.json()["status"] == "success", ok.text
