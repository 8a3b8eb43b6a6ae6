"""Decode untrusted image bytes into a plain, fully loaded RGB image.

Everything a client sends goes through :func:`decode_image`. The order of checks matters:
the byte size is checked before Pillow sees the data, the pixel size is read from the header
(``Image.open`` is lazy) and checked before any pixel is decoded, and only then is the first
frame loaded. Refusals raise :class:`~diffserve.core.errors.ImageInputError` naming the field.

Policy, in short:

* Formats: PNG (APNG included), JPEG (MPO too: it is a JPEG with extra pictures), WEBP, GIF and
  BMP. Pillow is only allowed to try those plugins, so no other parser runs on client data.
* Multi-frame images (animated GIF/WEBP/APNG, MPO): frame 0 only; the other frames are never
  decoded.
* Truncated files are errors. Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set here
  (it is a process-wide switch, and with it Pillow pads the missing rows with grey).
* Pixel limit: ``limits.max_pixels`` is checked on the header size. Pillow's own guard
  (``Image.MAX_IMAGE_PIXELS``, a global we leave alone) may fire first: its
  ``DecompressionBombError`` is reported as "too large" too, and its ``DecompressionBombWarning``
  (between 1x and 2x Pillow's limit) is superseded by our check, which runs right after the
  header is read and before anything is decoded.
* EXIF orientation is applied, then the image is converted to RGB: transparency is composited
  onto white, CMYK is converted, 16-bit greyscale is scaled (0..65535 -> 0..255).
  Embedded ICC profiles are ignored.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib

from PIL import Image, ImageOps, UnidentifiedImageError

from diffserve.config import ImageLimits
from diffserve.core.errors import ImageInputError

log = logging.getLogger(__name__)

#: Pillow plugins tried on client data. The JPEG plugin also opens MPO (multi-picture JPEG, as
#: written by some cameras), which Pillow then reports as format "MPO".
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")

# What Pillow raises on malformed input while parsing headers or decoding pixels.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError, KeyError, TypeError)

_WHITE = (255, 255, 255, 255)
_ORIENTATION = 0x0112  # the EXIF tag ImageOps.exif_transpose follows


def not_an_image_message(field: str) -> str:
    return f"{field} is not a valid image (PNG, JPEG, WEBP, GIF or BMP)"


def too_many_bytes_message(field: str, size: int | None, max_bytes: int) -> str:
    """`size` None means "more than the limit, exact size unknown" (a stream cut short)."""
    if size is None:
        return f"{field} is too large (max {max_bytes} bytes)"
    return f"{field} is too large: {size} bytes (max {max_bytes} bytes)"


def decode_image(data: bytes, *, field: str, limits: ImageLimits) -> Image.Image:
    """Decode `data` into a loaded RGB image (first frame, EXIF orientation applied).

    Raises ImageInputError (with `field`) if the data is too large (bytes or pixels), not one of
    the accepted formats, truncated or corrupt.
    """
    return decode_image_source(data, field=field, limits=limits)[0]


def decode_image_source(data: bytes, *, field: str, limits: ImageLimits) -> tuple[Image.Image, bytes | None]:
    """decode_image, and `data` itself when it is a PNG that reads back as exactly that image with nothing
    done to it (one frame, RGB, no transparency, no EXIF rotation): a server that stores it can keep the
    client's bytes instead of encoding the image again (PNG encoding costs ~36 ms at 512 x 512 here). None
    otherwise."""
    frame, plain = _decode_frame(data, field=field, limits=limits)
    try:
        return to_rgb(frame), data if plain else None
    except _DECODE_ERRORS as exc:  # a mode Pillow cannot convert: the client's file
        log.info("cannot convert %s (%s) to RGB: %s: %s", field, frame.mode, type(exc).__name__, exc)
        raise ImageInputError(f"{field} is truncated or corrupt", field=field) from None


def decode_frame(data: bytes, *, field: str, limits: ImageLimits) -> Image.Image:
    """The same checks and decoding as :func:`decode_image`, but the frame keeps its own mode (RGBA,
    L, P...): for masks, whose alpha or grey levels are the point. Blocking: call it off the event loop."""
    return _decode_frame(data, field=field, limits=limits)[0]


def _decode_frame(data: bytes, *, field: str, limits: ImageLimits) -> tuple[Image.Image, bool]:
    """The frame, and whether it is `data` read plainly (decode_image_source)."""
    if len(data) > limits.max_bytes:
        raise ImageInputError(too_many_bytes_message(field, len(data), limits.max_bytes), field=field)
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as im:
            width, height = im.size
            if width * height > limits.max_pixels:
                raise _too_many_pixels(field, width, height, limits)
            im.load()  # frame 0; raises on truncated data
            return _apply_orientation(im, field), _plain_png(im)
    except Image.DecompressionBombError:
        # Pillow refused the header size before we could look at it (> 2x its own global limit,
        # which therefore caps ours).
        cap = limits.max_pixels if Image.MAX_IMAGE_PIXELS is None else min(limits.max_pixels, 2 * Image.MAX_IMAGE_PIXELS)
        raise ImageInputError(f"{field} is too large: more than {cap} pixels", field=field) from None
    except UnidentifiedImageError:
        raise ImageInputError(not_an_image_message(field), field=field) from None
    except _DECODE_ERRORS as exc:
        log.info("cannot decode %s: %s: %s", field, type(exc).__name__, exc)
        raise ImageInputError(f"{field} is truncated or corrupt", field=field) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency onto white.

    A plain RGB image without a transparency key is returned as is.
    """
    if image.has_transparency_data:
        # RGBA, LA, PA, P/L/RGB with a tRNS/transparency key: dropping alpha would show whatever
        # colour happens to sit under transparent pixels, so composite onto white instead.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        background.alpha_composite(rgba)
        return background.convert("RGB")
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit greyscale (PNG gives I;16, older Pillow gave I). convert("L") would clip at 255,
        # turning almost everything white; scale 0..65535 to 0..255 instead (rounded).
        return _scale_to_l(image.convert("I"), 65535 if _within(image, 0, 65535) else None).convert("RGB")
    if image.mode == "F":
        return _scale_to_l(image, 1.0 if _within(image, 0.0, 1.0) else None).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV


