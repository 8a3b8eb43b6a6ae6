"""diffserve.media: image inputs (base64 forms, data URLs, junk) and the URL policy, with no traffic:
tests of refused addresses run with socket connects disabled.
"""

from __future__ import annotations

import base64
import socket

import pytest

from diffserve.config import ImageLimits
from diffserve.core.errors import ImageInputError
from diffserve.media import inputs as inputs_module
from diffserve.media.fetch import (
    FETCH_FAILED,
    UrlPolicy,
    check_url,
    fetch_image_bytes,
    is_blocked_address,
)
from diffserve.media.inputs import is_base64_image

from .media_helpers import B64, LIMITS, PNG, PRIVATE_MSG, load, load_refused


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
