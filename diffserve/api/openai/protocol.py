"""OpenAI's images API, as diffserve reads it: sizes, qualities, formats, masks, and its error shape.

- `model`: a registry id (absent: the server's default model); an unknown id is 404 `model_not_found`.
- `size`: `auto` (edits: the input image's size; generations: the model's default) or `WxH` within the
  model's limits.
- `quality` -> denoising steps: `low` half the model's default steps, `medium`, `auto` and `standard` the
  default, `high` and `hd` one and a half times it (each within the model's step limits).
- What the answer reports (ImagesResponse's enums: size 1024x1024 | 1024x1536 | 1536x1024, quality low |
  medium | high): `quality` is the level whose steps were used (auto and standard -> medium, hd -> high);
  `size` is the image's size when it is one of the spec's three, and left out otherwise (it is optional);
  a stream event, where size is required, says `auto` then. The real size is always in the
  `x-diffserve-size` response header (WIDTHxHEIGHT).
- `n`: 1-10, and at most the model's samples per request.
- `output_format`: png | jpeg | webp; `output_compression` 0-100 for jpeg / webp as the spec defines it: the
  compression level, 100 (the default) the least compression (encoder quality 100), 0 the most (quality 1);
  png is lossless and ignores it.
- `background`: `transparent` is refused (the models make opaque images); `opaque` and `auto` are fine.
- `mask` (edits): a PNG whose alpha is 0 where the image is to be repainted (OpenAI's convention); it
  becomes a white-is-repaint inpainting mask.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Literal

from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel, Field

from diffserve.config import ImageLimits
from diffserve.core.errors import (DiffserveError, Forbidden, InvalidInput, ModelNotFound, NotFound, RateLimited,
                                   Unauthorized, Unavailable)
from diffserve.core.request import ModelLimits
from diffserve.media.decode import decode_frame

QUALITY_STEPS = {"low": 0.5, "medium": 1.0, "auto": 1.0, "standard": 1.0, "high": 1.5, "hd": 1.5}
REPORTED_QUALITY = {"auto": "medium", "standard": "medium", "hd": "high"}  # ImagesResponse: low | medium | high
SPEC_SIZES = frozenset({"1024x1024", "1024x1536", "1536x1024"})  # ImagesResponse.size's enum
FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
MAX_N = 10
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageGenerationBody(BaseModel):
    """POST /v1/images/generations as OpenAI's spec types it: the schema /docs shows (the route reads the fields
    itself, with Params). Unknown fields (moderation, user, style...) are ignored."""

    prompt: str
    model: str | None = Field(None, description="a registry id; absent: the server's default model")
    n: int | None = Field(None, ge=1, le=MAX_N)
    size: str | None = Field(None, description="auto or WIDTHxHEIGHT within the model's limits")
    quality: Literal["standard", "hd", "low", "medium", "high", "auto"] | None = None
    response_format: Literal["url", "b64_json"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    background: Literal["opaque", "auto"] | None = Field(None, description="transparent is refused")
    stream: bool | None = None
    partial_images: int | None = Field(None, ge=0, le=3)


_TEXT_FIELDS = ("prompt", "model", "size", "quality", "response_format", "output_format", "background")
_INT_FIELDS = ("n", "output_compression", "partial_images")
# the spec's ImageRefParam: an http(s) or data URL (file_id is refused: no Files API, api/openai/json_edits.py)
_IMAGE_REF = {"type": "object", "additionalProperties": False, "properties": {
    "image_url": {"type": "string", "description": "an http(s) URL (fetched under the network policy) or a "
                                                   "data:image/...;base64 URL"},
    "file_id": {"type": "string", "description": "refused with a 400: diffserve has no Files API"}}}
# Both bodies the spec gives /images/edits: CreateImageEditRequest (multipart) and EditImageBodyJsonParam (JSON)
EDITS_BODY_DOC = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["image", "prompt"],
        "properties": {"image": {"type": "string", "format": "binary"},
                       "mask": {"type": "string", "format": "binary"},
                       **{name: {"type": "string"} for name in _TEXT_FIELDS},
                       **{name: {"type": "integer"} for name in _INT_FIELDS},
                       "stream": {"type": "boolean"}}}},
    "application/json": {"schema": {
        "title": "EditImageBodyJsonParam", "type": "object", "required": ["images", "prompt"],
        "properties": {"images": {"type": "array", "minItems": 1, "maxItems": 16, "items": _IMAGE_REF,
                                  "description": "the first is the image to edit, the rest are references"},
                       "mask": {**_IMAGE_REF, "description": "alpha 0 = repaint"},
                       **{name: {"type": "string"} for name in _TEXT_FIELDS},
                       **{name: {"type": "integer"} for name in _INT_FIELDS},
                       "stream": {"type": "boolean"}}}}}}}


class Params:
    """The request's fields typed as OpenAI's spec types them: strings, integers, booleans. A JSON body must send
    those types (`n: 1.5`, `n: 1e400`, `model: 7`, `stream: "maybe"` are 400s naming the param); a multipart body
    (edits) sends every field as text, read as the type it stands for ("2", "true"). null or absent: None."""

    def __init__(self, fields: dict[str, Any], *, form: bool) -> None:
        self.fields, self.form = fields, form

    def text(self, name: str) -> str | None:
        value = self.fields.get(name)
        if value is None or isinstance(value, str):
            return value
        raise InvalidInput(f"{name} must be a string (got {_kind(value)})", field=name)

    def integer(self, name: str) -> int | None:
        value = self.fields.get(name)
        if value is None or (self.form and value == ""):
            return None
        if self.form and isinstance(value, str) and len(value) < 20:
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:  # 2.0: an integer in JSON
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise InvalidInput(f"{name} must be an integer (got {_kind(value)})", field=name)

    def boolean(self, name: str) -> bool:
        value = self.fields.get(name)
        if value is None or isinstance(value, bool):
            return bool(value)
        if self.form and isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", ""):
            return value.strip().lower() in ("true", "1")
        raise InvalidInput(f"{name} must be a boolean, true or false (got {_kind(value)})", field=name)


def _kind(value: Any) -> str:
    """A wrong value, described without echoing it whole."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"[:60]
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    return {"list": "a list", "dict": "an object"}.get(type(value).__name__, type(value).__name__)


