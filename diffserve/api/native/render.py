"""Jobs as the native API shows them, and its error shape: {"error": {"message", "code", "field"?}}."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from diffserve.core.errors import (DiffserveError, Forbidden, InvalidInput, NotFound, RateLimited, Unauthorized,
                                   Unavailable)
from diffserve.core.job import Job
from diffserve.storage.base import Storage
from diffserve.storage.configured import holding
from diffserve.service.submit import LiveState

_CODES = [(Unauthorized, "unauthorized"), (Forbidden, "forbidden"), (NotFound, "not_found"),
          (RateLimited, "rate_limited"), (Unavailable, "unavailable"), (InvalidInput, "invalid_input")]


def error_response(_request: Request, exc: DiffserveError | None) -> JSONResponse:
    if exc is None:
        return JSONResponse({"error": {"message": "Internal server error", "code": "internal_error"}}, 500)
    code = next((c for cls, c in _CODES if isinstance(exc, cls)), "error")
    body: dict[str, Any] = {"message": exc.message, "code": code}
    if isinstance(exc, InvalidInput) and exc.field:
        body["field"] = exc.field
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else {}
    return JSONResponse({"error": body}, status_code=exc.http_status, headers=headers)


def render_job(job: Job, storage: Storage, base_url: str, live: LiveState) -> dict[str, Any]:
    r = job.request
    run = job.dialect_params.get("run") or {}
    return {
        "id": job.id,
        "status": job.status.value,
        "dialect": job.dialect,
        "model_id": r.model_id,
        "worker": job.worker_id,  # the worker that ran (or runs) it
        "progress": {"step": live.step, "total": live.total},
        "eta": live.eta,
        "preview_url": f"{base_url}/v1/jobs/{job.id}/preview" if live.has_preview
        and not job.status.is_terminal() else None,
        "outputs": [holding(storage, job).url(key, base_url) for key in job.outputs],
        "nsfw": job.nsfw,
        "error": job.error,
        "meta": {
            "prompt": r.prompt, "negative_prompt": r.negative_prompt, "width": r.width, "height": r.height,
            "samples": r.samples, "steps": r.steps, "guidance_scale": r.guidance_scale, "strength": r.strength,
            "seed": r.seed, "scheduler": r.scheduler, "lora_models": r.lora_models, "vae": r.vae,
            "enhance_style": r.enhance_style, "device": run.get("device"), "dtype": run.get("dtype"),
            "batch_size": run.get("batch_size"),
            # what ran (full / cached steps) once done; before: the setting resolved at submit
            "step_cache": run.get("step_cache") or (r.step_cache.describe() if r.step_cache else "off"),
        },
        "created_at": _time(job.created_at),
        "started_at": _time(job.started_at),
        "finished_at": _time(job.finished_at),
    }


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event (https://html.spec.whatwg.org/multipage/server-sent-events.html)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _time(value) -> str | None:
    return value.isoformat() + "Z" if value else None
