"""ModelsLab enterprise pony routes, and the generic enterprise fetch: thin, on the shared ModelsLab code.

The page's "load balancer" (one key, many servers) is the worker pool: `diffserve serve --workers N`
spreads these jobs over N worker processes, preferring one that already holds the model (queue/local.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from diffserve.api.body import json_body_doc, parse_model
from diffserve.api.modelslab.common import fetch, read_and_authenticate, submit_and_answer
from diffserve.api.modelslab.protocol import FetchRequest
from diffserve.api.modelslab.router import ModelsLabRoute
from diffserve.api.pony.protocol import PonyImg2ImgRequest

router = APIRouter(route_class=ModelsLabRoute, tags=["ModelsLab enterprise pony"])

PONY_FETCH = "/api/v1/enterprise/pony/fetch"
ENTERPRISE_FETCH = "/api/v1/enterprise/fetch"


@router.post("/api/v1/enterprise/pony/img2img", openapi_extra=json_body_doc(PonyImg2ImgRequest),
             summary="Pony (SDXL) image to image")
async def img2img(request: Request) -> dict[str, Any]:
    ds, body, key = await read_and_authenticate(request)
    req = parse_model(PonyImg2ImgRequest, body)
    draft = req.to_draft(ds.settings.dialects.pony_model)
    return await submit_and_answer(request, ds, key, "pony", draft,
                                   instant_response=bool(req.instant_response), fetch_path=PONY_FETCH)


@router.post(PONY_FETCH, openapi_extra=json_body_doc(FetchRequest), summary="Fetch a pony request")
async def pony_fetch(request: Request) -> dict[str, Any]:
    return await fetch(request, None, PONY_FETCH)


@router.post(PONY_FETCH + "/{request_id}", openapi_extra=json_body_doc(FetchRequest),
             summary="Fetch a pony request (id in the path)")
async def pony_fetch_by_path(request: Request, request_id: str) -> dict[str, Any]:
    return await fetch(request, request_id, PONY_FETCH)


@router.post(ENTERPRISE_FETCH, openapi_extra=json_body_doc(FetchRequest), tags=["ModelsLab enterprise"],
             summary="Fetch any enterprise request of this key")
async def enterprise_fetch(request: Request) -> dict[str, Any]:
    return await fetch(request, None, ENTERPRISE_FETCH)


@router.post(ENTERPRISE_FETCH + "/{request_id}", openapi_extra=json_body_doc(FetchRequest),
             tags=["ModelsLab enterprise"], summary="Fetch any enterprise request of this key (id in the path)")
async def enterprise_fetch_by_path(request: Request, request_id: str) -> dict[str, Any]:
    return await fetch(request, request_id, ENTERPRISE_FETCH)
