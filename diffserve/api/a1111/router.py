"""The AUTOMATIC1111 web UI API (/sdapi/v1), as its clients (webuiapi, scripts, front ends) call it.

Auth: HTTP Basic with the diffserve key as the password (any user name), or `Authorization: Bearer`.
img2img / txt2img answer `{images, parameters, info}`: base64 PNGs (the grid first when several images are
made, as A1111 does; then the init images with `include_init_images`), `info` a JSON string with the
seeds and A1111's infotexts. `batch_size` x `n_iter` images, image i with seed + i. `/progress` and
`/interrupt` act on the caller's own jobs: an interrupted job ends its denoising at the next step and its call
answers 200 with the image so far, as A1111's does. The options, lists and extras: options.py, lists.py, extras.py.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo
from pydantic import BaseModel, ConfigDict, Field

from diffserve.api.disconnect import client_watch
from diffserve.api.a1111.option_effects import acted_on
from diffserve.api.a1111.hires import HiresFields, second_draft, second_pass
from diffserve.api.a1111.hires import infotexts as hires_infotexts
from diffserve.api.a1111.scripts import prepare
from diffserve.api.a1111.samplers import SAMPLERS, SCHEDULE_TYPES, choose
from diffserve.api.auth import authenticate, bearer_token
from diffserve.api.body import json_body_doc, parse_model, read_json_object
from diffserve.api.errors import guarded_route
from diffserve.api.state import AppState, app_state
from diffserve.config import ImageLimits
from diffserve.core.errors import DiffserveError, GenerationFailed, InvalidInput
from diffserve.core.job import Job, JobStatus
from diffserve.core.request import RequestDraft
from diffserve.media.decode import decode_frame, decode_image
from diffserve.media.inputs import decode_base64
from diffserve.storage.configured import holding
from diffserve.store.keys import ApiKey



def error_response(_request: Request, exc: DiffserveError | None) -> JSONResponse:
    """A1111's own error answer: {error, detail, body, errors} with the status."""
    if exc is None:
        return JSONResponse({"error": "RuntimeError", "detail": "Internal server error", "body": "",
                             "errors": "Internal server error"}, status_code=500)
    headers = {"WWW-Authenticate": 'Basic realm="diffserve"'} if exc.http_status == 401 else None
    return JSONResponse({"error": type(exc).__name__, "detail": exc.message, "body": "", "errors": exc.message},
                        status_code=exc.http_status, headers=headers)


A1111Route = guarded_route(error_response, "A1111Route")
router = APIRouter(prefix="/sdapi/v1", route_class=A1111Route, tags=["AUTOMATIC1111"])


class Txt2ImgRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = None  # the older field
    scheduler: str | None = None
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    override_settings: dict[str, Any] = Field(default_factory=dict)
    styles: list[str] = Field(default_factory=list)  # api/a1111/scripts.py applies them
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list, max_length=64)
    send_images: bool = True  # false: `images` is empty, as A1111 answers
    tiling: bool = False  # seamless tiles (engine/controls/tiling.py)


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] = Field(default_factory=list)
    denoising_strength: float = 0.75
    resize_mode: int = 0  # 0 just resize, 1 crop and resize, 2 resize and fill, 3 just resize (latent upscale)
    mask: str | None = None
    inpainting_mask_invert: int = 0
    include_init_images: bool = False


async def _key(request: Request) -> tuple[AppState, ApiKey]:
    """The caller's key (checked once per request: the generating routes check it before reading the body)."""
    ds = app_state(request)
    known = getattr(request.state, "a1111_key", None)
    if known is not None:
        return ds, known
    request.state.a1111_key = key = await authenticate(ds.keys, _secret(request), ds.offload)
    return ds, key


