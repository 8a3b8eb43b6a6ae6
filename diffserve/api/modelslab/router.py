"""ModelsLab v6 routes: thin. Parse the body, authenticate, hand a draft to the service, render."""

from __future__ import annotations

import logging
from typing import Any, Callable

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute

from ...core.errors import DiffserveError, InvalidInput
from ...core.job import Job
from ...media.inputs import is_base64_image
from ..auth import authenticate
from ..body import json_body_doc, parse_model, read_json_object
from ..state import AppState, app_state
from .protocol import FetchRequest, V6Img2ImgRequest
from .render import Links, error_response, render_job

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


@router.post("/api/v6/images/img2img", openapi_extra=json_body_doc(V6Img2ImgRequest),
             summary="Image to image (ModelsLab v6)")
async def img2img(request: Request) -> dict[str, Any]:
    ds = app_state(request)
    body = await read_json_object(request)
    key = await authenticate(ds.keys, _key_text(request, body))
    req = parse_model(V6Img2ImgRequest, body)
    draft = req.to_draft(ds.settings.default_model)
    entry = ds.registry.get(draft.model_id)
    params = {
        "instant_response": bool(req.instant_response),
        "init_image": "base64" if is_base64_image(draft.init_image) else draft.init_image,
        "model_note": entry.description if entry.builtin else "",
    }
    job = await ds.service.submit(key, "modelslab", draft, params)
    if not req.instant_response:
        job = await ds.service.wait(job.id, ds.settings.sync_wait_s)
    return await _render(ds, request, job)


@router.post("/api/v6/images/fetch/{request_id}", openapi_extra=json_body_doc(FetchRequest),
             summary="Fetch a queued or finished request")
async def fetch_by_path(request: Request, request_id: str) -> dict[str, Any]:
    return await _fetch(request, request_id)


@router.post("/api/v6/images/fetch", openapi_extra=json_body_doc(FetchRequest),
             summary="Fetch a queued or finished request (id in the body)")
async def fetch_by_body(request: Request) -> dict[str, Any]:
    return await _fetch(request, None)


async def _fetch(request: Request, path_id: str | None) -> dict[str, Any]:
    ds = app_state(request)
    body = await read_json_object(request)
    key = await authenticate(ds.keys, _key_text(request, body))
    req = parse_model(FetchRequest, body)
    job_id = _job_id(path_id) if path_id is not None else req.request_id
    if job_id is None:
        raise InvalidInput("request_id is required", field="request_id")
    job = await ds.service.get_for_key(job_id, key)
    return await _render(ds, request, job)


async def _render(ds: AppState, request: Request, job: Job) -> dict[str, Any]:
    links = Links(ds.base_url(request), ds.service.storage)
    eta = None if job.status.is_terminal() else await ds.service.eta(job)
    return render_job(job, links, eta=eta)


def _key_text(request: Request, body: dict[str, Any]) -> str | None:
    """The body's `key` (the vendor's way); a Bearer token is accepted too."""
    key = body.get("key")
    if isinstance(key, str) and key.strip():
        return key
    auth = request.headers.get("authorization", "")
    return auth[7:] if auth.lower().startswith("bearer ") else None


def _job_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidInput("request_id must be an integer", field="request_id") from None
