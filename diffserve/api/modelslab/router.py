"""ModelsLab v6 routes: thin. Parse the body, authenticate, hand a draft to the service, render."""

from __future__ import annotations

import logging
from typing import Any, Callable

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute

from ...core.errors import DiffserveError
from ..body import json_body_doc, parse_model
from .common import fetch, read_and_authenticate, submit_and_answer
from .protocol import FetchRequest, V6Img2ImgRequest
from .render import error_response

log = logging.getLogger(__name__)


class ModelsLabRoute(APIRoute):
    """Every error on these routes leaves in the vendor's shape; nothing else reaches the client."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def guarded(request: Request):
            try:
                return await handler(request)
            except DiffserveError as e:
                return error_response(e)
            except Exception:
                log.exception("unhandled error on %s", request.url.path)
                return error_response(None)

        return guarded


router = APIRouter(route_class=ModelsLabRoute, tags=["ModelsLab v6"])


FETCH_PATH = "/api/v6/images/fetch"


@router.post("/api/v6/images/img2img", openapi_extra=json_body_doc(V6Img2ImgRequest),
             summary="Image to image (ModelsLab v6)")
async def img2img(request: Request) -> dict[str, Any]:
    ds, body, key = await read_and_authenticate(request)
    req = parse_model(V6Img2ImgRequest, body)
    draft = req.to_draft(ds.settings.default_model)
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