def _secret(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("basic "):
        try:
            secret = base64.b64decode(auth[6:].strip()).decode().split(":", 1)[-1]
        except (binascii.Error, UnicodeDecodeError):
            secret = None
    else:
        secret = bearer_token(request)
    return secret


def _inputs(req: Img2ImgRequest, limits: ImageLimits) -> tuple[Image.Image, dict[str, str]]:
    """The init image resized per `resize_mode`, and the draft's images: it and the mask at the output size (L,
    inverted if asked) as base64 PNGs (the mask turns the request into inpainting).

    Blocking (run it off the event loop), and only after the requested size has been checked: each image goes
    through media/decode.py (format allowlist, header pixel count before any pixel is decoded)."""
    init = decode_image(decode_base64(req.init_images[0], field="init_images", limits=limits),
                        field="init_images", limits=limits)
    init = _resize(init, req.resize_mode, req.width, req.height)
    images = {"init_image": _b64png(init)}
    if req.mask:
        mask = decode_frame(decode_base64(req.mask, field="mask", limits=limits), field="mask", limits=limits)
        mask = mask.convert("L").resize((req.width, req.height))
        if req.inpainting_mask_invert:
            mask = ImageOps.invert(mask)
        images.update(mode="inpaint", mask_image=_b64png(mask))
    return init, images


def _b64png(image: Image.Image, parameters: str | None = None) -> str:
    """A base64 PNG; `parameters` (an infotext) goes in A1111's `parameters` text chunk, where /png-info and
    other tools read it back."""
    buf = io.BytesIO()
    text = None
    if parameters is not None:
        text = PngInfo()
        text.add_text("parameters", parameters)
    image.save(buf, format="PNG", pnginfo=text)
    return base64.b64encode(buf.getvalue()).decode()


def _resize(image: Image.Image, mode: int, width: int, height: int) -> Image.Image:
    """A1111's resize modes (the engine then has an image of exactly width x height)."""
    if mode == 1:  # crop and resize: fill the frame, crop the overflow
        return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
    if mode == 2:  # resize and fill: fit inside, pad with the stretched edges' average
        fitted = ImageOps.contain(image, (width, height), Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", (width, height), tuple(int(c) for c in fitted.resize((1, 1)).getpixel((0, 0))))
        canvas.paste(fitted, ((width - fitted.width) // 2, (height - fitted.height) // 2))
        return canvas
    return image.resize((width, height), Image.Resampling.LANCZOS)


async def _model(ds: AppState, key: ApiKey, req: Txt2ImgRequest) -> tuple[str, dict[str, Any]]:
    """The model id and the draft fields the key's options set (api/a1111/options.py), override_settings first."""
    options = await ds.offload(ds.key_options.get, key.key_id)
    model_id = str(req.override_settings.get("sd_model_checkpoint") or options.get("sd_model_checkpoint")
                   or ds.settings.engine.default_model)
    ds.registry.get(model_id)  # ModelNotFound names it
    return model_id, acted_on(options, req.override_settings)


async def _generate(request: Request, req: Txt2ImgRequest, mode: str,
                    hr: HiresFields | None = None) -> dict[str, Any]:
    ds, key = await _key(request)
    model_id, from_options = await _model(ds, key, req)
    req, prompt, negative = await prepare(req, mode, ds.settings.images, ds.offload)  # styles, script
    choice = choose(req.sampler_name or req.sampler_index, req.scheduler)
    samples = req.batch_size * req.n_iter
    fields: dict[str, Any] = dict(
        model_id=model_id, prompt=prompt, negative_prompt=negative or None, width=req.width,
        height=req.height, samples=samples, steps=req.steps, guidance_scale=req.cfg_scale,
        seed=None if req.seed < 0 else req.seed, scheduler=choice.scheduler, use_karras_sigmas=choice.karras,
        algorithm_type=choice.algorithm_type, mode=mode, mask_field="mask", init_image_field="init_images",
        extra_images_field="init_images", tiling=req.tiling, **from_options)
    init = None
    if isinstance(req, Img2ImgRequest):
        if not req.init_images:
            raise InvalidInput("init_images is required", field="init_images")
        if req.resize_mode not in (0, 1, 2, 3):
            raise InvalidInput("resize_mode must be 0, 1, 2 or 3", field="resize_mode")
        # the other init images are reference images: the service fetches and checks them like any dialect's
        fields.update(strength=req.denoising_strength, extra_images=req.init_images[1:])
    draft = RequestDraft(**fields)
    ds.service.check_draft(draft)  # sizes, counts, lengths, model: before any image is decoded or resized
    hr_draft = second_draft(hr, draft) if hr is not None and hr.enable_hr else None  # api/a1111/hires.py
    if hr_draft is not None:
        ds.service.check_draft(hr_draft)  # the second pass's size fits the model: before the first pass runs
    if isinstance(req, Img2ImgRequest):
        init, images = await ds.offload(_inputs, req, ds.settings.images)
        draft = draft.model_copy(update=images)
    params = {"sampler_name": choice.sampler_name, "schedule": choice.schedule}
    job, outputs = await _run(request, ds, key, draft, params)
    if hr_draft is not None and "stopped_at_step" in (job.dialect_params.get("run") or {}):
        hr_draft = None  # an interrupted first pass skips the second, as A1111's sample_hr_pass does
    if hr_draft is not None:
        outputs = await second_pass(hr, hr_draft, job, outputs,
                                    lambda d: _run(request, ds, key, d, params, outputs_only=True), ds.offload)
    extra = [init] if isinstance(req, Img2ImgRequest) and req.include_init_images and init is not None else []
    info = _info(job, len(outputs) > 1)
    if hr_draft is not None:
        hires_infotexts(hr, hr_draft, info)
    images = await ds.offload(_encoded_outputs, outputs, extra, info["infotexts"]) \
        if req.send_images else []
    return {"images": images, "parameters": req.model_dump(), "info": json.dumps(info)}


async def _run(request: Request, ds: AppState, key: ApiKey, draft: RequestDraft, params: dict[str, Any],
               outputs_only: bool = False) -> Any:
    """Submit a draft, wait while the client is connected, answer the job and its images (or the images)."""
    job = await ds.service.submit(key, "a1111", draft, params, base_url=ds.base_url(request))
    async with client_watch(request) as gone:
        job = await ds.service.wait_for_client(job.id, gone)  # cancelled if the client left
    if job.status is not JobStatus.SUCCEEDED:
        raise GenerationFailed(job.error or f"the job ended {job.status.value}")
    storage = await ds.offload(holding, ds.service.storage, job)  # where its outputs were written
    outputs = [await ds.offload(storage.get, k) for k in job.outputs]
    return outputs if outputs_only else (job, outputs)


def _encoded_outputs(outputs: list[bytes], extra: list[Image.Image], infotexts: list[str]) -> list[str]:
    """A1111's `images`: the grid first when there are several, then each image, then `extra` (the init
    image with include_init_images), as base64 PNGs; each made image (and the grid, with the first's) carries
    its infotext in the `parameters` chunk, as A1111 saves them. Blocking: run off the event loop."""
    images = [Image.open(io.BytesIO(data)) for data in outputs]
    texts = [infotexts[i] if i < len(infotexts) else None for i in range(len(images))]
    made = ([(_grid(images), texts[0])] if len(images) > 1 else []) + list(zip(images, texts))
    return [_b64png(i, t) for i, t in made] + [_b64png(i) for i in extra]


def _grid(images: list[Image.Image]) -> Image.Image:
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, image in enumerate(images):
        grid.paste(image, ((i % cols) * w, (i // cols) * h))
    return grid


def _info(job: Job, grid: bool) -> dict[str, Any]:
    r, p = job.request, job.dialect_params
    seeds = [(r.seed + i) % 2**64 for i in range(r.samples)]

    def infotext(seed: int) -> str:
        parts = [f"Steps: {r.steps}", f"Sampler: {p.get('sampler_name')}",
                 f"Schedule type: {SCHEDULE_TYPES.get(p.get('schedule'), 'Automatic')}", f"CFG scale: {r.guidance_scale:g}",
                 f"Seed: {seed}", f"Size: {r.width}x{r.height}", f"Model: {r.model_id}"]
        if r.mode != "txt2img":
            parts.append(f"Denoising strength: {r.strength:g}")
        if r.clip_skip and r.clip_skip > 1:
            parts.append(f"Clip skip: {r.clip_skip}")
        sampler = SAMPLERS.get(p.get("sampler_name") or "")
        if r.eta_noise_seed_delta and sampler is not None and sampler.uses_ensd:
            parts.append(f"ENSD: {r.eta_noise_seed_delta}")
        if r.tiling:
            parts.append("Tiling: True")
        negative = f"\nNegative prompt: {r.negative_prompt}" if r.negative_prompt else ""
        return f"{r.prompt}{negative}\n{', '.join(parts)}"

    return {"prompt": r.prompt, "all_prompts": [r.prompt] * r.samples, "negative_prompt": r.negative_prompt or "",
            "all_negative_prompts": [r.negative_prompt or ""] * r.samples, "seed": r.seed, "all_seeds": seeds,
            "subseed": -1, "all_subseeds": [-1] * r.samples, "width": r.width, "height": r.height,
            "sampler_name": p.get("sampler_name"), "cfg_scale": r.guidance_scale, "steps": r.steps,
            "batch_size": r.samples, "denoising_strength": r.strength if r.mode != "txt2img" else None,
            "sd_model_name": r.model_id, "index_of_first_image": 1 if grid else 0,
            "infotexts": [infotext(s) for s in seeds], "job_timestamp": f"{job.created_at:%Y%m%d%H%M%S}"}


@router.post("/img2img", openapi_extra=json_body_doc(Img2ImgRequest), summary="Image to image (A1111)")
async def img2img(request: Request) -> dict[str, Any]:
    await _key(request)  # before the body is read
    return await _generate(request, parse_model(Img2ImgRequest, await read_json_object(request)), "img2img")


@router.post("/txt2img", openapi_extra=json_body_doc(Txt2ImgRequest), summary="Text to image (A1111)")
async def txt2img(request: Request) -> dict[str, Any]:
    await _key(request)  # before the body is read
    body = await read_json_object(request)
    return await _generate(request, parse_model(Txt2ImgRequest, body), "txt2img", parse_model(HiresFields, body))


async def _active(ds: AppState, key: ApiKey) -> list[Job]:
    jobs = await ds.offload(lambda: ds.service.jobs.list_for_key(key.key_id, limit=50))
    return [j for j in jobs if not j.status.is_terminal()]


@router.get("/progress", summary="Progress of the caller's running job")
async def progress(request: Request, skip_current_image: bool = False) -> dict[str, Any]:
    ds, key = await _key(request)
    active = await _active(ds, key)
    running = next((j for j in active if j.status is JobStatus.RUNNING), None)
    step, total, eta, image = 0, 0, 0.0, None
    if running is not None:
        live = await ds.service.live_state(running)
        step, total, eta = live.step, live.total, live.eta
        if not skip_current_image and live.has_preview and ds.service.progress is not None:
            data = await ds.offload(ds.service.progress.preview, running.id)
            image = base64.b64encode(data).decode() if data else None
    return {"progress": step / total if total else 0.0, "eta_relative": eta,
            "state": {"skipped": False, "interrupted": False, "stopping_generation": False,
                      "job": f"task({running.id})" if running else "", "job_count": len(active),
                      "job_timestamp": f"{running.created_at:%Y%m%d%H%M%S}" if running else "0", "job_no": 0,
                      "sampling_step": step, "sampling_steps": total},
            "current_image": image, "textinfo": None, "current_task": f"task({running.id})" if running else None}


async def finish_running(request: Request) -> dict[str, Any]:
    """/interrupt and /skip (a batch is one job): the caller's running jobs end their denoising at the next step
    and succeed with the image so far, which their waiting txt2img/img2img call answers (200), as A1111's
    interrupted generation does. Queued jobs are not touched (A1111's interrupt stops the current job only)."""
    ds, key = await _key(request)
    for job in await _active(ds, key):
        if job.status is JobStatus.RUNNING:
            if ds.service.progress is not None:
                await ds.offload(ds.service.progress.request_finish, job.id)
            else:  # no progress kept, so no step-level channel to the worker: the job's cancel is all there is
                await ds.service.cancel(job)
    return {}


@router.post("/interrupt", summary="End the caller's running job at its next step (the image so far is answered)")
async def interrupt(request: Request) -> dict[str, Any]:
    return await finish_running(request)


@router.get("/sd-models", summary="The registry's models")
async def sd_models(request: Request) -> list[dict[str, Any]]:
    ds, _ = await _key(request)
    # `filename` is where A1111 keeps the checkpoint; a server path is nobody's business: the id stands in
    return [{"title": model_id, "model_name": model_id, "hash": None, "sha256": None, "filename": model_id,
             "config": None} for model_id, _ in await ds.offload(ds.registry.items)]


@router.get("/samplers", summary="Samplers with a diffusers equivalent")
async def samplers(request: Request) -> list[dict[str, Any]]:
    await _key(request)
    return [{"name": name, "aliases": list(s.aliases), "options": {"scheduler": s.scheduler}}
            for name, s in SAMPLERS.items()]


@router.get("/schedulers", summary="Schedule types")
async def schedulers(request: Request) -> list[dict[str, Any]]:
    await _key(request)
    return [{"name": name, "label": label, "aliases": None, "default_rho": None, "need_inner_model": False}
            for name, label in SCHEDULE_TYPES.items()]


@router.get("/scripts", summary="Scripts (none)")
async def scripts(request: Request) -> dict[str, list]:
    await _key(request)
    return {"txt2img": [], "img2img": []}

