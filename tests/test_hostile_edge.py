"""Hostile transfers at the HTTP edge, against the real server over loopback: bodies past the limit however
they are sent (chunked, multipart parts and fields), bodies built to be slow to parse, unauthenticated bodies,
and half-sent requests (slowloris). Throughout, the API process's memory stays bounded, nothing big is left
in its temporary directory, and `/health` keeps answering within a second.

The server runs without workers (nothing here reaches a worker) and with short slow-client timeouts."""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from . import web
from .bodies import IMG2IMG
from .servers import DiffserveServer, png_bytes

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 3.0
MAX_CONNECTIONS = 100
MAX_BODY = 32 * 1024 * 1024  # the default limits.max_body_bytes
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def edge(tmp_path_factory, models_root):
    data = tmp_path_factory.mktemp("edge")
    tmp = data / "tmp"
    tmp.mkdir()
    env = {"DIFFSERVE_WORKERS": "0", "TMPDIR": str(tmp),
           "DIFFSERVE_SERVER__HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
           "DIFFSERVE_SERVER__BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
           "DIFFSERVE_SERVER__MAX_CONNECTIONS": str(MAX_CONNECTIONS)}
    srv = DiffserveServer(data, models_root, env_overrides=env).start(until="/health")
    srv.tmp = tmp
    srv.key = srv.create_key("--name", "edge")
    yield srv
    srv.stop()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def tree_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def spooled_bytes(pid: int, folder: Path) -> int:
    """Bytes in the files the process holds open under `folder` (spooled uploads are unlinked at once)."""
    total = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith(str(folder)):
                total += os.stat(fd).st_size
        except OSError:  # closed meanwhile
            pass
    return total


class Watch:
    """Samples the API process's RSS and `/health`'s latency in background threads while a test runs."""

    def __init__(self, server: DiffserveServer) -> None:
        self.server, self.rss, self.health, self.spooled = server, [], [], [0]
        self.stop = threading.Event()

    def __enter__(self) -> "Watch":
        self.before = rss_mb(self.server.proc.pid)
        self.threads = [threading.Thread(target=self._rss, daemon=True),
                        threading.Thread(target=self._health, daemon=True)]
        for t in self.threads:
            t.start()
        while not self.health:  # the probe's connection is up before the test starts
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)

    def _rss(self) -> None:
        while not self.stop.is_set():
            self.rss.append(rss_mb(self.server.proc.pid))
            if getattr(self.server, "tmp", None):
                self.spooled.append(spooled_bytes(self.server.proc.pid, self.server.tmp))
            time.sleep(0.05)

    def _health(self) -> None:
        with web.client(timeout=10) as client:
            while not self.stop.is_set():
                t0 = time.monotonic()
                try:
                    ok = client.get(f"{self.server.url}/health").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.health.append(time.monotonic() - t0 if ok else float("inf"))
                time.sleep(0.1)

    @property
    def growth_mb(self) -> float:
        return max(self.rss, default=self.before) - self.before


def stream(server: DiffserveServer, path: str, head: dict[str, str], chunks, *, chunked: bool = True):
    """Send a request over a raw socket, as fast as the server reads, stopping as soon as an answer arrives.
    Returns (status, headers, JSON body, bytes of body sent)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
    lines += [f"{k}: {v}" for k, v in head.items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    sent = 0
    try:
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered before reading it all
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            sent += len(chunk)
        else:
            if chunked:
                sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    status, headers, answer = read_answer(sock)
    sock.close()
    return status, headers, answer, sent


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    """One HTTP answer with a Content-Length: (status, headers, JSON body)."""
    answer = b""
    while True:
        try:
            part = sock.recv(65536)
        except ConnectionResetError:
            break
        if not part:
            break
        answer += part
        if b"\r\n\r\n" in answer:
            head_part, _, rest = answer.partition(b"\r\n\r\n")
            length = [int(line.split(b":")[1]) for line in head_part.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")]
            if length and len(rest) >= length[0]:
                break
    head_part, _, rest = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head_part.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    return int(status_line.split()[1]), headers, json.loads(rest)


def megabytes(n: int, piece: bytes = b"A"):
    block = piece * MiB
    for _ in range(n):
        yield block


def test_chunked_200mb_image_upload_is_refused_at_the_limit(edge):
    """OpenAI edits (multipart): 200 MB chunked, no Content-Length. Refused once 32 MiB have arrived, in
    OpenAI's error shape; the API grows by less than 100 MB and spools nothing past the limit."""
    boundary = "edgeboundary"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()

    def body():
        yield part
        yield from megabytes(200)

    head = {"Authorization": f"Bearer {edge.key}", "Content-Type": f"multipart/form-data; boundary={boundary}"}
    with Watch(edge) as watch:
        t0 = time.monotonic()
        status, headers, answer, sent = stream(edge, "/v1/images/edits", head, body())
        elapsed = time.monotonic() - t0
        time.sleep(0.3)
    assert status == 400, answer
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["message"] == f"Request body is too large (max {MAX_BODY} bytes)"
    assert headers.get("connection") == "close"
    assert sent < 2 * MAX_BODY, f"{sent / MiB:.0f} MiB were sent before the answer"
    assert watch.growth_mb < 100, f"API RSS grew {watch.growth_mb:.0f} MB (from {watch.before:.0f})"
    assert max(watch.spooled) <= MAX_BODY + MiB, f"{max(watch.spooled) / MiB:.0f} MiB spooled"
    assert tree_bytes(edge.tmp) + spooled_bytes(edge.proc.pid, edge.tmp) < MiB, "spooled files were left behind"
    assert max(watch.health) < 1.0, f"/health took {max(watch.health):.2f} s ({elapsed:.1f} s upload)"


