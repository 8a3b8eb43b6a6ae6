"""ModelsLab v7 image-to-image (the path ModelsLab's CLI calls) and the enterprise image paths the official
SDK calls (`Community(client, enterprise=True)`): the v6 request and answers under other paths.

v7 adds: `init_image` as a string or a list (the first is the init image, the rest -- and `init_image_2`
-- are reference images where the model takes them, else a 400 naming init_image), `aspect_ratio`
("1:1", "16:9"... when no width/height: the longer side is the model's largest size up to 1024) and the
key in a `Key` header.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field

from diffserve.api.body import json_body_doc, parse_model
from diffserve.api.loose import LooseStr, Text
from diffserve.api.modelslab.common import fetch, read_and_authenticate, submit_and_answer
from diffserve.api.modelslab.protocol import FetchRequest, V6Img2ImgRequest
from diffserve.api.modelslab.router import ModelsLabRoute
from diffserve.core.errors import InvalidInput
from diffserve.core.request import ModelLimits, RequestDraft

router = APIRouter(route_class=ModelsLabRoute, tags=["ModelsLab v7 and enterprise images"])

V7_FETCH = "/api/v7/images/fetch"
ENTERPRISE_IMAGES_FETCH = "/api/v1/enterprise/images/fetch"
ENTERPRISE_FETCH = "/api/v1/enterprise/fetch"  # answered by api/pony/router.py (any job of the key)


class V7Img2ImgRequest(V6Img2ImgRequest):
    init_image: Any = Field(None, description="one image (URL, base64, data URI) or a list of them")
    init_image_2: Text = Field(None, description="a second (reference) image")
    aspect_ratio: LooseStr = Field(None, description='output aspect ratio, e.g. "1:1", "16:9" (no width/height)')

    def to_v7_draft(self, default_model: str, limits_of) -> RequestDraft:
        images = self.init_image if isinstance(self.init_image, list) else [self.init_image]
        if not images or not all(isinstance(i, str) or i is None for i in images):
            raise InvalidInput("init_image must be a string or a list of strings", field="init_image")
        first, *extra = [i for i in images if i and i.strip()] or [None]
        if self.init_image_2 and self.init_image_2.strip():
            extra.append(self.init_image_2.strip())
        v6 = self.model_copy(update={"init_image": first})
        draft = V6Img2ImgRequest.to_draft(v6, default_model)
        update: dict[str, Any] = {"extra_images": extra, "extra_images_field": "init_image"}
        if self.aspect_ratio and self.width is None and self.height is None:
            update["width"], update["height"] = aspect_size(self.aspect_ratio, limits_of(draft.model_id))
        return draft.model_copy(update=update)


def aspect_size(ratio: str, limits: ModelLimits) -> tuple[int, int]:
    try:
        w, h = (float(part) for part in ratio.split(":"))
        if w <= 0 or h <= 0 or max(w / h, h / w) > 16:
            raise ValueError
    except ValueError:
        raise InvalidInput(f'aspect_ratio must look like "16:9" (got {ratio!r})', field="aspect_ratio") from None
    side, step = min(limits.max_size, 1024), limits.size_multiple
    long_, short = side, max(limits.min_size, int(side * min(w, h) / max(w, h)) // step * step)
    return (long_, short) if w >= h else (short, long_)


@router.post("/api/v7/images/image-to-image", openapi_extra=json_body_doc(V7Img2ImgRequest),
             summary="Image to image (ModelsLab v7)")
async def v7_img2img(request: Request) -> dict[str, Any]:
    ds, body, key = await read_and_authenticate(request)
    req = parse_model(V7Img2ImgRequest, body)
    draft = req.to_v7_draft(ds.settings.engine.default_model, lambda model_id: ds.registry.get(model_id).limits)
    return await submit_and_answer(request, ds, key, "modelslab", draft,
                                   instant_response=bool(req.instant_response), fetch_path=V7_FETCH)


@router.post(V7_FETCH + "/{request_id}", openapi_extra=json_body_doc(FetchRequest), summary="Fetch (v7)")
async def v7_fetch(request: Request, request_id: str) -> dict[str, Any]:
    return await fetch(request, request_id, V7_FETCH)


async def _enterprise_img2img(request: Request, fetch_path: str) -> dict[str, Any]:
    ds, body, key = await read_and_authenticate(request)
    req = parse_model(V6Img2ImgRequest, body)
    return await submit_and_answer(request, ds, key, "modelslab", req.to_draft(ds.settings.engine.default_model),
                                   instant_response=bool(req.instant_response), fetch_path=fetch_path)


@router.post("/api/v1/enterprise/images/img2img", openapi_extra=json_body_doc(V6Img2ImgRequest),
             summary="Image to image (ModelsLab enterprise, the SDK's path)")
async def enterprise_images_img2img(request: Request) -> dict[str, Any]:
    return await _enterprise_img2img(request, ENTERPRISE_IMAGES_FETCH)


@router.post("/api/v1/enterprise/img2img", openapi_extra=json_body_doc(V6Img2ImgRequest),
             summary="Image to image (the older enterprise page)")
async def enterprise_img2img(request: Request) -> dict[str, Any]:
    return await _enterprise_img2img(request, ENTERPRISE_FETCH)


@router.post(ENTERPRISE_IMAGES_FETCH + "/{request_id}", openapi_extra=json_body_doc(FetchRequest),
             summary="Fetch (enterprise images)")
async def enterprise_images_fetch(request: Request, request_id: str) -> dict[str, Any]:
    return await fetch(request, request_id, ENTERPRISE_IMAGES_FETCH)


@router.post(ENTERPRISE_IMAGES_FETCH, openapi_extra=json_body_doc(FetchRequest),
             summary="Fetch (enterprise images, id in the body)")
async def enterprise_images_fetch_body(request: Request) -> dict[str, Any]:
    return await fetch(request, None, ENTERPRISE_IMAGES_FETCH)
