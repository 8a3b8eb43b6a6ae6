"""Shared by the diffserve.media tests (test_media_decode, test_media_inputs, test_media_fetch): images built
with Pillow, the default limits, and image loading under the network policy."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from diffserve.config import ImageLimits
from diffserve.core.errors import ImageInputError
from diffserve.media.inputs import load_image_source

LIMITS = ImageLimits()
PRIVATE_MSG = "img URL is not allowed: it resolves to a private or reserved address"


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 32, h: int = 24) -> Image.Image:
    im = Image.new("RGB", (w, h))
    im.putdata([(x * 255 // w, y * 255 // h, 128) for y in range(h) for x in range(w)])
    return im

PNG = encode(gradient(), "PNG")
B64 = base64.b64encode(PNG).decode()


def load(value: str, limits: ImageLimits = LIMITS, **kw) -> Image.Image:
    return load_image_source(value, field="img", limits=limits, allow_private=kw.pop("allow_private", False),
                             **kw)[0]


def load_refused(value: str, limits: ImageLimits = LIMITS, **kw) -> ImageInputError:
    with pytest.raises(ImageInputError) as info:
        load(value, limits, **kw)
    assert info.value.field == "img"
    return info.value
