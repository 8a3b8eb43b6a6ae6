"""The Qolaba envelope: every answer, success, pending or failure, has the same keys.

    {"time_required": {"startup_time": s, "runtime": s}, "error": "", "error_data": "",
     "input": {...}, "output": {"result": [...], "Has_NSFW_Content": [...], "low_res_urls": [...]},
     "app_id": "...", "task_id": "...", "status": "SUCCESS" | "FAILED" | "PENDING"}

`output` and `time_required` are always objects (empty lists / zeros until the task succeeded), so a
client can index them whatever the status. Failures carry a category in `error` and the message in
`error_data`; the mapping from diffserve's error tree is `error_response` below.
"""

from __future__ import annotations

import io
from typing import Any

from fastapi.responses import JSONResponse
from PIL import Image

from diffserve.core.errors import DiffserveError, ImageInputError, InvalidInput, NotFound, RateLimited, Unauthorized
from diffserve.core.job import Job, JobStatus
from diffserve.storage.base import Storage
from diffserve.storage.configured import holding
from diffserve.api.qolaba.apps import ServiceNotFound

INPUT_ERROR = "Input Validation Error"
GENERATION_ERROR = "Image Generation Error"
SERVICE_NOT_FOUND = "Service Not Found"
INTERNAL_ERROR = "Internal Error"
BAD_IMAGE_TYPE = "Given image type is not supported. Please try with JPG or PNG."
BAD_TOKEN = "Invalid API Key"
LOW_RES_MAX_SIDE = 512


def envelope(*, status: str, app_id: str = "", task_id: str = "", input: dict[str, Any] | None = None,
             output: dict[str, Any] | None = None, error: str = "", error_data: str = "",
             time_required: dict[str, float] | None = None) -> dict[str, Any]:
    return {
        "time_required": time_required or {"startup_time": 0.0, "runtime": 0.0},
        "error": error,
        "error_data": error_data,
        "input": input or {},
        "output": output or {"result": [], "Has_NSFW_Content": [], "low_res_urls": []},
        "app_id": app_id,
        "task_id": task_id,
        "status": status,
    }


def render_job(job: Job, storage: Storage, base_url: str) -> dict[str, Any]:
    """The envelope for a job in any state (low-resolution copies are made on first success render)."""
    p = job.dialect_params
    common = {"app_id": p.get("app_id", ""), "task_id": str(job.id), "input": p.get("input", {}),
              "time_required": _times(job)}
    if job.status is JobStatus.SUCCEEDED:
        storage = holding(storage, job)  # where its outputs were written (the low-res copies go beside them)
        output = {
            "result": [storage.url(k, base_url) for k in job.outputs],
            "Has_NSFW_Content": list(job.nsfw),
            "low_res_urls": [storage.url(_low_res(storage, k), base_url) for k in job.outputs],
        }
        return envelope(status="SUCCESS", output=output, **common)
    if job.status.is_terminal():
        return envelope(status="FAILED", error=GENERATION_ERROR, error_data=job.error or "Image generation failed",
                        **common)
    return envelope(status="PENDING", **common)


def error_response(exc: BaseException | None, *, app_id: str = "", input: dict[str, Any] | None = None,
                   task_id: str = "") -> JSONResponse:
    """diffserve's error tree -> (category, message, HTTP status), in the envelope."""
    category, message, status, headers = INTERNAL_ERROR, "Internal server error. Please try again.", 500, {}
    if isinstance(exc, ServiceNotFound):
        category, message, status = SERVICE_NOT_FOUND, exc.message, 404
    elif isinstance(exc, Unauthorized):
        category, message, status = INPUT_ERROR, BAD_TOKEN, 401
    elif isinstance(exc, ImageInputError) and "is not a valid image" in exc.message:
        category, message, status = INPUT_ERROR, BAD_IMAGE_TYPE, 400
    elif isinstance(exc, (InvalidInput, NotFound)):
        category, message, status = INPUT_ERROR, exc.message, exc.http_status
    elif isinstance(exc, RateLimited):
        message, status, headers = exc.message, 429, {"Retry-After": str(exc.retry_after)}
    elif isinstance(exc, DiffserveError):
        message, status = exc.message, exc.http_status
    body = envelope(status="FAILED", app_id=app_id, task_id=task_id, input=input, error=category, error_data=message)
    return JSONResponse(body, status_code=status, headers=headers)


def _times(job: Job) -> dict[str, float]:
    startup = (job.started_at - job.created_at).total_seconds() if job.started_at and job.created_at else 0.0
    return {"startup_time": round(max(0.0, startup), 3), "runtime": job.generation_time or 0.0}


def _low_res(storage: Storage, key: str) -> str:
    """`generations/x-0.png` -> `generations/x-0-low.jpg`: half size (at most 512 px), made once."""
    low_key = key.rsplit(".", 1)[0] + "-low.jpg"
    try:
        storage.get(low_key)
        return low_key
    except NotFound:
        pass
    img = Image.open(io.BytesIO(storage.get(key))).convert("RGB")
    scale = min(0.5, LOW_RES_MAX_SIDE / max(img.size))
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    storage.put(low_key, buf.getvalue(), content_type="image/jpeg")
    return low_key
