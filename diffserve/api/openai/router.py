"""OpenAI's images API: `POST /v1/images/edits` (multipart: one or several images, an optional mask) and
`POST /v1/images/generations` (text to image), synchronous or streamed (`stream=true`: server-sent
`image_edit.partial_image` / `image_generation.partial_image` events with step previews, then `.completed`).
`GET /v1/models` is the native API's list, which has OpenAI's shape. Field rules: protocol.py."""

from __future__ import annotations

import base64
import time
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.datastructures import UploadFile

from diffserve.api.auth import authenticate, bearer_token
from diffserve.api.body import read_json_object
from diffserve.api.errors import guarded_route
from diffserve.api.native.render import sse
from diffserve.api.openai.protocol import (check_n, check_output, encode, error_response, mask_from_alpha, size_for,
                                          steps_for)
from diffserve.api.state import AppState, app_state
from diffserve.core.errors import GenerationFailed, InvalidInput
from diffserve.core.job import Job, JobStatus
from diffserve.core.request import RequestDraft

OpenAIRoute = guarded_route(lambda _request, error: error_response(error), "OpenAIRoute")
router = APIRouter(route_class=OpenAIRoute, tags=["OpenAI images"])

WAIT_S = 3600.0  # OpenAI's calls are synchronous: the answer waits for the images
POLL_S = 0.1


async def _key(request: Request):
    ds = app_state(request)
    return ds, await authenticate(ds.keys, bearer_token(request))


def _int(value: Any, field: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{field} must be an integer", field=field) from None


def _flag(value: Any) -> bool:
    return str(value).lower() in ("1", "true", "yes") if value is not None else False


class Options:
    """The fields both endpoints share, checked against the model."""

    def __init__(self, ds: AppState, fields: dict[str, Any], *, edit: bool) -> None:
        prompt = fields.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInput("prompt is required", field="prompt")
        self.prompt = prompt
        self.model_id = (fields.get("model") or "").strip() or ds.settings.default_model
        limits = ds.registry.get(self.model_id).limits  # ModelNotFound: 404 model_not_found
        self.n = check_n(_int(fields.get("n"), "n"), limits, self.model_id)
        self.size = size_for(fields.get("size"), limits)
        self.quality = (fields.get("quality") or "auto").lower()
        self.steps = steps_for(self.quality, limits)
        self.compression = _int(fields.get("output_compression"), "output_compression")
        self.output_format = check_output(fields.get("output_format"), self.compression, fields.get("background"))
        self.response_format = (fields.get("response_format") or ("url" if edit else "b64_json")).lower()
        if self.response_format not in ("url", "b64_json"):
            raise InvalidInput("response_format must be url or b64_json", field="response_format")
        self.stream = _flag(fields.get("stream"))
        self.partial_images = _int(fields.get("partial_images"), "partial_images") or 0
        if not 0 <= self.partial_images <= 3:
            raise InvalidInput("partial_images must be between 0 and 3", field="partial_images")
        self.default_strength = limits.default_strength
        self.kind = "image_edit" if edit else "image_generation"

    def draft(self, **images: Any) -> RequestDraft:
        width, height = self.size or (None, None)
        return RequestDraft(model_id=self.model_id, prompt=self.prompt, width=width, height=height, samples=self.n,
                            steps=self.steps, **images)


@router.post("/v1/images/edits", summary="Edit images (OpenAI): multipart image / image[], optional mask")
async def edits(request: Request) -> Any:
    ds, key = await _key(request)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > ds.settings.limits.max_body_bytes:
        raise InvalidInput(f"Request body is too large (max {ds.settings.limits.max_body_bytes} bytes)")
    try:
        form = await request.form(max_files=17, max_fields=64, max_part_size=ds.settings.images.max_bytes)
    except Exception as exc:  # noqa: BLE001 - malformed multipart: the client's body
        raise InvalidInput(f"the body must be multipart/form-data ({exc})") from None
    fields = {k: v for k, v in form.multi_items() if not isinstance(v, UploadFile)}
    files = [v for k, v in form.multi_items() if k in ("image", "image[]") and isinstance(v, UploadFile)]
    if not files:
        raise InvalidInput("image is required (one file, or several as image[])", field="image")
    if len(files) > 16:
        raise InvalidInput("at most 16 images", field="image")
    options = Options(ds, fields, edit=True)
    images = [base64.b64encode(await f.read()).decode() for f in files]
    mask = form.get("mask")
    extra: dict[str, Any] = {"init_image": images[0], "extra_images": images[1:], "extra_images_field": "image",
                             "strength": options.default_strength}
    if isinstance(mask, UploadFile):
        extra.update(mode="inpaint", mask_image=mask_from_alpha(await mask.read()), mask_field="mask", strength=1.0)
    job = await ds.service.submit(key, "openai", options.draft(**extra), {})
    return await _answer(ds, request, job, options)


@router.post("/v1/images/generations", summary="Text to image (OpenAI)")
async def generations(request: Request) -> Any:
    ds, key = await _key(request)
    options = Options(ds, await read_json_object(request), edit=False)
    job = await ds.service.submit(key, "openai", options.draft(mode="txt2img"), {})
    return await _answer(ds, request, job, options)


async def _answer(ds: AppState, request: Request, job: Job, options: Options) -> Any:
    if options.stream:
        return StreamingResponse(_events(ds, request, job, options), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})
    job = await ds.service.wait(job.id, WAIT_S)
    if job.status is not JobStatus.SUCCEEDED:
        raise GenerationFailed(job.error or f"the job ended {job.status.value}")
    return JSONResponse(await _body(ds, request, job, options))


