"""Turn a client's image reference (URL, data URI or raw base64) into a decoded RGB image.

Accepted forms:

* ``http://...`` / ``https://...``: fetched under the network policy (see :mod:`.fetch`).
  Other schemes (``ftp://``, ``file://``...) are refused.
* ``data:image/<any>;base64,<payload>``: the declared mime type must be an image type, but the
  actual format is sniffed from the bytes (clients often send ``image/png`` for a JPEG).
* Raw base64, no prefix.

Base64 is decoded strictly: whitespace and newlines are removed, then every character must be in
the alphabet. The URL-safe alphabet (``-`` and ``_``) and missing ``=`` padding are accepted too.
A payload whose decoded size would exceed ``limits.max_bytes`` is refused before it is decoded.
"""

from __future__ import annotations

import base64
import binascii
import re

import httpx
from PIL import Image

from diffserve.config import ImageLimits
from diffserve.core.errors import ImageInputError
from diffserve.media.decode import decode_image_source, too_many_bytes_message
from diffserve.media.fetch import fetch_image_bytes

_URL_PREFIX = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_DATA_URI = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
_URLSAFE = str.maketrans("-_", "+/")


def is_base64_image(value: str) -> bool:
    """Cheap check: True for a data URI or anything that is not a URL (``scheme://``).

    Says nothing about validity: :func:`load_image_source` still decides. Empty strings are False.
    """
    value = value.strip()
    if not value:
        return False
    return value[:5].lower() == "data:" or not _URL_PREFIX.match(value)


def load_image_source(
    value: str,
    *,
    field: str,
    limits: ImageLimits,
    allow_private: bool,
    client: httpx.Client | None = None,
) -> tuple[Image.Image, bytes | None]:
    """Fetch or decode `value` into a loaded RGB image; ImageInputError (naming `field`) if not. With it, the bytes
    sent when they are a PNG of exactly that image (decode_image_source), else None."""
    value = value.strip()
    if _URL_PREFIX.match(value):
        # Only http(s) gets through fetch's checks; other schemes are refused there.
        data = fetch_image_bytes(value, field=field, limits=limits, allow_private=allow_private, client=client)
    else:
        data = decode_base64(value, field=field, limits=limits)
    return decode_image_source(data, field=field, limits=limits)


def decode_base64(value: str, *, field: str, limits: ImageLimits) -> bytes:
    """Bytes of a data URI or raw base64 string (strict alphabet, size checked first)."""
    invalid = ImageInputError(f"{field} is not a valid URL or base64 image", field=field)
    # Cheap bound before copying anything: whitespace can't plausibly double a payload's size.
    if len(value) > 2 * _encoded_length(limits.max_bytes) + 1024:
        raise ImageInputError(too_many_bytes_message(field, len(value) * 3 // 4, limits.max_bytes), field=field)
    if value[:5].lower() == "data:":
        header = _DATA_URI.match(value)
        if header is None:
            raise invalid
        params = [p.strip().lower() for p in header["params"].split(";")]
        if not header["mime"].strip().lower().startswith("image/") or "base64" not in params:
            raise invalid
        value = value[header.end() :]
    payload = _WHITESPACE.sub("", value)
    if not payload:
        raise invalid
    decoded_size = len(payload) * 3 // 4 - payload[-2:].count("=")
    if decoded_size > limits.max_bytes:
        raise ImageInputError(too_many_bytes_message(field, decoded_size, limits.max_bytes), field=field)
    if len(payload) % 4 == 1:
        raise invalid
    payload = payload.translate(_URLSAFE) + "=" * (-len(payload) % 4)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise invalid from None


def _encoded_length(size: int) -> int:
    return (size + 2) // 3 * 4
