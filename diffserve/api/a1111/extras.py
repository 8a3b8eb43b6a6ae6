"""A1111's extras: `/extra-single-image` and `/extra-batch-images` with its non-neural upscalers (None, Lanczos,
Nearest: Pillow resizes; any other name is a 422 naming the field), `/png-info` (the PNG's text chunks, A1111's
`parameters` parsed), and `/interrogate` (501: no caption model ships with diffserve).

Every image goes through media/decode.py off the event loop (format allowlist, header pixel count before any
pixel is decoded); the requested output size is bounded by the same pixel limit before anything is resized.
Face restoration (gfpgan/codeformer visibility above 0) is refused with a 422: no face restorer ships.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from fastapi import APIRouter, Request
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from diffserve.api.a1111.infotext import parse_parameters
from diffserve.api.a1111.scripts import UPSCALERS
from diffserve.api.a1111.router import A1111Route, _key
from diffserve.api.body import json_body_doc, parse_model, read_json_object
from diffserve.config import ImageLimits
from diffserve.core.errors import DiffserveError, InvalidInput
from diffserve.media.decode import decode_frame, decode_image
from diffserve.media.inputs import decode_base64

router = APIRouter(prefix="/sdapi/v1", route_class=A1111Route, tags=["AUTOMATIC1111"])
MAX_BATCH_IMAGES = 16
FILTERS = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}


class Unprocessable(InvalidInput):
    """A value A1111 would accept but diffserve cannot serve (an upscaler or restorer it does not have)."""

    http_status = 422


class NoCaptionModel(DiffserveError):
    http_status = 501


class ExtrasRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    resize_mode: int = Field(0, ge=0, le=1, description="0: scale by upscaling_resize; 1: to w x h")
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0, ge=0, le=1)
    codeformer_visibility: float = Field(0, ge=0, le=1)
    codeformer_weight: float = Field(0, ge=0, le=1)
    upscaling_resize: float = Field(2, ge=1, le=8)
    upscaling_resize_w: int = Field(512, ge=1, le=16384)
    upscaling_resize_h: int = Field(512, ge=1, le=16384)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1)
    upscale_first: bool = False


class ExtrasSingleImageRequest(ExtrasRequest):
    image: str = ""


class FileData(BaseModel):
    data: str
    name: str = ""


class ExtrasBatchImagesRequest(ExtrasRequest):
    imageList: list[FileData] = Field(default_factory=list, max_length=MAX_BATCH_IMAGES)


class PngInfoRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image: str = ""


def _check(req: ExtrasRequest) -> None:
    for field in ("upscaler_1", "upscaler_2"):
        if getattr(req, field) not in UPSCALERS:
            raise Unprocessable(f"{field}: no upscaler named {getattr(req, field)!r}; diffserve has "
                                f"{', '.join(UPSCALERS)} (see /sdapi/v1/upscalers)", field=field)
    for field in ("gfpgan_visibility", "codeformer_visibility"):
        if getattr(req, field) > 0:
            raise Unprocessable(f"{field}: no face restorer ships with diffserve; send 0", field=field)


def _target(req: ExtrasRequest, width: int, height: int, limits: ImageLimits) -> tuple[float, tuple[int, int]]:
    """The scale and the size before any crop, as A1111's Upscaler.upscale rounds it (down to a multiple of 8)."""
    scale = req.upscaling_resize
    if req.resize_mode == 1:
        scale = max(req.upscaling_resize_w / width, req.upscaling_resize_h / height)
    size = (max(1, int(width * scale // 8 * 8)), max(1, int(height * scale // 8 * 8)))
    crop = (req.upscaling_resize_w, req.upscaling_resize_h) if req.resize_mode == 1 else (0, 0)
    if max(size[0] * size[1], crop[0] * crop[1]) > limits.max_pixels:
        raise InvalidInput(f"upscaling_resize: the upscaled image would be {size[0]}x{size[1]}, over the limit of "
                           f"{limits.max_pixels} pixels", field="upscaling_resize")
    return scale, size


def _upscale(image: Image.Image, name: str, size: tuple[int, int]) -> Image.Image:
    return image.resize(size, FILTERS[name]) if name in FILTERS else image


def upscale(req: ExtrasRequest, data: str, field: str, limits: ImageLimits) -> str:
    """One image through A1111's upscale step: upscaler_1, blended with upscaler_2 at its visibility, then the
    crop of resize_mode 1. Blocking: run it off the event loop."""
    image = decode_image(decode_base64(data, field=field, limits=limits), field=field, limits=limits)
    _, size = _target(req, image.width, image.height, limits)
    if req.upscaler_1 != "None":
        first = _upscale(image, req.upscaler_1, size)
        if req.upscaler_2 != "None" and req.extras_upscaler_2_visibility > 0:
            second = _upscale(image, req.upscaler_2, size)
            first = Image.blend(first, second, req.extras_upscaler_2_visibility)
        image = first
        if req.resize_mode == 1 and req.upscaling_crop:  # A1111: centred on a black w x h canvas
            w, h = req.upscaling_resize_w, req.upscaling_resize_h
            canvas = Image.new("RGB", (w, h))
            canvas.paste(image, (w // 2 - image.width // 2, h // 2 - image.height // 2))
            image = canvas
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _html_info(req: ExtrasRequest) -> str:
    if req.upscaler_1 == "None":
        return ""
    return f"<p>Postprocess upscale by: {req.upscaling_resize:g}, Postprocess upscaler: {req.upscaler_1}</p>"


@router.post("/extra-single-image", openapi_extra=json_body_doc(ExtrasSingleImageRequest),
             summary="Upscale one image (None, Lanczos, Nearest)")
async def extra_single_image(request: Request) -> dict[str, Any]:
    ds, _ = await _key(request)
    req = parse_model(ExtrasSingleImageRequest, await read_json_object(request))
    _check(req)
    if not req.image:
        raise InvalidInput("image is required", field="image")
    image = await ds.offload(upscale, req, req.image, "image", ds.settings.images)
    return {"html_info": _html_info(req), "image": image}


@router.post("/extra-batch-images", openapi_extra=json_body_doc(ExtrasBatchImagesRequest),
             summary="Upscale several images (None, Lanczos, Nearest)")
async def extra_batch_images(request: Request) -> dict[str, Any]:
    ds, _ = await _key(request)
    req = parse_model(ExtrasBatchImagesRequest, await read_json_object(request))
    _check(req)
    images = []
    for i, item in enumerate(req.imageList):
        images.append(await ds.offload(upscale, req, item.data, f"imageList[{i}].data", ds.settings.images))
    return {"html_info": _html_info(req), "images": images}


def text_chunks(data: str, limits: ImageLimits) -> dict[str, str]:
    """The image's text metadata (PNG tEXt/zTXt/iTXt), through media/decode.py. Blocking."""
    image = decode_frame(decode_base64(data, field="image", limits=limits), field="image", limits=limits)
    return {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}


@router.post("/png-info", openapi_extra=json_body_doc(PngInfoRequest), summary="Read an image's generation text")
async def png_info(request: Request) -> dict[str, Any]:
    ds, _ = await _key(request)
    req = parse_model(PngInfoRequest, await read_json_object(request))
    if not req.image.strip():
        raise InvalidInput("image is required", field="image")
    items = await ds.offload(text_chunks, req.image, ds.settings.images)
    info = items.pop("parameters", "")
    return {"info": info, "items": items, "parameters": parse_parameters(info)}


@router.post("/interrogate", summary="Caption an image (501: no caption model ships)")
async def interrogate(request: Request) -> None:
    await _key(request)
    raise NoCaptionModel("interrogate needs a caption model (CLIP interrogator or DeepBooru); none ships with "
                         "diffserve")
