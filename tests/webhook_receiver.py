"""Real webhook receivers on loopback: record every POST, check its signature, answer as told.

`verify_signature` is the receiver-side check exactly as docs/webhooks.md documents it (written from the
Standard Webhooks layout, independent of diffserve's own signing code).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .waiting import wait_until


def verify_signature(secret: str, headers, body: bytes, tolerance_s: int = 300) -> bool:
    key = base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else secret.encode()
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance_s:
        return False  # too old (or from the future): a replay
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(expected, sig.split(",", 1)[1])
        for sig in headers["webhook-signature"].split()
        if sig.startswith("v1,")
    )


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def payload(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    """fail_first: answer 500 to that many POSTs first; hang_s: wait that long before answering;
    host: the loopback address it listens on (127.0.0.0/8: each address is another receiver host);
    on_request: called with each POST before it is answered."""

    secret: str | None = None
    fail_first: int = 0
    hang_s: float = 0.0
    on_request: Callable[[Received], None] | None = None
    port: int = 0
    host: str = "127.0.0.1"
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _release: threading.Event = field(default_factory=threading.Event)

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status = 500 if len(receiver.received) < receiver.fail_first else 200
                receiver.received.append(Received(time.time(), {k.lower(): v for k, v in self.headers.items()},
                                                  body, status))
                if receiver.on_request:
                    receiver.on_request(receiver.received[-1])
                if receiver.hang_s:
                    receiver._release.wait(receiver.hang_s)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:  # the sender gave up (timeout) and closed the connection
                    pass

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        wait_until(lambda: len(self.received), timeout, every=0.05, accept=lambda n: n >= count,
                   what=f"{count} webhook deliveries")
        return self.received

    def stop(self) -> None:
        self._release.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
