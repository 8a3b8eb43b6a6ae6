"""What every dialect calls: submit a draft as a job, wait for it, read it back.

Dialects translate at the edge; this is the one path from a validated draft to a queued job.
"""

from __future__ import annotations

import io
import secrets
import statistics
import time
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from PIL import Image

from .config import Settings
from .core.errors import NotFound
from .core.job import Job, input_key
from .core.request import RequestDraft, output_size
from .engine.registry import ModelRegistry
from .media.inputs import load_image
from .queue.base import JobQueue
from .queue.signals import CompletionBroadcaster
from .storage.base import Storage
from .store.jobs import JobStore, new_output_token
from .store.keys import ApiKey

_WAIT_MIN_S = 0.01
_WAIT_MAX_S = 0.25
DEFAULT_ETA_S = 10.0

@dataclass
class GenerationService:
    settings: Settings
    jobs: JobStore
    queue: JobQueue
    storage: Storage
    registry: ModelRegistry
    http: httpx.Client
    completions: CompletionBroadcaster | None = None  # wakes waiters when a local worker finishes a job

    async def submit(self, key: ApiKey, dialect: str, draft: RequestDraft,
                     dialect_params: dict[str, Any] | None = None) -> Job:
        """Validate against the model, fetch and store the init image, create and enqueue the job."""
        limits = self.registry.get(draft.model_id).limits
        draft.check(limits)
        init = await anyio.to_thread.run_sync(self._load_image, draft.init_image, "init_image")
        width, height = output_size(init.width, init.height, draft.width, draft.height, limits)
        token = new_output_token()
        await self._store_image(input_key(token), init, (width, height))
        extra_keys = []
        for i, ref in enumerate(draft.extra_images):
            extra_keys.append(input_key(token, f"ref{i}"))
            await self._store_image(extra_keys[-1], await anyio.to_thread.run_sync(self._load_image, ref, "file_urls"))
        ip_key = None
        if draft.ip_adapter_image:
            ip_key = input_key(token, "ip")
            img = await anyio.to_thread.run_sync(self._load_image, draft.ip_adapter_image, "ip_adapter_image")
            await self._store_image(ip_key, img)
        seed = draft.seed if draft.seed is not None else secrets.randbelow(2**32)
        request = draft.resolve(limits, init_image_key=input_key(token), width=width, height=height, seed=seed,
                                extra_image_keys=extra_keys, ip_adapter_image_key=ip_key)
        job = await anyio.to_thread.run_sync(
            lambda: self.jobs.create(key_id=key.key_id, dialect=dialect, request=request,
                                     output_token=token, dialect_params=dialect_params))
        await anyio.to_thread.run_sync(self.queue.enqueue, job.id)
        return job

    async def wait(self, job_id: int, timeout: float) -> Job:
        """The job once terminal, or as it is when `timeout` runs out."""
        deadline = time.monotonic() + timeout
        delay = _WAIT_MIN_S
        while True:
            job = await anyio.to_thread.run_sync(self.jobs.get, job_id)
            assert job is not None
            remaining = deadline - time.monotonic()
            if job.status.is_terminal() or remaining <= 0:
                return job
            if self.completions is not None:
                await self.completions.wait(min(_WAIT_MAX_S, remaining))
            else:
                await anyio.sleep(min(delay, remaining))
                delay = min(delay * 1.5, _WAIT_MAX_S)

    async def get_for_key(self, job_id: int | None, key: ApiKey) -> Job:
        """A key sees only its own jobs; another key's job is reported as not found."""
        valid = job_id is not None and 0 < job_id < 2**63
        job = await anyio.to_thread.run_sync(self.jobs.get, job_id) if valid else None
        if job is None or job.key_id != key.key_id:
            raise NotFound(f"Request not found: {job_id}")
        return job

    async def eta(self, job: Job) -> float:
        """Seconds until the job should be done: jobs ahead of it times the recent average run time."""
        durations = await anyio.to_thread.run_sync(self.jobs.recent_durations)
        per_job = statistics.median(durations) if durations else DEFAULT_ETA_S
        ahead = await anyio.to_thread.run_sync(self.jobs.position, job.id)
        workers = max(1, self.settings.workers)
        return round(per_job * (1 + ahead / workers), 2)

    async def _store_image(self, key: str, img: Image.Image, size: tuple[int, int] | None = None) -> None:
        png = await anyio.to_thread.run_sync(_fit_png, img, *(size or img.size))
        await anyio.to_thread.run_sync(self.storage.put, key, png)

    def _load_image(self, value: str, field: str) -> Image.Image:
        return load_image(value, field=field, limits=self.settings.images,
                          allow_private=self.settings.allow_private_urls, client=self.http)

def _fit_png(img: Image.Image, width: int, height: int) -> bytes:
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
