"""Qolaba routes: thin. Bearer key, app_id -> model, draft to the service, the envelope back.

`celery: true` answers PENDING at once with the task_id (the job id, as a string); `POST /getImage`
reports the task. `celery: false` waits for the result (up to DIFFSERVE_SYNC_WAIT_S, then PENDING).
`inference_type` routes the job to workers labelled with that GPU class when this server has any
(DIFFSERVE_WORKER_LABELS); otherwise any worker runs it, and the job records which one did.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from diffserve.core.errors import InvalidInput, ModelNotFound, NotFound
from diffserve.core.job import Job, JobStatus
from diffserve.workers.placement import configured_labels
from diffserve.api.disconnect import client_watch
from diffserve.api.auth import authenticate, bearer_token
from diffserve.api.body import json_body_doc, parse_model, read_json_object
from diffserve.api.errors import guarded_route
from diffserve.api.state import AppState, app_state
from diffserve.api.qolaba.apps import ServiceNotFound, resolve_app
from diffserve.api.qolaba.protocol import GetImageRequest, QolabaImg2ImgRequest
from diffserve.api.qolaba.render import error_response, render_job

# Every answer leaves in the envelope; what was parsed so far (app_id, input) is echoed in errors.
QolabaRoute = guarded_route(lambda request, error: error_response(error, **_echo(request)), "QolabaRoute")


router = APIRouter(route_class=QolabaRoute, tags=["Qolaba"])


@router.post("/getImagetoImage", openapi_extra=json_body_doc(QolabaImg2ImgRequest), summary="Image to image (Qolaba)")
async def get_image_to_image(request: Request) -> JSONResponse:
    ds = app_state(request)
    key = await authenticate(ds.keys, bearer_token(request), ds.offload)
    req = parse_model(QolabaImg2ImgRequest, await read_json_object(request))
    request.state.qolaba = {"app_id": req.app_id or "", "input": req.echo()}
    app = resolve_app(req.required_app_id(), ds.settings.dialects.qolaba_apps)
    try:
        limits = ds.registry.get(app.model_id).limits
    except ModelNotFound:
        raise ServiceNotFound(f"{app.name} (app_id {app.app_id}) maps to model {app.model_id!r}, "
                              "which this server does not have") from None
    requested = (req.inference_type or "").strip().lower() or None
    label = requested if requested and requested in await _labels(ds) else None
    draft = req.to_draft(app, limits.size_multiple, label)
    params = {"app_id": app.app_id, "input": req.echo(), "inference_type": requested,
              "routed_to": label or "any worker"}
    job = await ds.service.submit(key, "qolaba", draft, params, base_url=ds.base_url(request))
    if not req.celery:
        # a client that leaves stops the wait (the job goes on: it can be fetched by id)
        async with client_watch(request) as gone:
            job = await ds.service.wait(job.id, ds.settings.dialects.sync_wait_s, gone)
    return await _answer(ds, request, job)


router.add_api_route("/getImageToImage", get_image_to_image, methods=["POST"],
                     openapi_extra=json_body_doc(QolabaImg2ImgRequest),
                     summary="Image to image (Qolaba, other spelling)")


@router.post("/getImage", openapi_extra=json_body_doc(GetImageRequest), summary="Task status (Qolaba)")
async def get_image(request: Request) -> JSONResponse:
    ds = app_state(request)
    key = await authenticate(ds.keys, bearer_token(request), ds.offload)
    req = parse_model(GetImageRequest, await read_json_object(request))
    if not req.id or not req.id.strip():
        raise InvalidInput("id is required", field="id")
    task_id = req.id.strip()
    if not task_id.isdigit():
        raise NotFound(f"Task not found: {task_id}")
    try:
        job = await ds.service.get_for_key(int(task_id), key)
    except NotFound:
        raise NotFound(f"Task not found: {task_id}") from None
    return await _answer(ds, request, job, status_for_failure=200)


async def _answer(ds: AppState, request: Request, job: Job, status_for_failure: int = 500) -> JSONResponse:
    body = await ds.offload(render_job, job, ds.service.storage, ds.base_url(request))
    if not job.status.is_terminal():  # PENDING: how far it is (diffserve's own fields beside the envelope's)
        live = await ds.service.live_state(job)
        body["progress"], body["eta"] = {"step": live.step, "total": live.total}, live.eta
    failed = job.status.is_terminal() and job.status is not JobStatus.SUCCEEDED
    return JSONResponse(body, status_code=status_for_failure if failed else 200)


async def _labels(ds: AppState) -> set[str]:
    """GPU classes this server has: its configured local workers' and any live worker's."""
    live = await ds.offload(ds.workers.live)
    return configured_labels(ds.settings) | {label for w in live for label in w.labels}


def _echo(request: Request) -> dict[str, Any]:
    return dict(getattr(request.state, "qolaba", {}))
