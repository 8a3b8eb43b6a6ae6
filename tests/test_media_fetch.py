"""diffserve.media.fetch: fetching URLs under the network policy from real HTTP(S) servers on 127.0.0.1
(redirects, limits, deadlines, pinned addresses, SNI and certificate checks).

Nothing here connects anywhere else: "public" names only ever resolve (through an injected resolver) to 127.0.0.1.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from diffserve.config import ImageLimits
from diffserve.core.errors import ImageInputError
from diffserve.media.fetch import FETCH_FAILED, UrlPolicy, fetch_image_bytes

from . import web
from .media_helpers import PNG, PRIVATE_MSG, load, load_refused


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str]]  # (path, Host header), set per server

    def log_message(self, *args) -> None:
        pass

    def send(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Host", "")))
        port = self.server.server_address[1]
        path = self.path
        try:
            if path == "/img.png":
                self.send(200, PNG, Content_Type="image/png")
            elif path == "/text":
                self.send(200, b"hello world", Content_Type="text/plain")
            elif path.startswith("/redirect/"):
                n = int(path.rsplit("/", 1)[1])
                self.send(302, Location=str(n - 1) if n > 0 else "/img.png")  # relative, then absolute path
            elif path == "/to-loopback":
                self.send(302, Location=f"http://127.0.0.1:{port}/img.png")
            elif path == "/to-localhost":
                self.send(307, Location=f"http://localhost:{port}/img.png")
            elif path == "/to-ftp":
                self.send(301, Location="ftp://example.com/img.png")
            elif path == "/chunked-big":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for _ in range(400):  # 400 KiB, no Content-Length
                    self.wfile.write(b"400\r\n" + b"x" * 1024 + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            elif path == "/big-declared":
                self.send_response(200)
                self.send_header("Content-Length", str(10**9))
                self.end_headers()
                self.wfile.write(b"x" * 100)
            elif path == "/gzip":
                self.send(200, zlib.compress(PNG), Content_Encoding="deflate")
            elif path == "/drip":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.drip(b"x" * 50)
            elif path == "/drip-headers":
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                self.drip(b"X-Slow: " + b"y" * 50)
            else:
                self.send(404, b"not found")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def drip(self, data: bytes) -> None:
        for i in range(len(data)):  # one byte per 0.1 s: never idle long enough for a read timeout
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()
            time.sleep(0.1)
        self.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # e.g. failed TLS handshakes in the negative test


def start_server(tls: ssl.SSLContext | None = None):
    server = Server(("127.0.0.1", 0), Handler)
    server.seen = []
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server


@pytest.fixture(scope="module")
def server():
    srv = start_server()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def base(server) -> str:
    server.seen.clear()
    return f"http://127.0.0.1:{server.server_address[1]}"


FAST = ImageLimits(max_bytes=100_000, fetch_timeout_s=1.0, max_redirects=3)


def fetch(url: str, limits: ImageLimits = FAST, **kw) -> bytes:
    return fetch_image_bytes(url, field="img", limits=limits, allow_private=kw.pop("allow_private", True), **kw)


def fetch_refused(url: str, limits: ImageLimits = FAST, **kw) -> ImageInputError:
    with pytest.raises(ImageInputError) as info:
        fetch(url, limits, **kw)
    assert info.value.field == "img"
    return info.value


def test_fetch_image(base: str) -> None:
    assert fetch(f"{base}/img.png") == PNG
    out = load(f"{base}/img.png", FAST, allow_private=True)
    assert out.mode == "RGB" and out.size == (32, 24)


def test_fetch_with_caller_client(base: str) -> None:
    with web.client() as client:
        assert fetch(f"{base}/img.png", client=client) == PNG
        assert fetch(f"{base}/img.png", client=client) == PNG


def test_fetch_404(base: str) -> None:
    err = fetch_refused(f"{base}/missing")
    assert err.message == FETCH_FAILED and err.reason == "HTTP 404"


def test_fetch_connection_refused() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert fetch_refused(f"http://127.0.0.1:{port}/img.png").message == FETCH_FAILED


def test_fetch_non_image(base: str) -> None:
    assert fetch(f"{base}/text") == b"hello world"
    err = load_refused(f"{base}/text", FAST, allow_private=True)
    assert err.message == "img is not a valid image (PNG, JPEG, WEBP, GIF or BMP)"


def test_redirect_limit(base: str, server) -> None:
    assert fetch(f"{base}/redirect/2") == PNG  # 3 redirects: at the limit
    assert [p for p, _ in server.seen] == ["/redirect/2", "/redirect/1", "/redirect/0", "/img.png"]
    server.seen.clear()
    err = fetch_refused(f"{base}/redirect/3")  # 4 redirects
    assert err.message == FETCH_FAILED and "redirects" in err.reason
    assert len(server.seen) == 4  # the 4th redirect's target was never requested


def test_redirect_to_other_scheme_refused(base: str) -> None:
    assert fetch_refused(f"{base}/to-ftp").message == "img URL must use http or https"


def test_body_over_limit_chunked(base: str) -> None:
    err = fetch_refused(f"{base}/chunked-big")
    assert err.message == "img is too large (max 100000 bytes)"


def test_body_over_limit_declared(base: str) -> None:
    start = time.monotonic()
    err = fetch_refused(f"{base}/big-declared")
    assert err.message == "img is too large: 1000000000 bytes (max 100000 bytes)"
    assert time.monotonic() - start < 1


def test_content_encoding_refused(base: str) -> None:
    assert fetch_refused(f"{base}/gzip").message == FETCH_FAILED


@pytest.mark.parametrize("path", ["/drip", "/drip-headers"])
def test_total_deadline(base: str, path: str) -> None:
    start = time.monotonic()
    err = fetch_refused(f"{base}{path}")  # 5 s of dripping; the limit is 1 s in total
    elapsed = time.monotonic() - start
    assert err.message == FETCH_FAILED and err.reason == "timed out"
    assert 0.9 <= elapsed < 1.6, elapsed


def test_loopback_refused_without_request(base: str, server) -> None:
    err = fetch_refused(f"{base}/img.png", allow_private=False)
    assert err.message == PRIVATE_MSG
    assert server.seen == []


def pinned_policy(port: int) -> UrlPolicy:
    """'public.example' is trusted and pinned to our loopback server; every other name is checked."""

    def resolver(host: str, p: int) -> list[str]:
        if host == "public.example":
            return ["127.0.0.1"]
        return [info[4][0] for info in socket.getaddrinfo(host, p, type=socket.SOCK_STREAM)]

    return UrlPolicy(allow_private=False, trusted_hosts=frozenset({"public.example"}), resolver=resolver)


def test_connects_to_checked_address_with_original_host(server) -> None:
    server.seen.clear()
    port = server.server_address[1]
    # public.example resolves nowhere for real: only the pinned address can have been used.
    data = fetch(f"http://public.example:{port}/img.png", allow_private=False, policy=pinned_policy(port))
    assert data == PNG
    assert server.seen == [("/img.png", f"public.example:{port}")]


@pytest.mark.parametrize("path", ["/to-loopback", "/to-localhost"])
def test_redirect_hop_to_private_refused(server, path: str) -> None:
    server.seen.clear()
    port = server.server_address[1]
    err = fetch_refused(f"http://public.example:{port}{path}", allow_private=False, policy=pinned_policy(port))
    assert err.message == PRIVATE_MSG
    assert [p for p, _ in server.seen] == [path]  # the refused hop was never requested


def test_relative_redirect_keeps_original_host(server) -> None:
    server.seen.clear()
    port = server.server_address[1]
    assert fetch(f"http://public.example:{port}/redirect/1", allow_private=False, policy=pinned_policy(port)) == PNG
    assert {host for _, host in server.seen} == {f"public.example:{port}"}


# --------------------------------------------------------------------------- https: SNI and certificate


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    d: Path = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-days", "1", "-subj", "/CN=public.example",
         "-addext", "subjectAltName=DNS:public.example"],
        check=True, capture_output=True,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    srv = start_server(ctx)
    yield srv, ssl.create_default_context(cafile=str(d / "cert.pem"))
    srv.shutdown()
    srv.server_close()


def test_https_pinned_address_keeps_sni_and_certificate_check(tls_server) -> None:
    srv, client_ctx = tls_server
    port = srv.server_address[1]
    with web.client(verify=client_ctx, trust_env=False) as client:
        url = f"https://public.example:{port}/img.png"
        assert fetch(url, allow_private=False, policy=pinned_policy(port), client=client) == PNG
        # Same server by IP: the certificate (for public.example only) must not verify.
        err = fetch_refused(f"https://127.0.0.1:{port}/img.png", client=client)
        assert err.message == FETCH_FAILED and "CERTIFICATE_VERIFY_FAILED" in err.reason


@pytest.mark.parametrize("path", ["/drip", "/drip-headers"])
def test_https_total_deadline(tls_server, path: str) -> None:
    srv, client_ctx = tls_server
    port = srv.server_address[1]
    start = time.monotonic()
    with web.client(verify=client_ctx, trust_env=False) as client:
        err = fetch_refused(f"https://public.example:{port}{path}", allow_private=False,
                            policy=pinned_policy(port), client=client)  # fmt: skip
    assert err.reason == "timed out"
    assert time.monotonic() - start < 1.6
