"""/v1/jobs: submit the canonical request, read, list, follow (server-sent events) and cancel jobs.

A Bearer key sees only its own jobs -- of every dialect (ModelsLab, Qolaba... submissions are jobs too).
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from diffserve.api.auth import authenticate, bearer_token
from diffserve.api.body import json_body_doc, parse_model, read_json_object
from diffserve.api.errors import guarded_route
from diffserve.api.native.protocol import JobCreate
from diffserve.api.native.render import error_response, render_job, sse
from diffserve.api.state import AppState, app_state
from diffserve.core.errors import NotFound
from diffserve.core.job import Job
from diffserve.engine.models.capabilities import SCHEDULERS, family_controls
from diffserve.store.keys import ApiKey

NativeRoute = guarded_route(error_response, "NativeRoute")
NATIVE_IMAGE_FIELDS = {"init_image_field": "init_image", "mask_field": "mask_image",
                       "extra_images_field": "extra_images"}
router = APIRouter(route_class=NativeRoute, tags=["Jobs (native)"])

EVENT_KEEPALIVE_S = 15.0  # a comment line this often while the job does not change


async def _key(request: Request) -> tuple[AppState, ApiKey]:
    ds = app_state(request)
    return ds, await authenticate(ds.keys, bearer_token(request), ds.offload)


async def _job(ds: AppState, key: ApiKey, job_id: str) -> Job:
    valid = job_id.isascii() and job_id.isdigit() and len(job_id) < 20
    return await ds.service.get_for_key(int(job_id) if valid else None, key)


async def _render(ds: AppState, request: Request, job: Job, *, created: bool = False,
                  base_url: str | None = None) -> dict[str, Any]:
    return render_job(job, ds.service.storage, base_url or ds.base_url(request),
                      await ds.service.live_state(job, created=created))


@router.post("/v1/jobs", status_code=202, openapi_extra=json_body_doc(JobCreate),
             summary="Submit a job (the canonical request)")
async def create_job(request: Request) -> JSONResponse:
    ds, key = await _key(request)
    body = parse_model(JobCreate, await read_json_object(request))
    draft = body.model_copy(update={"model_id": body.model_id or ds.settings.engine.default_model,  # errors name native fields
                                    **NATIVE_IMAGE_FIELDS})
    base_url = ds.base_url(request)
    job = await ds.service.submit(key, "native", draft, {}, base_url=base_url)
    return JSONResponse(await _render(ds, request, job, created=True, base_url=base_url), status_code=202)


@router.get("/v1/jobs", summary="This key's jobs, newest first (paged with `before`)")
async def list_jobs(request: Request, limit: int = Query(20, ge=1, le=100),
                    before: int | None = Query(None, ge=1, le=2**63 - 1)) -> dict[str, Any]:
    ds, key = await _key(request)
    jobs = await ds.offload(ds.service.jobs.list_for_key, key.key_id, limit=limit, before=before)
    data = [await _render(ds, request, job) for job in jobs]
    return {"data": data, "next_before": jobs[-1].id if len(jobs) == limit else None}


@router.get("/v1/jobs/{job_id}", summary="A job: status, progress, eta, outputs, meta, error")
async def get_job(request: Request, job_id: str) -> dict[str, Any]:
    ds, key = await _key(request)
    return await _render(ds, request, await _job(ds, key, job_id))


@router.post("/v1/jobs/{job_id}/cancel", summary="Cancel a job (queued: dropped; running: stops at its next step)")
async def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
    ds, key = await _key(request)
    job = await ds.service.cancel(await _job(ds, key, job_id))
    return await _render(ds, request, job)


@router.get("/v1/jobs/{job_id}/preview", summary="The latest step preview of a running job (JPEG)")
async def job_preview(request: Request, job_id: str) -> Response:
    ds, key = await _key(request)
    job = await _job(ds, key, job_id)
    data = await ds.offload(ds.service.progress.preview, job.id) if ds.service.progress else None
    if not data:
        raise NotFound(f"No preview for job {job.id}")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


@router.get("/v1/jobs/{job_id}/events", summary="Server-sent events: queued, running (step progress), "
            "preview (with previews=true), then succeeded / failed / cancelled")
async def job_events(request: Request, job_id: str, previews: bool = False) -> StreamingResponse:
    ds, key = await _key(request)
    job = await _job(ds, key, job_id)  # errors before the stream starts keep their status code
    watch = ds.service.watch
    slot = watch.open_stream(key.key_id, ds.settings.limits.max_streams_per_key)  # RateLimited past the cap

    async def stream():
        """Woken by the shared watch when the job changes (service/watch.py): no polling per stream."""
        last: tuple | None = None
        last_preview = None
        try:
            with watch.follow(job.id) as follower:
                while True:
                    current = await ds.offload(ds.service.jobs.get, job.id)
                    body = await _render(ds, request, current)
                    state = (body["status"], body["progress"]["step"])
                    if state != last:
                        last = state
                        yield sse(body["status"], body)
                    if previews and body["status"] == "running" and ds.service.progress is not None:
                        data = await ds.offload(ds.service.progress.preview, job.id)
                        if data and data != last_preview:
                            last_preview = data
                            yield sse("preview", {"id": job.id, "step": body["progress"]["step"],
                                                  "image": "data:image/jpeg;base64," + base64.b64encode(data).decode()})
                    if current.status.is_terminal():
                        return
                    while not await follower.changed(EVENT_KEEPALIVE_S):
                        yield b": keep-alive\n\n"  # a comment line: a client that left is noticed here
        finally:
            slot.release()

    return StreamingResponse(slot.bind(stream()), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/v1/models", summary="The model registry (OpenAI's list shape, plus family and limits)")
async def list_models(request: Request) -> dict[str, Any]:
    ds, _key_ = await _key(request)
    models = await ds.offload(ds.registry.items)
    return {"object": "list", "data": [
        {"id": model_id, "object": "model", "created": 0, "owned_by": "diffserve", "family": entry.family,
         "description": entry.description, "builtin": bool(entry.builtin), "limits": entry.limits.model_dump(),
         "default": model_id == ds.settings.engine.default_model,
         "schedulers": sorted(SCHEDULERS) if family_controls(entry.family).schedulers else []}
        for model_id, entry in models]}