def steps_for(quality: str | None, limits: ModelLimits) -> int:
    quality = (quality or "auto").lower()
    if quality not in QUALITY_STEPS:
        raise InvalidInput(f"quality must be one of {', '.join(QUALITY_STEPS)} (got {quality!r})", field="quality")
    steps = round(limits.default_steps * QUALITY_STEPS[quality])
    return max(limits.min_steps, min(limits.max_steps, steps))


def size_for(size: str | None, limits: ModelLimits) -> tuple[int, int] | None:
    """(width, height), or None for `auto`."""
    if size is None or size.strip().lower() == "auto":
        return None
    try:
        width, height = (int(part) for part in size.lower().split("x"))
    except ValueError:
        raise InvalidInput(f"size must be 'auto' or WIDTHxHEIGHT, e.g. 512x512 (got {size!r})", field="size") from None
    for value in (width, height):
        if not limits.min_size <= value <= limits.max_size or value % limits.size_multiple:
            raise InvalidInput(f"size {size}: each side must be {limits.min_size}-{limits.max_size} and a multiple "
                               f"of {limits.size_multiple} for this model", field="size")
    return width, height


def reported_quality(quality: str) -> str:
    """The spec's name (low | medium | high) for the steps a quality gave."""
    return REPORTED_QUALITY.get(quality, quality)


def reported_size(width: int, height: int) -> str | None:
    """The size as ImagesResponse may state it: one of the spec's sizes, else None (the field left out)."""
    size = f"{width}x{height}"
    return size if size in SPEC_SIZES else None


def check_n(n: int | None, limits: ModelLimits, model_id: str) -> int:
    n = 1 if n is None else n
    top = min(MAX_N, limits.max_samples)
    if not 1 <= n <= top:
        raise InvalidInput(f"n must be between 1 and {top} for model {model_id}", field="n")
    return n


def check_output(output_format: str | None, compression: int | None, background: str | None) -> str:
    fmt = (output_format or "png").lower()
    if fmt not in FORMATS:
        raise InvalidInput(f"output_format must be one of png, jpeg, webp (got {fmt!r})", field="output_format")
    if compression is not None and not 0 <= compression <= 100:
        raise InvalidInput("output_compression must be between 0 and 100", field="output_compression")
    if (background or "auto").lower() == "transparent":
        raise InvalidInput("background 'transparent' is not supported: diffserve's models make opaque images; "
                           "use 'opaque' or 'auto'", field="background")
    if (background or "auto").lower() not in ("auto", "opaque"):
        raise InvalidInput(f"background must be auto, opaque or transparent (got {background!r})", field="background")
    return fmt


def mask_from_alpha(data: bytes, limits: ImageLimits) -> str:
    """OpenAI's mask (alpha 0 = edit) as a white-is-repaint PNG, base64. Checked like every input image
    (media/decode.py: format allowlist, header pixel count first); blocking: run it off the event loop."""
    mask = decode_frame(data, field="mask", limits=limits)
    if "A" not in mask.getbands():
        raise InvalidInput("mask must have an alpha channel: transparent pixels mark the area to edit", field="mask")
    repaint = mask.getchannel("A").point(lambda a: 255 if a == 0 else 0)
    buf = io.BytesIO()
    repaint.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def encode(data: bytes, fmt: str, compression: int | None) -> bytes:
    """An image (stored PNG, step-preview JPEG...) in the output format asked for; a PNG asked as png is as is."""
    if fmt == "png" and data.startswith(PNG_SIGNATURE):
        return data
    image = Image.open(io.BytesIO(data)).convert("RGB")
    buf = io.BytesIO()
    options = {} if fmt == "png" else {"quality": max(1, 100 if compression is None else compression)}
    image.save(buf, format=FORMATS[fmt], **options)
    return buf.getvalue()


def error_response(exc: DiffserveError | None) -> JSONResponse:
    """OpenAI's error shape and the status codes its client maps; deterministic failures say not to retry."""
    if exc is None:
        return _error(500, "Internal server error", "server_error", None, None, retry=True)
    if isinstance(exc, ModelNotFound):
        return _error(404, exc.message, "invalid_request_error", "model", "model_not_found")
    if isinstance(exc, Unauthorized):
        return _error(401, exc.message, "invalid_request_error", None, "invalid_api_key")
    if isinstance(exc, Forbidden):
        return _error(403, exc.message, "invalid_request_error", None, None)
    if isinstance(exc, NotFound):
        return _error(404, exc.message, "invalid_request_error", None, "not_found")
    if isinstance(exc, RateLimited):
        response = _error(429, exc.message, "requests", None, "rate_limit_exceeded", retry=True)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, Unavailable):
        return _error(503, exc.message, "server_error", None, None, retry=True)
    if isinstance(exc, InvalidInput):
        return _error(400, exc.message, "invalid_request_error", exc.field, None)
    return _error(500, exc.message, "server_error", None, None)


def _error(status: int, message: str, kind: str, param: str | None, code: str | None,
           retry: bool = False) -> JSONResponse:
    body: dict[str, Any] = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    headers = {} if retry else {"x-should-retry": "false"}
    return JSONResponse(body, status_code=status, headers=headers)
