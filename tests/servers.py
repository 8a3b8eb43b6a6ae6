"""Real servers for the tests: diffserve itself (as a subprocess, over HTTP) and a tiny image host."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from PIL import Image

from . import web
from .waiting import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(width: int = 64, height: int = 64, color=(200, 80, 40), fmt: str = "PNG") -> bytes:
    img = Image.new("RGB", (width, height), color)
    # a gradient so the image is not flat (flat images hide resize/crop mistakes)
    for x in range(width):
        img.putpixel((x, height // 2), (x * 255 // max(1, width - 1), 0, 255 - x * 255 // max(1, width - 1)))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@dataclass
class ImageHost:
    """An HTTP server on loopback serving bytes registered by the test."""

    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    port: int = 0
    _server: ThreadingHTTPServer | None = None

    def start(self) -> "ImageHost":
        files = self.files

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                item = files.get(self.path)
                if item is None:
                    self.send_error(404)
                    return
                data, ctype = item
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def add(self, path: str, data: bytes, content_type: str = "image/png") -> str:
        self.files[path] = (data, content_type)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()


@dataclass
class DiffserveServer:
    """`diffserve serve` in a subprocess with its own data dir."""

    data_dir: Path
    models_root: Path
    env_overrides: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFSERVE_")}
        env.update({
            "DIFFSERVE_DATA_DIR": str(self.data_dir),
            "DIFFSERVE_MODELS_ROOT": str(self.models_root),
            "DIFFSERVE_ALLOW_PRIVATE_URLS": "1",  # the test image host is on loopback
            "DIFFSERVE_TORCH_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            # The server's defaults are demo-sd (the trained model); most tests want the fast random tiny-sd
            # (its limits, sizes and speed are what they assert). A test of the defaults overrides these.
            "DIFFSERVE_DEFAULT_MODEL": "tiny-sd",
            "DIFFSERVE_PRELOAD_MODELS": '["tiny-sd"]',
            "DIFFSERVE_REALTIME_MODEL": "tiny-sd",
            # `auto` is bf16 on a CPU with native bf16; tests compare outputs made in float32
            "DIFFSERVE_DTYPE": "fp32",
        })
        env.update(self.env_overrides)
        return env

    def cli(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "diffserve.cli.main", *args], env=self.env(),
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def create_key(self, *extra: str) -> str:
        return self.cli("keys", "create", *extra).strip().splitlines()[-1]

    def start(self, timeout: float = 180.0, *, until: str = "/ready") -> "DiffserveServer":
        """until: /ready (a worker is up) or /health (the API answers: `--workers 0`, workers come later)."""
        self.launch()
        self.wait_healthy(timeout, until)
        return self

    def launch(self) -> float:
        """Start `diffserve serve` without waiting for it (`wait_healthy` next); the monotonic time it started."""
        self.port = self.port or free_port()
        self.log_path = self.data_dir / f"server-{self.port}.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "diffserve.cli.main", "serve", "--port", str(self.port)],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return started

    def wait_healthy(self, timeout: float, until: str = "/ready") -> float:
        """Seconds until `until` answers 200; a server that exits meanwhile fails at once, with its log."""

        def answer() -> int:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log_tail()}")
            return web.get(f"{self.url}{until}", timeout=2).status_code

        t0 = time.monotonic()
        wait_until(answer, timeout, every=0.1, accept=lambda status: status == 200, ignore=httpx.HTTPError,
                   what=f"{self.url}{until} to answer 200", context=self.log_tail)
        return time.monotonic() - t0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """SIGTERM: graceful stop. SIGKILL: the whole process group dies at once (a crash)."""
        if not self.proc or self.proc.poll() is not None:
            return
        if sig == signal.SIGKILL:
            os.killpg(self.proc.pid, signal.SIGKILL)
        else:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log_tail(self, n: int = 60) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def post(self, path: str, body=None, **kw) -> httpx.Response:
        kw.setdefault("timeout", 120)
        return web.post(f"{self.url}{path}", json=body, **kw)
