"""ModelsLab's text2img and inpaint pages (v6, the enterprise image paths the SDK calls, and v7's
`text-to-image` and `inpaint` that ModelsLab's CLI calls), on the same
loaded weights as img2img: the v6 fields, less init_image/strength (text2img) or plus mask_image (inpaint:
white is repainted)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field

from diffserve.api.body import json_body_doc, parse_model
from diffserve.api.loose import Text
from diffserve.api.modelslab.common import read_and_authenticate, submit_and_answer
from diffserve.api.modelslab.protocol import V6Img2ImgRequest
from diffserve.api.modelslab.router import ModelsLabRoute

router = APIRouter(route_class=ModelsLabRoute, tags=["ModelsLab text2img and inpaint"])

PREFIXES = {"/api/v6/images": "/api/v6/images/fetch", "/api/v1/enterprise/images": "/api/v1/enterprise/images/fetch",
            "/api/v7/images": "/api/v7/images/fetch"}
TEXT2IMG = {"/api/v7/images": "text-to-image"}  # v7's name for the text2img page


class V6InpaintRequest(V6Img2ImgRequest):
    mask_image: Text = Field(None, description="the mask: URL, base64 or data URI; white = repaint, black = keep")


async def _task(request: Request, mode: str, fetch_path: str) -> dict[str, Any]:
    ds, body, key = await read_and_authenticate(request)
    req = parse_model(V6InpaintRequest if mode == "inpaint" else V6Img2ImgRequest, body)
    mask = getattr(req, "mask_image", None)
    draft = req.to_draft(ds.settings.engine.default_model, mode=mode, mask_image=(mask or "").strip() or None)
    return await submit_and_answer(request, ds, key, "modelslab", draft,
                                   instant_response=bool(req.instant_response), fetch_path=fetch_path)


def _register(prefix: str, fetch_path: str) -> None:
    async def text2img(request: Request) -> dict[str, Any]:
        return await _task(request, "txt2img", fetch_path)

    async def inpaint(request: Request) -> dict[str, Any]:
        return await _task(request, "inpaint", fetch_path)

    router.add_api_route(f"{prefix}/{TEXT2IMG.get(prefix, 'text2img')}", text2img, methods=["POST"],
                         summary=f"Text to image ({prefix})",
                         openapi_extra=json_body_doc(V6Img2ImgRequest), name=f"text2img{prefix.replace('/', '_')}")
    router.add_api_route(f"{prefix}/inpaint", inpaint, methods=["POST"], summary=f"Inpainting ({prefix})",
                         openapi_extra=json_body_doc(V6InpaintRequest), name=f"inpaint{prefix.replace('/', '_')}")


for _prefix, _fetch in PREFIXES.items():
    _register(_prefix, _fetch)
