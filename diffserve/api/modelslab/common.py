"""What every ModelsLab route shares (v6, v7, enterprise, realtime, pony, and the enterprise management routes):
the route class that answers errors in the vendor's shape, where the key comes from, submit-then-answer, fetch
by path or by body, and rendering with the caller's fetch URL."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from diffserve.core.errors import InvalidInput
from diffserve.core.job import Job
from diffserve.core.request import RequestDraft
from diffserve.media.inputs import is_base64_image
from diffserve.store.keys import ApiKey
from diffserve.api.disconnect import client_watch
from diffserve.api.auth import authenticate, bearer_token, check_key
from diffserve.api.body import parse_model, read_json_object
from diffserve.api.errors import guarded_route
from diffserve.api.state import AppState, app_state
from diffserve.api.modelslab.protocol import FetchRequest
from diffserve.api.modelslab.render import Links, error_response, render_job

# Every error on the ModelsLab-style routes leaves in the vendor's shape; nothing else reaches the client.
ModelsLabRoute = guarded_route(lambda _request, error: error_response(error), "ModelsLabRoute")


def key_text(request: Request, body: dict[str, Any]) -> str | None:
    """The body's `key` (the vendor's way); a `Key` header (v7, ModelsLab's CLI) or a Bearer token too."""
    key = body.get("key")
    if isinstance(key, str) and key.strip():
        return key
    if request.headers.get("key", "").strip():
        return request.headers["key"]
    return bearer_token(request)


async def read_and_authenticate(request: Request) -> tuple[AppState, dict[str, Any], ApiKey]:
    ds = app_state(request)
    body = await read_json_object(request)
    key = await authenticate(ds.keys, key_text(request, body), ds.offload)
    return ds, body, key


def dialect_params(ds: AppState, draft: RequestDraft, *, instant_response: bool) -> dict[str, Any]:
    """What the ModelsLab renderer needs beyond the canonical request (echoed in `meta`)."""
    entry = ds.registry.get(draft.model_id)
    return {
        "instant_response": instant_response,
        "init_image": "base64" if is_base64_image(draft.init_image) else draft.init_image,
        "model_note": entry.description if entry.builtin else "",
    }


async def submit_and_answer(request: Request, ds: AppState, key: ApiKey, dialect: str, draft: RequestDraft,
                            *, instant_response: bool, fetch_path: str) -> dict[str, Any]:
    """Queue the draft; wait for the result unless the client asked for an instant answer."""
    params = await ds.offload(dialect_params, ds, draft, instant_response=instant_response)  # the registry: a stat
    job = await ds.service.submit(key, dialect, draft, params, base_url=ds.base_url(request))  # webhook links too
    if not instant_response:
        # a client that leaves stops the wait (the job goes on: it can be fetched by id)
        async with client_watch(request) as gone:
            job = await ds.service.wait(job.id, ds.settings.dialects.sync_wait_s, gone)
    return await answer(ds, request, job, fetch_path)


async def fetch(request: Request, path_id: str | None, fetch_path: str) -> dict[str, Any]:
    """A job of this key, by the id in the path or `request_id` in the body. What clients poll, so everything
    blocking -- the key, the job, its eta, rendering (presigned URLs, base64 reads) -- is one offloaded call."""
    ds = app_state(request)
    body = await read_json_object(request)
    links = Links(ds.base_url(request), ds.service.storage, fetch_path=fetch_path)
    return await ds.offload(_fetch_now, ds, key_text(request, body), body, path_id, links)


def _fetch_now(ds: AppState, text: str | None, body: dict[str, Any], path_id: str | None,
               links: Links) -> dict[str, Any]:
    """fetch's blocking part, in the order its errors are answered: the key, the body, the id, the job."""
    key = check_key(ds.keys, text)
    req = parse_model(FetchRequest, body)
    job_id = job_id_from_path(path_id) if path_id is not None else req.request_id
    if job_id is None:
        raise InvalidInput("request_id is required", field="request_id")
    job = ds.service.job_for_key(job_id, key)
    return render_job(job, links, eta=None if job.status.is_terminal() else ds.service.eta_now(job))


async def answer(ds: AppState, request: Request, job: Job, fetch_path: str) -> dict[str, Any]:
    """The job in the vendor's shape, rendered off the event loop: output URLs may be presigned by S3 storage,
    and a base64 answer reads every output image from storage."""
    links = Links(ds.base_url(request), ds.service.storage, fetch_path=fetch_path)
    eta = None if job.status.is_terminal() else await ds.service.eta(job)
    return await ds.offload(render_job, job, links, eta=eta)


def job_id_from_path(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidInput("request_id must be an integer", field="request_id") from None
