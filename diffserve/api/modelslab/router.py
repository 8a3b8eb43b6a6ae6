"""ModelsLab v6 routes: thin. Parse the body, authenticate, hand a draft to the service, render."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from diffserve.api.body import json_body_doc, parse_model
from diffserve.api.errors import guarded_route
from diffserve.api.modelslab.common import fetch, read_and_authenticate, submit_and_answer
from diffserve.api.modelslab.protocol import FetchRequest, V6Img2ImgRequest
from diffserve.api.modelslab.render import error_response

# Every error on the ModelsLab-style routes leaves in the vendor's shape; nothing else reaches the client.
ModelsLabRoute = guarded_route(lambda _request, error: error_response(error), "ModelsLabRoute")

router = APIRouter(route_class=ModelsLabRoute, tags=["ModelsLab v6"])


FETCH_PATH = "/api/v6/images/fetch"


@router.post("/api/v6/images/img2img", openapi_extra=json_body_doc(V6Img2ImgRequest),
             summary="Image to image (ModelsLab v6)")
async def img2img(request: Request) -> dict[str, Any]:
    ds, body, key = await read_and_authenticate(request)
    req = parse_model(V6Img2ImgRequest, body)
    draft = req.to_draft(ds.settings.engine.default_model)
    return await submit_and_answer(request, ds, key, "modelslab", draft,
                                   instant_response=bool(req.instant_response), fetch_path=FETCH_PATH)


@router.post("/api/v6/images/fetch/{request_id}", openapi_extra=json_body_doc(FetchRequest),
             summary="Fetch a queued or finished request")
async def fetch_by_path(request: Request, request_id: str) -> dict[str, Any]:
    return await fetch(request, request_id, FETCH_PATH)


@router.post("/api/v6/images/fetch", openapi_extra=json_body_doc(FetchRequest),
             summary="Fetch a queued or finished request (id in the body)")
async def fetch_by_body(request: Request) -> dict[str, Any]:
    return await fetch(request, None, FETCH_PATH)
