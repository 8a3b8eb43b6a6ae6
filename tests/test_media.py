"""diffserve.media: decoding untrusted images, fetching URLs under the network policy, inputs.

Every fixture is built here with Pillow; fetch tests use real HTTP(S) servers on 127.0.0.1.
Nothing here connects anywhere else: tests of refused addresses run with socket connects
disabled, and "public" names only ever resolve (through an injected resolver) to 127.0.0.1.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from PIL import Image

from diffserve.config import ImageLimits
from diffserve.core.errors import ImageInputError
from diffserve.media import inputs as inputs_module
from diffserve.media.decode import decode_image, to_rgb
from diffserve.media.fetch import (
    FETCH_FAILED,
    UrlPolicy,
    check_url,
    fetch_image_bytes,
    is_blocked_address,
)
from diffserve.media.inputs import is_base64_image, load_image

LIMITS = ImageLimits()
PRIVATE_MSG = "img URL is not allowed: it resolves to a private or reserved address"


# --------------------------------------------------------------------------- image fixtures


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 32, h: int = 24) -> Image.Image:
    im = Image.new("RGB", (w, h))
    im.putdata([(x * 255 // w, y * 255 // h, 128) for y in range(h) for x in range(w)])
    return im


def noise(w: int = 128, h: int = 128) -> Image.Image:
    return Image.frombytes("RGB", (w, h), os.urandom(w * h * 3))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_header(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height (1-bit greyscale); pixel data is bogus."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def decode(data: bytes, limits: ImageLimits = LIMITS) -> Image.Image:
    return decode_image(data, field="init_image", limits=limits)


def refused(data: bytes, limits: ImageLimits = LIMITS) -> ImageInputError:
    with pytest.raises(ImageInputError) as info:
        decode(data, limits)
    assert info.value.field == "init_image"
    assert "init_image" in info.value.message
    return info.value


# --------------------------------------------------------------------------- decode


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_round_trip(fmt: str) -> None:
    src = gradient()
    out = decode(encode(src, fmt))
    assert out.mode == "RGB" and out.size == src.size
    # Lossy/palettised formats drift a little; a wrong decode would drift a lot.
    for xy in [(0, 0), (31, 23), (16, 12)]:
        assert all(abs(a - b) <= 40 for a, b in zip(out.getpixel(xy), src.getpixel(xy))), (fmt, xy)


def test_lossless_png_exact() -> None:
    src = gradient()
    assert decode(encode(src, "PNG")).tobytes() == src.tobytes()


def test_result_is_loaded_and_detached() -> None:
    out = decode(encode(gradient(), "PNG"))
    assert not hasattr(out, "fp") or out.fp is None
    out.getpixel((0, 0))  # usable after the source file is closed


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_takes_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    r, g, b = decode(data).getpixel((8, 8))
    assert r > 200 and g < 50 and b < 50


def test_mpo_takes_first_picture() -> None:
    pictures = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 0, 255)]]
    data = encode(pictures[0], "MPO", save_all=True, append_images=pictures[1:])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    r, g, b = decode(data).getpixel((8, 8))
    assert r > 200 and g < 50 and b < 50


def test_rgba_composited_on_white() -> None:
    im = Image.new("RGBA", (3, 1))
    im.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red: must come out white
    im.putpixel((1, 0), (0, 0, 255, 255))  # opaque blue
    im.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black: mid grey
    out = decode(encode(im, "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 0, 255)
    assert all(120 <= v <= 135 for v in out.getpixel((2, 0)))


def test_la_composited_on_white() -> None:
    im = Image.new("LA", (2, 1))
    im.putpixel((0, 0), (0, 0))
    im.putpixel((1, 0), (0, 255))
    out = decode(encode(im, "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 0)) == (0, 0, 0)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_composited_on_white(fmt: str) -> None:
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    im.putpixel((0, 0), 0)  # index 0 = black, declared transparent
    im.putpixel((1, 0), 1)  # index 1 = red
    out = decode(encode(im, fmt, transparency=0))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (255, 0, 0)


def test_cmyk_jpeg() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    r, g, b = decode(data).getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60


def test_16bit_greyscale_png_scaled_not_clipped() -> None:
    im = Image.new("I;16", (3, 1))
    for x, v in enumerate([0, 32768, 65535]):
        im.putpixel((x, 0), v)
    data = encode(im, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = decode(data)
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert all(127 <= v <= 129 for v in out.getpixel((1, 0)))
    assert out.getpixel((2, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [("I", 32768, 128), ("F", 0.5, 128), ("L", 77, 77), ("1", 1, 255)],
)
def test_to_rgb_other_modes(mode: str, value: float, expected: int) -> None:
    out = to_rgb(Image.new(mode, (2, 2), value))
    assert out.mode == "RGB"
    assert all(abs(v - expected) <= 1 for v in out.getpixel((0, 0)))


def test_exif_orientation_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    data = encode(gradient(40, 20), "JPEG", exif=exif)
    assert decode(data).size == (20, 40)


def test_decompression_bomb_refused_without_allocating() -> None:
    data = png_with_header(50000, 50000)
    assert len(data) < 200
    start = time.monotonic()
    err = refused(data)
    assert time.monotonic() - start < 0.5
    assert err.message == "init_image is too large: more than 16777216 pixels"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixels_over_our_limit_refused_from_header() -> None:
    err = refused(png_with_header(10000, 10000))  # between Pillow's warning and error thresholds
    assert err.message == "init_image is too large: 10000 x 10000 pixels (max 16777216)"
    small = ImageLimits(max_pixels=100)
    assert refused(encode(gradient(20, 20), "PNG"), small).message == (
        "init_image is too large: 20 x 20 pixels (max 100)"
    )
    assert decode(encode(gradient(10, 10), "PNG"), small).size == (10, 10)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_refused(fmt: str, keep: float) -> None:
    data = encode(noise(), fmt)
    err = refused(data[: int(len(data) * keep)])
    assert err.message == "init_image is truncated or corrupt"


@pytest.mark.parametrize("fmt", ["TIFF", "PPM", "ICO", "TGA"])
def test_other_formats_refused(fmt: str) -> None:
    err = refused(encode(gradient(), fmt))
    assert err.message == "init_image is not a valid image (PNG, JPEG, WEBP, GIF or BMP)"


@pytest.mark.parametrize("data", [os.urandom(4096), b"", b"<html>hello</html>", b"\x89PNG\r\n\x1a\n"])
def test_garbage_refused(data: bytes) -> None:
    assert refused(data).message == "init_image is not a valid image (PNG, JPEG, WEBP, GIF or BMP)"


def test_oversized_bytes_refused() -> None:
    data = encode(noise(64, 64), "PNG")
    err = refused(data, ImageLimits(max_bytes=1000))
    assert err.message == f"init_image is too large: {len(data)} bytes (max 1000 bytes)"


# --------------------------------------------------------------------------- inputs


PNG = encode(gradient(), "PNG")
B64 = base64.b64encode(PNG).decode()


def load(value: str, limits: ImageLimits = LIMITS, **kw) -> Image.Image:
    return load_image(value, field="img", limits=limits, allow_private=kw.pop("allow_private", False), **kw)


def load_refused(value: str, limits: ImageLimits = LIMITS, **kw) -> ImageInputError:
    with pytest.raises(ImageInputError) as info:
        load(value, limits, **kw)
    assert info.value.field == "img"
    return info.value


@pytest.mark.parametrize(
    "value",
    [
        B64,
        "\n".join(B64[i : i + 76] for i in range(0, len(B64), 76)) + "\n",  # MIME line breaks
        f"  {B64}  ",
        f"data:image/png;base64,{B64}",
        f"data:image/jpeg;base64,{B64}",  # mime lies; format is sniffed
        f"DATA:Image/PNG;charset=x;BASE64,{B64}",
        base64.urlsafe_b64encode(PNG).decode().rstrip("="),  # urlsafe, unpadded
    ],
)
def test_load_base64_forms(value: str) -> None:
    out = load(value)
    assert out.mode == "RGB" and out.size == (32, 24)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "not base64 at all!",
        "aGVsbG8=",  # valid base64 of "hello"... decodes, but isn't an image (checked below)
        "data:image/png;base64,@@@@",
        f"data:text/plain;base64,{B64}",
        f"data:image/png,{B64}",  # not base64-encoded
        "data:image/png;base64",
        "A",
    ],
)
def test_load_junk_refused(value: str) -> None:
    err = load_refused(value)
    if value == "aGVsbG8=":
        assert err.message == "img is not a valid image (PNG, JPEG, WEBP, GIF or BMP)"
    else:
        assert err.message == "img is not a valid URL or base64 image"


def test_base64_too_long_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a, **k):
        raise AssertionError("decoded an oversized payload")

    monkeypatch.setattr(inputs_module.base64, "b64decode", boom)
    limits = ImageLimits(max_bytes=1000)
    for value in ["QUFB" * 400, "data:image/png;base64," + "QUFB" * 400, "QUFB" * 100_000]:
        err = load_refused(value, limits)
        assert err.message.startswith("img is too large: ") and err.message.endswith("(max 1000 bytes)")


def test_is_base64_image() -> None:
    assert is_base64_image(B64)
    assert is_base64_image("data:image/png;base64,xxxx")
    assert not is_base64_image("http://example.com/a.png")
    assert not is_base64_image("  HTTPS://example.com/a.png")
    assert not is_base64_image("ftp://example.com/a.png")
    assert not is_base64_image("")


# --------------------------------------------------------------------------- URL policy (no traffic)


@pytest.fixture
def no_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test (and sends nothing)."""

    def forbidden(self, address, *a):
        raise AssertionError(f"connection attempted to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", forbidden)
    monkeypatch.setattr(socket.socket, "connect_ex", forbidden)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
        "100.64.1.2", "0.0.0.0", "224.0.0.1", "240.0.0.1", "255.255.255.255", "198.18.0.1",
        "::1", "::", "fe80::1", "fc00::1", "fd00:ec2::254", "ff02::1",
        "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
        "2002:7f00:1::1", "64:ff9b::a00:1", "2001:db8::1",
    ],
)  # fmt: skip
def test_blocked_addresses(address: str) -> None:
    assert is_blocked_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses_allowed(address: str) -> None:
    assert not is_blocked_address(address)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://localhost:9/",
        "http://[::1]:9/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://2130706433/",  # 127.0.0.1 as one number
        "http://0x7f.1/",
        "http://0.0.0.0:9/",
        "https://[fd00:ec2::254]/",
    ],
)
def test_private_urls_refused_without_connecting(url: str, no_connect: None) -> None:
    with pytest.raises(ImageInputError) as info:
        fetch_image_bytes(url, field="img", limits=LIMITS, allow_private=False)
    assert info.value.message == PRIVATE_MSG and info.value.field == "img"
    with pytest.raises(ImageInputError, match="not allowed"):
        load(url)


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "file:///etc/passwd", "gopher://example.com/", "ws://x/"])
def test_other_schemes_refused(url: str, no_connect: None) -> None:
    for allow_private in (False, True):
        with pytest.raises(ImageInputError) as info:
            fetch_image_bytes(url, field="img", limits=LIMITS, allow_private=allow_private)
        assert info.value.message == "img URL must use http or https"
    assert load_refused(url).message == "img URL must use http or https"