def test_chunked_200mb_json_is_refused_at_the_limit(edge):
    """The native JSON route: same refusal in its own shape, same memory bound."""
    def body():
        yield b'{"prompt": "'
        yield from megabytes(200)

    head = {"Authorization": f"Bearer {edge.key}", "Content-Type": "application/json"}
    with Watch(edge) as watch:
        status, headers, answer, sent = stream(edge, "/v1/jobs", head, body())
        time.sleep(0.3)
    assert status == 400, answer
    assert answer == {"error": {"message": f"Request body is too large (max {MAX_BODY} bytes)",
                                "code": "invalid_input"}}
    assert sent < 2 * MAX_BODY
    assert watch.growth_mb < 100, f"API RSS grew {watch.growth_mb:.0f} MB"
    assert max(watch.health) < 1.0


def test_declared_length_over_the_limit_is_refused_before_reading(edge):
    head = {"Content-Type": "application/json", "Content-Length": str(200 * MiB)}
    status, headers, answer, sent = stream(edge, IMG2IMG, head, megabytes(200), chunked=False)
    assert status == 400 and answer == {"status": "error",
                                        "message": f"Request body is too large (max {MAX_BODY} bytes)"}
    assert sent < 2 * MAX_BODY


def test_a_body_sent_on_after_the_answer_is_cut_at_the_limit(edge):
    """A route that refuses before reading (no key) answers at once; a client that keeps streaming its
    chunked body anyway has at most about the body limit read and dropped, then the connection is closed."""
    sock = socket.create_connection(("127.0.0.1", edge.port), timeout=30)
    sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    sent, cut = 0, False
    with Watch(edge) as watch:
        for chunk in megabytes(300):
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            sent += len(chunk)
    sock.close()
    assert cut, "300 MiB were read after the answer"
    assert sent < 2 * MAX_BODY + 8 * MiB, f"{sent / MiB:.0f} MiB read before the cut"
    assert watch.growth_mb < 50 and max(watch.health) < 1.0


