"""A hostile-input corpus through HTTP, on a server with the default network rules (private URLs refused).

Every refusal must come early, in the dialect's error shape, small, naming the field, with nothing
queued; accepted oddities (animated, CMYK, palette, 16-bit, EXIF-rotated images) must work. The
server must stay up, and a valid request must still succeed afterwards.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from . import web
from .bodies import IMG2IMG, body
from .hostile_corpus import TEN_MB, b64, image_corpus
from .hardened import QOLABA_REFS_APP
from .servers import png_bytes

INIT = b64(png_bytes(64, 64))


class Canary:
    """A real HTTP server on loopback that counts every request reaching it: it must stay at zero."""

    def __init__(self) -> None:
        hits = self.hits = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                hits.append(self.path)
                data = png_bytes(64, 64)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_GET  # noqa: N815

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def canary():
    c = Canary()
    yield c
    c.server.shutdown()


@pytest.fixture(scope="module")
def server(hardened_server):
    return hardened_server


@pytest.fixture(scope="module")
def key(server):
    return server.create_key("--name", "hostile")


def job_count(server) -> int:
    with sqlite3.connect(server.data_dir / "diffserve.db", timeout=30) as con:
        return con.execute("select count(*) from jobs").fetchone()[0]


def refused(r: httpx.Response, status: int, message: str) -> None:
    assert r.status_code == status, r.text[:500]
    out = r.json()
    assert out["status"] == "error" and message in out["message"], r.text[:500]
    assert len(r.content) < 2000  # no huge echo of what was sent


def private_urls(port: int) -> list[str]:
    return [
        f"http://127.0.0.1:{port}/x.png", f"http://localhost:{port}/x.png", f"http://127.1:{port}/x.png",
        f"http://2130706433:{port}/x.png", f"http://0x7f000001:{port}/x.png", f"http://[::1]:{port}/x.png",
        f"http://[::ffff:127.0.0.1]:{port}/x.png", f"http://0.0.0.0:{port}/x.png",
        "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/latest/", "http://10.0.0.1/x.png",
        "http://192.168.1.1/x.png", "http://172.16.0.1/x.png", "http://100.64.0.1/x.png", "http://224.0.0.1/x.png",
    ]


def test_private_and_metadata_urls_are_refused_everywhere(server, key, canary):
    before = job_count(server)
    for url in private_urls(canary.port):
        refused(server.post(IMG2IMG, body(key, init_image=url)), 400,
                "init_image URL is not allowed: it resolves to a private or reserved address")
        refused(server.post(IMG2IMG, body(key, init_image=INIT, ip_adapter_image=url)), 400,
                "ip_adapter_image URL is not allowed")
        refused(server.post(IMG2IMG, body(key, init_image=INIT, webhook=url)), 400,
                "webhook URL is not allowed: it resolves to a private or reserved address")
    for url in ("file:///etc/passwd", f"ftp://127.0.0.1:{canary.port}/x.png", "gopher://127.0.0.1:6379/_INFO"):
        refused(server.post(IMG2IMG, body(key, init_image=url)), 400, "init_image URL must use http or https")
    refused(server.post(IMG2IMG, body(key, init_image="http://metadata.google.internal/computeMetadata/v1/")),
            400, "Unable to fetch image from provided URL")
    assert job_count(server) == before
    assert canary.hits == []


def test_qolaba_file_urls_follow_the_same_rules(server, key, canary):
    before = job_count(server)
    for url in private_urls(canary.port)[:3] + ["http://169.254.169.254/latest/meta-data/"]:
        r = server.post("/getImagetoImage", {"app_id": QOLABA_REFS_APP, "image": INIT, "prompt": "a cat",
                                             "file_urls": [url], "celery": True},
                        headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 400, r.text
        out = r.json()
        assert out["status"] == "FAILED" and out["error"] == "Input Validation Error"
        assert out["error_data"] == "file_urls URL is not allowed: it resolves to a private or reserved address"
    assert job_count(server) == before
    assert canary.hits == []


CORPUS = image_corpus()


@pytest.mark.parametrize("name", list(CORPUS))
def test_image_corpus(server, key, name):
    data, size, message = CORPUS[name]
    before = job_count(server)
    for init in (b64(data), f"data:image/png;base64,{b64(data)}"):
        r = server.post(IMG2IMG, body(key, init_image=init))
        if size is None:
            refused(r, 400, message)
            assert job_count(server) == before
        else:
            out = r.json()
            assert out["status"] == "success", (name, out)
            assert (out["meta"]["W"], out["meta"]["H"]) == size, name


@pytest.mark.parametrize("init,message", [
    ("@@@ not base64 ###", "init_image is not a valid URL or base64 image"),
    ("data:text/html;base64,PGh0bWw+PC9odG1sPg==", "init_image is not a valid URL or base64 image"),
    ("data:image/png;base64,", "init_image is not a valid URL or base64 image"),
    ("iVBORw0KGgo" + "A" * 5, "init_image is not a valid image"),  # a PNG signature, then nothing
    ("A" * (28 * 1024 * 1024), "init_image is too large"),
    ("x" * TEN_MB, "init_image is not a valid image"),  # valid base64 alphabet: decodes to junk
    ("!" * TEN_MB, "init_image is not a valid URL or base64 image"),
    ("http://" + "a" * TEN_MB, "init_image"),
])
def test_junk_and_oversized_base64(server, key, init, message):
    before = job_count(server)
    refused(server.post(IMG2IMG, body(key, init_image=init)), 400, message)
    assert job_count(server) == before


RAW_BODIES = [
    (b'{"key":', "Invalid JSON body"),
    (b'{"a": 1}}', "Invalid JSON body"),
    (b"\xff\xfe\x00garbage", "Invalid JSON body"),
    (b"null", "Request body must be a JSON object"),
    (b'"a string"', "Request body must be a JSON object"),
    (b'{"key": "k", "guidance_scale": NaN}', "Invalid JSON body"),
    (b'{"key": "k", "strength": -Infinity}', "Invalid JSON body"),
    (b'{"key": "k", "samples": ' + b"9" * 5000 + b"}", "Invalid JSON body"),
    (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "Invalid JSON body"),
    (b'{"a": ' + b'{"b": ' * 50_000 + b"1" + b"}" * 50_000 + b"}", "Invalid JSON body"),
]


@pytest.mark.parametrize("raw,message", RAW_BODIES, ids=[f"raw{i}" for i in range(len(RAW_BODIES))])
def test_malformed_json(server, raw, message):
    r = web.post(f"{server.url}{IMG2IMG}", content=raw, headers={"content-type": "application/json"}, timeout=60)
    refused(r, 400, message)


FIELD_CASES = [
    # wrong types
    ({"samples": [1]}, "samples must be an integer"),
    ({"prompt": {"a": 1}}, "prompt must be a string"),
    ({"seed": True}, "seed must be an integer"),
    ({"base64": "maybe"}, "base64 must be"),
    ({"guidance_scale": []}, "guidance_scale must be a number"),
    ({"init_image": 123}, "init_image must be a string"),
    ({"width": "wide"}, "width must be an integer"),
    # non-finite numbers written as numbers: see test_numbers_that_overflow_to_infinity
    ({"num_inference_steps": "1e309"}, "num_inference_steps must be an integer"),
    ({"guidance_scale": "inf"}, "guidance_scale must be a finite number"),
    ({"strength": "NaN"}, "strength must be a finite number"),
    # negative
    ({"samples": -1}, "samples must be between 1 and 4"),
    ({"num_inference_steps": -5}, "num_inference_steps must be between"),
    ({"width": -64}, "width must be between"),
    ({"strength": -0.5}, "strength must be between 0 and 1"),
    ({"seed": -1}, "seed must be between 0 and"),
    ({"guidance_scale": -1}, "guidance_scale must be between"),
    ({"clip_skip": -3}, "clip_skip must be between 1 and 8"),
    # huge
    ({"samples": 10**30}, "samples must be between 1 and 4"),
    ({"width": 10**20, "height": 64}, "width must be between"),
    ({"seed": 10**40}, "seed must be between 0 and"),
    ({"guidance_scale": 1e308}, "guidance_scale must be between"),
    ({"ip_adapter_scale": 1e300}, "ip_adapter_scale must be between 0 and 1"),
]


@pytest.mark.parametrize("change,message", FIELD_CASES, ids=[m for _, m in FIELD_CASES])
def test_bad_field_values(server, key, change, message):
    before = job_count(server)
    refused(server.post(IMG2IMG, {**body(key, init_image=INIT), **change}), 400, message)
    assert job_count(server) == before


@pytest.mark.parametrize("field,message", [("guidance_scale", "guidance_scale must be a finite number"),
                                           ("samples", "samples must be an integer"),
                                           ("seed", "seed must be an integer")])
def test_numbers_that_overflow_to_infinity(server, key, field, message):
    """1e400 is valid JSON, but Python reads it as inf."""
    raw = json.dumps(body(key, init_image=INIT, **{field: 1.5})).replace("1.5", "1e400").encode()
    r = web.post(f"{server.url}{IMG2IMG}", content=raw, headers={"content-type": "application/json"})
    refused(r, 400, message)


@pytest.mark.parametrize("field,status,message", [
    ("prompt", 400, "prompt is too long: 10485760 characters (max 10000)"),
    ("negative_prompt", 400, "negative_prompt is too long"),
    ("model_id", 400, "Model not found"),
    ("track_id", 400, "track_id is too long"),
    ("scheduler", 400, "scheduler is too long"),
    ("lora_model", 400, "lora_model is too long"),
    ("lora_strength", 400, "lora_strength must be comma-separated numbers"),
    ("webhook", 400, "webhook"),
    ("key", 401, "Invalid API key"),
])
def test_ten_megabyte_strings(server, key, field, status, message):
    before = job_count(server)
    value = ("http://example.com/" if field == "webhook" else "") + "z" * TEN_MB
    refused(server.post(IMG2IMG, {**body(key, init_image=INIT), field: value}), status, message)
    assert job_count(server) == before


def test_unknown_fields_are_ignored(server, key):
    out = server.post(IMG2IMG, body(key, init_image=INIT, unknown={"nested": [1, {"x": None}]}, __proto__=1,
                                    constructor="x", **{"": "empty name"})).json()
    assert out["status"] == "success", out


def test_server_still_up_and_serving(server, key):
    assert server.proc.poll() is None
    assert web.get(f"{server.url}/health").json()["status"] == "ok"
    out = server.post(IMG2IMG, body(key, init_image="data:image/png;base64," + INIT)).json()
    assert out["status"] == "success" and len(base64.b64decode(INIT)) > 0
    assert "Traceback" not in server.log_tail(5000)