async def _images(ds: AppState, request: Request, job: Job, options: Options) -> list[dict[str, Any]]:
    storage, base_url = ds.service.storage, ds.base_url(request)
    ext = {"jpeg": "jpg"}.get(options.output_format, options.output_format)
    out = []
    for key in job.outputs:
        data = await anyio.to_thread.run_sync(storage.get, key)
        data = await anyio.to_thread.run_sync(encode, data, options.output_format, options.compression)
        if options.response_format == "b64_json":
            out.append({"b64_json": base64.b64encode(data).decode(), "revised_prompt": job.request.prompt})
            continue
        if options.output_format != "png":  # the stored PNG, converted once, beside it
            key = f"{key.rsplit('.', 1)[0]}.{ext}"
            await anyio.to_thread.run_sync(storage.put, key, data)
        out.append({"url": storage.url(key, base_url), "revised_prompt": job.request.prompt})
    return out


def _common(job: Job, options: Options) -> dict[str, Any]:
    r = job.request
    return {"created": int(time.time()), "size": f"{r.width}x{r.height}", "quality": options.quality,
            "output_format": options.output_format, "background": "opaque"}


async def _body(ds: AppState, request: Request, job: Job, options: Options) -> dict[str, Any]:
    common = _common(job, options)
    return {"created": common.pop("created"), "data": await _images(ds, request, job, options), **common}


async def _events(ds: AppState, request: Request, job: Job, options: Options):
    sent, last = 0, None
    while True:
        job = await anyio.to_thread.run_sync(ds.service.jobs.get, job.id)
        if job.status.is_terminal():
            break
        if sent < options.partial_images and ds.service.progress is not None:
            preview = await anyio.to_thread.run_sync(ds.service.progress.preview, job.id)
            if preview and preview != last:
                last = preview
                data = await anyio.to_thread.run_sync(encode, preview, options.output_format, options.compression)
                yield sse(f"{options.kind}.partial_image", {
                    "type": f"{options.kind}.partial_image", "b64_json": base64.b64encode(data).decode(),
                    "partial_image_index": sent, **_common(job, options), "created_at": int(time.time())})
                sent += 1
        await anyio.sleep(POLL_S)
    if job.status is not JobStatus.SUCCEEDED:
        yield sse("error", {"type": "error", "error": {"message": job.error or f"the job ended {job.status.value}",
                                                       "type": "server_error", "param": None, "code": None}})
        return
    options.response_format = "b64_json"  # streamed images are always inline
    for image in await _images(ds, request, job, options):
        yield sse(f"{options.kind}.completed", {
            "type": f"{options.kind}.completed", "b64_json": image["b64_json"], **_common(job, options),
            "created_at": int(time.time()),
            "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                      "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}}})

