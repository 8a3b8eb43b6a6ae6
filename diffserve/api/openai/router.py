"""OpenAI's images API: `POST /v1/images/edits` (multipart: one or several images, an optional mask; or JSON:
`images[].image_url`, `mask.image_url`, see json_edits.py) and
`POST /v1/images/generations` (text to image), synchronous or streamed (`stream=true`: server-sent
`image_edit.partial_image` / `image_generation.partial_image` events with step previews, then `.completed`).
`GET /v1/models` is the native API's list, which has OpenAI's shape. Field rules: protocol.py."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from diffserve.api.disconnect import client_watch
from diffserve.api.auth import authenticate, bearer_token
from diffserve.api.body import json_body_doc, read_json_object
from diffserve.api.errors import guarded_route
from diffserve.api.native.render import sse
from diffserve.api.openai.json_edits import image_urls, mask_png
from diffserve.api.openai.protocol import (EDITS_BODY_DOC, ImageGenerationBody, Params, check_n, check_output, encode,
                                          error_response, mask_from_alpha, reported_quality, reported_size, size_for,
                                          steps_for)
from diffserve.api.state import AppState, app_state
from diffserve.core.errors import DiffserveError, GenerationFailed, InvalidInput
from diffserve.core.job import Job, JobStatus
from diffserve.core.request import RequestDraft
from diffserve.core.text import check_text
from diffserve.storage.configured import holding
from diffserve.store.keys import ApiKey

OpenAIRoute = guarded_route(lambda _request, error: error_response(error), "OpenAIRoute")
router = APIRouter(route_class=OpenAIRoute, tags=["OpenAI images"])

KEEPALIVE_S = 15.0  # a comment line this often on a stream whose job does not change


async def _key(request: Request):
    ds = app_state(request)
    return ds, await authenticate(ds.keys, bearer_token(request), ds.offload)


B64_PIECE = 3 * 256 * 1024  # a multiple of 3: the pieces' base64 joins into the whole's


def _b64(data: bytes) -> str:
    """An upload as base64 text, for a worker thread: made piece by piece, because b64encode holds the GIL
    (32 MiB in one call froze the event loop ~0.4 s even from a thread; in pieces other threads run between)."""
    return "".join(base64.b64encode(data[i:i + B64_PIECE]).decode() for i in range(0, len(data), B64_PIECE))


class Options:
    """The fields both endpoints share, checked against the model."""

    def __init__(self, ds: AppState, fields: dict[str, Any], *, edit: bool, form: bool) -> None:
        check_text(fields)  # a lone surrogate in a multipart field (a JSON body was checked when read)
        params = Params(fields, form=form)  # a multipart edit: every field arrives as text
        prompt = params.text("prompt")
        if not prompt or not prompt.strip():
            raise InvalidInput("prompt is required", field="prompt")
        self.prompt = prompt
        self.model_id = (params.text("model") or "").strip() or ds.settings.engine.default_model
        limits = ds.registry.get(self.model_id).limits  # ModelNotFound: 404 model_not_found
        self.n = check_n(params.integer("n"), limits, self.model_id)
        self.size = size_for(params.text("size"), limits)
        self.quality = (params.text("quality") or "auto").lower()
        self.steps = steps_for(self.quality, limits)
        self.compression = params.integer("output_compression")
        self.output_format = check_output(params.text("output_format"), self.compression, params.text("background"))
        self.response_format = (params.text("response_format") or ("url" if form else "b64_json")).lower()
        if self.response_format not in ("url", "b64_json"):
            raise InvalidInput("response_format must be url or b64_json", field="response_format")
        self.stream = params.boolean("stream")
        self.partial_images = params.integer("partial_images") or 0
        if not 0 <= self.partial_images <= 3:
            raise InvalidInput("partial_images must be between 0 and 3", field="partial_images")
        self.default_strength = limits.default_strength
        self.kind = "image_edit" if edit else "image_generation"

    def draft(self, **images: Any) -> RequestDraft:
        width, height = self.size or (None, None)
        return RequestDraft(model_id=self.model_id, prompt=self.prompt, width=width, height=height, samples=self.n,
                            steps=self.steps, **images)


@router.post("/v1/images/edits", openapi_extra=EDITS_BODY_DOC,
             summary="Edit images (OpenAI): multipart image / image[], optional mask")
async def edits(request: Request) -> Any:
    ds, key = await _key(request)
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
        return await _json_edits(ds, request, key)
    limits = ds.settings.limits  # the whole body is bounded as it arrives (api/body_limit.py); here its parts
    try:
        form = await request.form(max_files=17, max_fields=limits.max_form_fields,
                                  max_part_size=4 * max(limits.max_prompt_chars, limits.max_text_chars))
    except DiffserveError:
        raise
    except HTTPException as exc:  # Starlette's refusal: too many files or fields, a text field too large
        raise InvalidInput(f"the multipart body was refused: {exc.detail}") from None
    except Exception as exc:  # noqa: BLE001 - malformed multipart: the client's body
        raise InvalidInput(f"the body must be multipart/form-data ({exc})") from None
    fields = {k: v for k, v in form.multi_items() if not isinstance(v, UploadFile)}
    files = [v for k, v in form.multi_items() if k in ("image", "image[]") and isinstance(v, UploadFile)]
    if not files:
        raise InvalidInput("image is required (one file, or several as image[])", field="image")
    if len(files) > 16:
        raise InvalidInput("at most 16 images", field="image")
    options = Options(ds, fields, edit=True, form=True)
    images = [await ds.offload(_b64, await f.read()) for f in files]
    mask = form.get("mask")
    extra: dict[str, Any] = {"init_image": images[0], "init_image_field": "image", "extra_images": images[1:],
                             "extra_images_field": "image",
                             "strength": options.default_strength}
    if isinstance(mask, UploadFile):
        mask_image = await ds.offload(mask_from_alpha, await mask.read(), ds.settings.images)
        extra.update(mode="inpaint", mask_image=mask_image, mask_field="mask", strength=1.0)
    return await _answer(ds, request, key, options, options.draft(**extra))


@router.post("/v1/images/generations", openapi_extra=json_body_doc(ImageGenerationBody),
             summary="Text to image (OpenAI)")
async def generations(request: Request) -> Any:
    ds, key = await _key(request)
    options = Options(ds, await read_json_object(request), edit=False, form=False)
    return await _answer(ds, request, key, options, options.draft(mode="txt2img"))


async def _json_edits(ds: AppState, request: Request, key: ApiKey) -> Any:
    """The JSON edits body (EditImageBodyJsonParam): image URLs, fetched and decoded by the service at submit."""
    fields = await read_json_object(request)
    urls = image_urls(fields)
    options = Options(ds, fields, edit=True, form=False)
    extra: dict[str, Any] = {"init_image": urls[0], "init_image_field": "images[0].image_url",
                             "extra_images": urls[1:], "extra_images_field": "images",
                             "strength": options.default_strength}
    if fields.get("mask") is not None:
        extra.update(mode="inpaint", mask_image=await mask_png(ds, key, fields["mask"]), mask_field="mask",
                     strength=1.0)
    return await _answer(ds, request, key, options, options.draft(**extra))


async def _answer(ds: AppState, request: Request, key: ApiKey, options: Options, draft: RequestDraft) -> Any:
    """Submit, then stream the job's events or wait for it (synchronous: see GenerationService.wait_for_client)."""
    if options.stream:  # the stream's slot first: a key at its cap of open streams gets 429 before any job
        slot = ds.service.watch.open_stream(key.key_id, ds.settings.limits.max_streams_per_key)
        try:
            job = await ds.service.submit(key, "openai", draft, {}, base_url=ds.base_url(request))
        except BaseException:
            slot.release()
            raise
        return StreamingResponse(slot.bind(_events(ds, request, job, options, slot.release)),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", **_size_header(job)})
    job = await ds.service.submit(key, "openai", draft, {}, base_url=ds.base_url(request))
    async with client_watch(request) as gone:
        job = await ds.service.wait_for_client(job.id, gone)  # cancelled if the client left
    if job.status is not JobStatus.SUCCEEDED:
        raise GenerationFailed(job.error or f"the job ended {job.status.value}")
    return JSONResponse(await _body(ds, request, job, options), headers=_size_header(job))


async def _images(ds: AppState, request: Request, job: Job, options: Options) -> list[dict[str, Any]]:
    storage, base_url = await ds.offload(holding, ds.service.storage, job), ds.base_url(request)
    ext = {"jpeg": "jpg"}.get(options.output_format, options.output_format)
    out = []
    for key in job.outputs:
        data = await ds.offload(storage.get, key)
        data = await ds.offload(encode, data, options.output_format, options.compression)
        if options.response_format == "b64_json":
            out.append({"b64_json": base64.b64encode(data).decode(), "revised_prompt": job.request.prompt})
            continue
        if options.output_format != "png":  # the stored PNG, converted once, beside it
            key = f"{key.rsplit('.', 1)[0]}.{ext}"
            await ds.offload(storage.put, key, data)
        out.append({"url": storage.url(key, base_url), "revised_prompt": job.request.prompt})
    return out


def _size_header(job: Job) -> dict[str, str]:
    """The real size, whatever the spec's enum lets the body say (protocol.py's docstring)."""
    return {"x-diffserve-size": f"{job.request.width}x{job.request.height}"}


def _common(job: Job, options: Options) -> dict[str, Any]:
    """The fields an answer and a stream event share, within the spec's enums; an event's required size is
    `auto` where the real size is not one of the spec's."""
    size = reported_size(job.request.width, job.request.height)
    return {"created": int(time.time()), "size": size or "auto", "quality": reported_quality(options.quality),
            "output_format": options.output_format, "background": "opaque"}


async def _body(ds: AppState, request: Request, job: Job, options: Options) -> dict[str, Any]:
    common = _common(job, options)
    if common["size"] == "auto":  # ImagesResponse.size has no auto: an optional field, left out
        del common["size"]
    return {"created": common.pop("created"), "data": await _images(ds, request, job, options), **common}


async def _events(ds: AppState, request: Request, job: Job, options: Options, release: Callable[[], None]):
    try:
        async for event in _stream(ds, request, job, options):
            yield event
    finally:
        release()


async def _stream(ds: AppState, request: Request, job: Job, options: Options):
    """Woken by the shared watch when the job changes (service/watch.py): no polling per stream."""
    sent, last = 0, None
    with ds.service.watch.follow(job.id) as follower:
        while True:
            job = await ds.offload(ds.service.jobs.get, job.id)
            if job.status.is_terminal():
                break
            if sent < options.partial_images and ds.service.progress is not None:
                preview = await ds.offload(ds.service.progress.preview, job.id)
                if preview and preview != last:
                    last = preview
                    data = await ds.offload(encode, preview, options.output_format, options.compression)
                    yield sse(f"{options.kind}.partial_image", {
                        "type": f"{options.kind}.partial_image", "b64_json": base64.b64encode(data).decode(),
                        "partial_image_index": sent, **_common(job, options), "created_at": int(time.time())})
                    sent += 1
            while not await follower.changed(KEEPALIVE_S):
                yield b": keep-alive\n\n"  # a comment line (clients ignore it): a client that left is noticed
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