def test_any_private_answer_refuses_host(no_connect: None) -> None:
    answers = {"mixed.example": ["8.8.8.8", "10.1.2.3"], "public.example": ["8.8.8.8", "2606:4700::1"]}
    policy = UrlPolicy(resolver=lambda host, port: answers[host])
    with pytest.raises(ImageInputError, match="private or reserved"):
        policy.check("http://mixed.example/a.png", field="img")
    target = policy.check("https://PUBLIC.example/a.png", field="img")  # checked, never fetched
    assert (target.host, target.port, target.address) == ("public.example", 443, "8.8.8.8")


def test_check_url_helper(no_connect: None) -> None:
    assert check_url("http://127.0.0.1:8000/x", allow_private=True).address is None
    with pytest.raises(ImageInputError, match="private or reserved"):
        check_url("http://127.0.0.1:8000/x", allow_private=False)


def test_unresolvable_host(no_connect: None) -> None:
    def fail(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(ImageInputError) as info:
        fetch_image_bytes("http://nowhere.invalid/", field="img", limits=LIMITS, allow_private=False,
                          policy=UrlPolicy(resolver=fail))  # fmt: skip
    assert info.value.message == FETCH_FAILED and "resolve" in info.value.reason


# --------------------------------------------------------------------------- fetch (local servers)


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
    with httpx.Client() as client:
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
    with httpx.Client(verify=client_ctx, trust_env=False) as client:
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
    with httpx.Client(verify=client_ctx, trust_env=False) as client:
        err = fetch_refused(f"https://public.example:{port}{path}", allow_private=False,
                            policy=pinned_policy(port), client=client)  # fmt: skip
    assert err.reason == "timed out"
    assert time.monotonic() - start < 1.6
