"""ModelsLab enterprise realtime routes (and their v6 twins): thin, on the shared ModelsLab code."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from diffserve.api.body import json_body_doc, parse_model
from diffserve.api.modelslab.common import fetch, read_and_authenticate, submit_and_answer
from diffserve.api.modelslab.protocol import FetchRequest
from diffserve.api.modelslab.router import ModelsLabRoute
from diffserve.api.realtime.protocol import RealtimeImg2ImgRequest, RealtimeInpaintRequest

router = APIRouter(route_class=ModelsLabRoute, tags=["ModelsLab enterprise realtime"])

ENTERPRISE_FETCH = "/api/v1/enterprise/realtime/fetch"
V6_FETCH = "/api/v6/realtime/fetch"


async def _img2img(request: Request, fetch_path: str, mode: str = "img2img") -> dict[str, Any]:
    ds, body, key = await read_and_authenticate(request)
    req = parse_model(RealtimeInpaintRequest if mode == "inpaint" else RealtimeImg2ImgRequest, body)
    mask = getattr(req, "mask_image", None)
    draft = req.to_draft(ds.settings, mode=mode, mask_image=(mask or "").strip() or None)
    return await submit_and_answer(request, ds, key, "realtime", draft,
                                   instant_response=bool(req.instant_response), fetch_path=fetch_path)


@router.post("/api/v1/enterprise/realtime/img2img", openapi_extra=json_body_doc(RealtimeImg2ImgRequest),
             summary="Realtime image to image (the server's few-step model)")
async def enterprise_img2img(request: Request) -> dict[str, Any]:
    return await _img2img(request, ENTERPRISE_FETCH)


@router.post("/api/v6/realtime/img2img", openapi_extra=json_body_doc(RealtimeImg2ImgRequest),
             summary="Realtime image to image (v6 path)")
async def v6_img2img(request: Request) -> dict[str, Any]:
    return await _img2img(request, V6_FETCH)


def _register(prefix: str, fetch_path: str) -> None:
    """The realtime text2img and inpaint pages (the official SDK's `Realtime.text_to_image` / `inpainting`)."""

    async def text2img(request: Request) -> dict[str, Any]:
        return await _img2img(request, fetch_path, "txt2img")

    async def inpaint(request: Request) -> dict[str, Any]:
        return await _img2img(request, fetch_path, "inpaint")

    name = prefix.replace("/", "_")
    router.add_api_route(f"{prefix}/text2img", text2img, methods=["POST"], name=f"realtime_text2img{name}",
                         openapi_extra=json_body_doc(RealtimeImg2ImgRequest),
                         summary=f"Realtime text to image ({prefix})")
    router.add_api_route(f"{prefix}/inpaint", inpaint, methods=["POST"], name=f"realtime_inpaint{name}",
                         openapi_extra=json_body_doc(RealtimeInpaintRequest), summary=f"Realtime inpainting ({prefix})")


_register("/api/v1/enterprise/realtime", ENTERPRISE_FETCH)
_register("/api/v6/realtime", V6_FETCH)


@router.post(ENTERPRISE_FETCH + "/{request_id}", openapi_extra=json_body_doc(FetchRequest),
             summary="Fetch a realtime request")
async def enterprise_fetch(request: Request, request_id: str) -> dict[str, Any]:
    return await fetch(request, request_id, ENTERPRISE_FETCH)


@router.post(V6_FETCH + "/{request_id}", openapi_extra=json_body_doc(FetchRequest),
             summary="Fetch a realtime request (v6 path)")
async def v6_fetch(request: Request, request_id: str) -> dict[str, Any]:
    return await fetch(request, request_id, V6_FETCH)
