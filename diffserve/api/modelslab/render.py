"""ModelsLab response shapes: success, processing, failed, error (one place for all of them)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse

from diffserve.core.errors import DiffserveError, RateLimited
from diffserve.core.job import Job, JobStatus
from diffserve.storage.base import Storage
from diffserve.storage.configured import holding
from diffserve.api.modelslab.paths import V6_FETCH
from diffserve.api.outputs import served_url

INTERNAL_ERROR = "Internal server error. Please try again."


@dataclass
class Links:
    """Absolute URLs as this client reaches the server."""

    base_url: str
    storage: Storage
    fetch_path: str = V6_FETCH

    def outputs(self, job: Job) -> list[str]:
        """Early links (`future_links`) of an unfinished job: its link names, served by this server whatever the
        storage, answering 404 until the job succeeded, then its winning attempt's image (api/outputs.py)."""
        return [served_url(self.base_url, k) for k in job.link_keys()]

    def fetch(self, job: Job) -> str:
        return f"{self.base_url}{self.fetch_path}/{job.id}"


def yn(flag: bool) -> str:
    return "yes" if flag else "no"


def meta(job: Job) -> dict[str, Any]:
    """Every parameter actually used, in the order of the vendor's example."""
    r, p = job.request, job.dialect_params
    out = {
        "prompt": r.prompt,
        "model_id": r.model_id,
        "scheduler": r.scheduler or p.get("default_scheduler"),
        "safety_checker": yn(r.safety_checker),
        "negative_prompt": r.negative_prompt,
        "W": r.width,
        "H": r.height,
        "guidance_scale": r.guidance_scale,
        "init_image": p.get("init_image"),
        "steps": r.steps,
        "n_samples": r.samples,
        "strength": r.strength,
        "multi_lingual": "no",
        "tomesd": yn(r.tomesd),
        "use_karras_sigmas": yn(r.use_karras_sigmas),
        "algorithm_type": r.algorithm_type or "no",
        "safety_checker_type": r.safety_checker_type,
        "instant_response": yn(bool(p.get("instant_response"))),
        "full_url": "no",
        "upscale": "no",
        "vae": r.vae,
        "ip_adapter_id": r.ip_adapter_id,
        "enhance_prompt": yn(r.enhance_prompt),
        "enhance_style": r.enhance_style,
        "ip_adapter_scale": r.ip_adapter_scale if r.ip_adapter_scale is not None else 0.6,
        "ip_adapter_image": r.ip_adapter_image,
        "lora": ",".join(r.lora_models) or None,
        "lora_strength": ",".join(f"{s:g}" for s in r.lora_strengths) or 1,
        "embeddings": r.embeddings_model,
        "seed": r.seed,
        "outdir": "out",
        "file_prefix": job.output_token,
        "clip_skip": r.clip_skip or 1,
        "watermark": "no",
        "temp": yn(r.temp),
        "base64": yn(r.output_base64),
        "track_id": r.track_id,
        "webhook": r.webhook,
    }
    if p.get("model_note"):
        out["model_note"] = p["model_note"]
    run = p.get("run") or {}
    if run:  # how the job ran: the worker's torch device and the model's dtype
        out["device"], out["dtype"] = run.get("device"), run.get("dtype")
        if run.get("batch_size"):  # step-level batching: the most images it shared a denoising step with
            out["batch_size"] = run["batch_size"]
    return out


def render_job(job: Job, links: Links, *, eta: float | None = None) -> dict[str, Any]:
    if job.status is JobStatus.SUCCEEDED:
        return success(job, links)
    if job.status.is_terminal():
        return failed(job)
    return processing(job, links, eta or 0.0)


def success(job: Job, links: Links) -> dict[str, Any]:
    storage = holding(links.storage, job)  # where its outputs were written, whatever is current now
    urls = [storage.url(k, links.base_url) for k in job.outputs]
    if job.request.output_base64:
        output = [base64.b64encode(storage.get(k)).decode("ascii") for k in job.outputs]
    else:
        output = urls
    return {
        "status": "success",
        "generationTime": job.generation_time or 0.0,
        "id": job.id,
        "output": output,
        "proxy_links": urls,
        "nsfw_content_detected": any(job.nsfw),
        "webhook_status": job.webhook_status,
        "meta": meta(job),
        "tip": "",
    }


def processing(job: Job, links: Links, eta: float) -> dict[str, Any]:
    return {
        "status": "processing",
        "tip": "Your image is processing in background, you can get it by calling fetch_result",
        "tip_1": f"POST {links.fetch(job)} with your key",
        "eta": eta,
        "message": "Request processing in background",
        "webhook_status": job.webhook_status,
        "fetch_result": links.fetch(job),
        "id": job.id,
        "output": [],
        "meta": meta(job),
        "future_links": links.outputs(job),
    }


def failed(job: Job) -> dict[str, Any]:
    return {
        "status": "failed",
        "id": job.id,
        "message": job.error or "Image generation failed",
        "output": [],
        "track_id": job.request.track_id,
        "webhook_status": job.webhook_status,
        "meta": meta(job),
    }


def error_response(exc: DiffserveError | None) -> JSONResponse:
    """The vendor's error shape, with the HTTP status that matches it."""
    if exc is None:
        return JSONResponse({"status": "error", "message": INTERNAL_ERROR}, status_code=500)
    body: dict[str, Any] = {"status": "error", "message": exc.message}
    headers = {}
    if isinstance(exc, RateLimited):
        body["retry_after"] = exc.retry_after
        headers["Retry-After"] = str(exc.retry_after)
    return JSONResponse(body, status_code=exc.http_status, headers=headers)
