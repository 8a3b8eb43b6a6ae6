"""diffserve.media.decode: decoding untrusted images (formats, modes, transparency, EXIF, bombs, truncation).

Every fixture is built here with Pillow (tests/media_helpers.py); nothing connects anywhere.
"""

from __future__ import annotations

import io
import os
import struct
import time
import zlib

import pytest
from PIL import Image

from diffserve.config import ImageLimits
from diffserve.core.errors import ImageInputError
from diffserve.media.decode import decode_image, decode_image_source, to_rgb

from .media_helpers import LIMITS, encode, gradient


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


# --------------------------------------------------------------------------- the client's own PNG bytes


def test_a_plain_png_is_handed_back_as_sent() -> None:
    """An RGB PNG read as is: the server can store the client's bytes instead of encoding the image again,
    and reading them back plainly (as a worker does) gives the very pixels validation saw."""
    data = encode(gradient(), "PNG")
    image, source = decode_image_source(data, field="init_image", limits=LIMITS)
    assert source is data
    with Image.open(io.BytesIO(source)) as again:
        assert again.convert("RGB").tobytes() == image.tobytes()


def _rotated_png() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(gradient(40, 20), "PNG", exif=exif)


@pytest.mark.parametrize("data", [
    pytest.param(lambda: encode(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG"), id="rgba"),
    pytest.param(lambda: encode(gradient().convert("P"), "PNG"), id="palette"),
    pytest.param(lambda: encode(gradient().convert("L"), "PNG"), id="grey"),
    pytest.param(lambda: encode(gradient(), "JPEG"), id="jpeg"),
    pytest.param(lambda: encode(Image.new("RGB", (8, 8)), "PNG", save_all=True,
                                append_images=[Image.new("RGB", (8, 8), (9, 9, 9))]), id="animated"),
    pytest.param(_rotated_png, id="exif-rotated"),
])
def test_an_image_changed_by_decoding_is_not_handed_back(data) -> None:
    """Whatever decoding changes (transparency composited, a mode converted, another format, frames dropped,
    an EXIF rotation applied) must be stored as decoded: no source bytes."""
    image, source = decode_image_source(data(), field="init_image", limits=LIMITS)
    assert source is None and image.mode == "RGB"
