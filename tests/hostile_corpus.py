"""Hostile inputs, built in code: image files that bite, and JSON bodies that do."""

from __future__ import annotations

import base64
import functools
import io
import struct
import zlib

from PIL import Image

TEN_MB = 10 * 1024 * 1024


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (8-bit greyscale); a few hundred bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 16, 9)  # 16 rows of zeros: the rest is missing
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


@functools.lru_cache(maxsize=4)
def valid_png(width: int, height: int) -> bytes:
    """A complete, valid 8-bit greyscale PNG of width x height black pixels: every row is there (a 13000x13000
    one is ~0.7 MB, built in about a second), so a decoder that is allowed to will decode all of it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    deflate = zlib.compressobj(1)
    rows = b"\x00" * (width + 1) * max(1, 4 * 1024 * 1024 // (width + 1))  # filter byte 0, then the zero pixels
    per_block = len(rows) // (width + 1)
    parts = [deflate.compress(rows[: (width + 1) * min(per_block, height - done)])
             for done in range(0, height, per_block)]
    idat = b"".join(parts) + deflate.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def encoded(img: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def gradient(width: int = 64, height: int = 64, mode: str = "RGB") -> Image.Image:
    img = Image.new("RGB", (width, height))
    img.putdata([(x * 4 % 256, y * 4 % 256, (x + y) % 256) for y in range(height) for x in range(width)])
    return img.convert(mode) if mode != "RGB" else img


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def palette_png_with_alpha() -> bytes:
    img = gradient().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encoded(img, "PNG", transparency=0)


def png_16bit() -> bytes:
    img = Image.new("I;16", (64, 64))
    img.putdata([(x * 1000) % 65536 for y in range(64) for x in range(64)])
    return encoded(img, "PNG")


def exif_rotated_jpeg(width: int = 64, height: int = 96, orientation: int = 6) -> bytes:
    """Stored width x height; orientation 6 means "rotate 90 degrees clockwise to view"."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(gradient(width, height), "JPEG", exif=exif.tobytes())


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


# name -> (image bytes, expected output W x H or None when it must be refused, expected message part)
def image_corpus() -> dict[str, tuple[bytes, tuple[int, int] | None, str]]:
    ok = gradient()
    return {
        "bomb-huge": (png_bomb(100_000, 100_000), None, "init_image is too large"),
        "bomb-over-limit": (png_bomb(5000, 5000), None, "init_image is too large: 5000 x 5000 pixels"),
        "truncated-png": (_half(encoded(ok, "PNG")), None, "init_image is truncated or corrupt"),
        "truncated-jpeg": (_half(encoded(ok, "JPEG")), None, "init_image is truncated or corrupt"),
        "pdf": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", None,
                "init_image is not a valid image"),
        "html": (b"<html><body>hi</body></html>", None, "init_image is not a valid image"),
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>', None,
                "init_image is not a valid image"),
        "tiff": (encoded(ok, "TIFF"), None, "init_image is not a valid image"),
        "animated-gif": (animated_gif(), (64, 64), ""),
        "cmyk-jpeg": (encoded(ok.convert("CMYK"), "JPEG"), (64, 64), ""),
        "palette-alpha-png": (palette_png_with_alpha(), (64, 64), ""),
        "rgba-png": (encoded(ok.convert("RGBA"), "PNG"), (64, 64), ""),
        "16-bit-png": (png_16bit(), (64, 64), ""),
        "exif-rotated-jpeg": (exif_rotated_jpeg(), (96, 64), ""),
    }