def _scale_to_l(image: Image.Image, full_scale: float | None) -> Image.Image:
    """Map [0, full_scale] linearly onto 0..255; None means stretch the image's own min..max."""
    if full_scale is None:
        low, high = image.getextrema()
    else:
        low, high = 0, full_scale
    span = (high - low) or 1
    scale = 255 / span
    return image.point(lambda v: (v - low) * scale + 0.5).convert("L")


def _within(image: Image.Image, low: float, high: float) -> bool:
    lo, hi = image.getextrema()
    return lo >= low and hi <= high


def _plain_png(im: Image.Image) -> bool:
    """A loaded PNG that any reader's plain open-and-load gives as this very RGB frame. (Pillow parses the EXIF
    block once per image and keeps it: _apply_orientation's exif_transpose reads the same, not the bytes again.)"""
    if im.format != "PNG" or im.mode != "RGB" or getattr(im, "is_animated", False) or im.has_transparency_data:
        return False
    try:
        return im.getexif().get(_ORIENTATION) not in range(2, 9)  # exif_transpose turns only these
    except Exception:  # noqa: BLE001 - an unreadable EXIF block: _apply_orientation copes, we re-encode
        return False


def _apply_orientation(im: Image.Image, field: str) -> Image.Image:
    """A new image, rotated/flipped per EXIF: never `im` itself, which closes with its file."""
    try:
        return ImageOps.exif_transpose(im)  # a copy when there is no orientation tag
    except Exception as exc:  # noqa: BLE001 - a malformed EXIF block only costs us the rotation
        log.info("ignoring unreadable EXIF orientation in %s: %s", field, exc)
        return im.copy()


def _too_many_pixels(field: str, width: int, height: int, limits: ImageLimits) -> ImageInputError:
    return ImageInputError(
        f"{field} is too large: {width} x {height} pixels (max {limits.max_pixels})", field=field
    )