def test_multipart_fields_are_bounded(edge):
    """More text fields than limits.max_form_fields (64), or one text field past four times the longest
    text allowed, are refused in OpenAI's shape; the files themselves count against the body limit."""
    auth = {"Authorization": f"Bearer {edge.key}"}
    files = {"image": ("a.png", png_bytes(64, 64), "image/png")}
    fields = {f"junk{i}": "x" for i in range(65)} | {"prompt": "a cat"}
    r = web.post(f"{edge.url}/v1/images/edits", data=fields, files=files, headers=auth, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "Too many fields" in r.json()["error"]["message"]

    big = {"prompt": "a cat", "junk": "y" * (5 * MiB)}
    r = web.post(f"{edge.url}/v1/images/edits", data=big, files=files, headers=auth, timeout=30)
    assert r.status_code == 400 and "exceeded maximum size" in r.json()["error"]["message"], r.text


def _numbers(mb: int) -> bytes:
    return b'{"key": "nope", "a": [' + b"1," * (mb * MiB // 2) + b'1]}'


def test_unauthenticated_29mb_bodies_do_not_stall_the_loop(edge):
    """Header-key routes (native, A1111) answer 401 without parsing; a body-key route (ModelsLab) refuses a
    body of millions of values as it arrives, before parsing. 8 at once, each client sending until it has its
    answer: every answer comes before the body is through, and /health stays under a second."""
    big = _numbers(29)
    results = []

    def send(path: str) -> None:
        pieces = (big[i:i + MiB] for i in range(0, len(big), MiB))
        head = {"Content-Type": "application/json", "Content-Length": str(len(big))}
        status, _, answer, sent = stream(edge, path, head, pieces, chunked=False)
        results.append((path, status, answer, sent))

    with Watch(edge) as watch:
        threads = [threading.Thread(target=send, args=(path,))
                   for path in ["/v1/jobs"] * 3 + ["/sdapi/v1/img2img"] * 2 + [IMG2IMG] * 3]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert len(results) == 8
    for path, status, answer, sent in results:
        assert sent < len(big), f"{path}: the whole body was sent before the answer"
        if path == "/v1/jobs":
            assert status == 401 and answer["error"]["code"] == "unauthorized"
        elif path.startswith("/sdapi/"):
            assert status == 401 and answer["error"] == "Unauthorized" and answer["detail"] == "API key required"
        else:
            assert status == 400 and answer["message"].startswith("Invalid JSON body: too many values")
    assert max(watch.health) < 1.0, f"/health took {max(watch.health):.2f} s"


def test_millions_of_fields_with_a_key_are_refused_before_parsing(edge):
    fields = b"{" + b",".join(b'"k%d":1' % i for i in range(2_500_000)) + b"}"
    with Watch(edge) as watch:
        r = web.post(f"{edge.url}/v1/jobs", content=fields, timeout=60,
                     headers={"Authorization": f"Bearer {edge.key}", "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("Invalid JSON body: too many values")
    assert max(watch.health) < 1.0


def closed(sock: socket.socket) -> bool:
    """Whether the server has closed this connection (without waiting)."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(1024, socket.MSG_PEEK) == b""
    except ConnectionResetError:
        return True


def test_half_sent_requests_are_closed_by_the_header_timeout(edge):
    """300 connections each send half a header line and stall. Past the connection cap (100) the oldest are
    closed at once; the rest within the header timeout (plus slack); /health answers throughout."""
    socks = []
    with Watch(edge) as watch:
        t0 = time.monotonic()
        for i in range(300):
            s = socket.create_connection(("127.0.0.1", edge.port), timeout=10)
            s.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * (i % 7))
            socks.append(s)
        open_at = time.monotonic() - t0
        time.sleep(0.2)
        evicted = sum(closed(s) for s in socks)
        assert time.monotonic() - t0 < HEADER_TIMEOUT_S - 0.3, "too slow to tell the cap from the timeout"
        assert evicted >= 300 - MAX_CONNECTIONS, f"only {evicted} closed past the cap of {MAX_CONNECTIONS}"
        closed_after = []
        for s in socks:
            s.settimeout(max(0.1, HEADER_TIMEOUT_S + 5 - (time.monotonic() - t0)))
            try:
                got = s.recv(1024)
            except (TimeoutError, socket.timeout):
                got = None
            except ConnectionResetError:
                got = b""
            closed_after.append(None if got is None else time.monotonic() - t0)
            s.close()
    still_open = sum(c is None for c in closed_after)
    assert still_open == 0, f"{still_open} of 300 connections still open {HEADER_TIMEOUT_S + 5} s later"
    assert max(closed_after) < open_at + HEADER_TIMEOUT_S + 3
    assert max(watch.health) < 1.0, f"/health took {max(watch.health):.2f} s"


def test_a_stalled_body_is_closed_by_the_body_timeout(edge):
    """Headers complete, a tenth of the declared body, then nothing: closed after the body timeout."""
    s = socket.create_connection(("127.0.0.1", edge.port), timeout=BODY_TIMEOUT_S + 10)
    s.sendall(f"POST {IMG2IMG} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              "Content-Length: 1000\r\n\r\n".encode() + b'{"key": "' + b"k" * 90)
    t0 = time.monotonic()
    data = b""
    while True:
        part = s.recv(4096)
        if not part:
            break
        data += part
    waited = time.monotonic() - t0
    s.close()
    assert BODY_TIMEOUT_S - 0.5 < waited < BODY_TIMEOUT_S + 3, waited
    assert web.get(f"{edge.url}/health", timeout=5).status_code == 200


def test_a_later_request_on_a_kept_connection_has_its_own_header_deadline(edge):
    """One timer per connection follows the deadline each phase sets: a keep-alive connection's second request,
    begun a while after the first was answered and then stalled, is closed one header timeout after its first
    byte -- not at a deadline of the first request, not later."""
    s = socket.create_connection(("127.0.0.1", edge.port), timeout=HEADER_TIMEOUT_S + 10)
    body = json.dumps({"prompt": "a cat", "model_id": "no-such-model"}).encode()
    s.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {edge.key}\r\n"
              f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    status, _, _ = read_answer(s)
    assert status == 400
    time.sleep(HEADER_TIMEOUT_S / 2)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: a")
    t0 = time.monotonic()
    while s.recv(4096):
        pass
    waited = time.monotonic() - t0
    s.close()
    assert HEADER_TIMEOUT_S - 0.3 < waited < HEADER_TIMEOUT_S + 2, waited


def test_a_slow_but_steady_body_is_not_cut(edge):
    """A body that keeps arriving (a piece every second, past the header timeout) is read to the end."""
    s = socket.create_connection(("127.0.0.1", edge.port), timeout=30)
    body = json.dumps({"prompt": "a cat", "model_id": "no-such-model"}).encode()
    s.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {edge.key}\r\n"
              f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    pieces = [body[i:i + 10] for i in range(0, len(body), 10)]
    for piece in pieces:
        time.sleep(HEADER_TIMEOUT_S / 2)
        s.sendall(piece)
    status, _, answer = read_answer(s)
    s.close()
    assert status == 400 and answer["error"]["message"] == "Model not found: no-such-model", answer
