"""What every dialect calls: submit a draft as a job, wait for it, read it back.

Dialects translate at the edge; this is the one path from a validated draft to a queued job.
"""

from __future__ import annotations

import io
import logging
import secrets
import statistics
import time
from dataclasses import dataclass, field
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
from PIL import Image

from diffserve.service.admission import QueueCaps
from diffserve.service.watch import JobWatch
from diffserve.config import Settings
from diffserve.core.errors import CANCELLED_BY_CLIENT, NotFound, Unavailable
from diffserve.core.job import Job, JobStatus, input_key
from diffserve.core.offload import Offload
from diffserve.core.request import (ModelLimits, RequestDraft, check_batch_pixels, check_reference_count,
                                    output_size)
from diffserve.engine.identity.faces import SubmitFaceCheck
from diffserve.engine.models.registry import ModelRegistry
from diffserve.engine.request_rules import check_init_image, resolve_controls
from diffserve.media.fetch import UrlPolicy
from diffserve.media.inputs import is_base64_image, load_image
from diffserve.media.slots import FetchSlots
from diffserve.jobqueue.base import JobQueue
from diffserve.jobqueue.signals import CompletionBroadcaster
from diffserve.storage.base import Storage
from diffserve.store.jobs import JobStore, new_output_token
from diffserve.store.keys import ApiKey
from diffserve.store.progress import Progress, ProgressStore
from diffserve.store.workers import WorkerStore
from diffserve.webhooks.dispatcher import check_webhook_url

_GONE_CHECK_S = 0.5  # how often a synchronous wait asks whether its client is still there
CLIENT_LEFT = "The client disconnected before the job finished"
DEFAULT_ETA_S = 10.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveState:
    step: int
    total: int
    eta: float | None
    has_preview: bool


@dataclass
class GenerationService:
    settings: Settings
    jobs: JobStore
    queue: JobQueue
    storage: Storage
    registry: ModelRegistry
    http: httpx.Client
    completions: CompletionBroadcaster | None = None  # wakes waiters when a local worker finishes a job
    caps: QueueCaps | None = None  # per-key cap on queued+running jobs (None: no cap)
    faces: SubmitFaceCheck = field(default_factory=SubmitFaceCheck)  # PuLID's face check at submit
    progress: ProgressStore | None = None  # running jobs' steps, client cancels (store/progress.py)
    workers: WorkerStore | None = None  # live workers anywhere (ETA: the jobs ahead are shared among them)
    offload: Offload = field(default_factory=Offload)  # the API process's blocking calls (core/offload.py)
    fetches: FetchSlots = field(init=False)  # image URL fetches in flight, per key and in total
    watch: JobWatch = field(init=False)  # one reader of the jobs that streams and waits follow

    def __post_init__(self) -> None:
        self.fetches = FetchSlots(self.settings.images)
        self.watch = JobWatch(self.jobs.marks, self.settings.limits.watch_interval_s, self.completions,
                              self.offload)

    async def submit(self, key: ApiKey, dialect: str, draft: RequestDraft,
                     dialect_params: dict[str, Any] | None = None) -> Job:
        """Check the server's limits and the key's queue cap, then validate and enqueue (see _submit)."""
        limits = self.check_draft(draft)
        if self.caps is None:
            return await self._submit(key, dialect, draft, limits, dialect_params)
        async with self.caps.admit(key):  # RateLimited past the cap
            return await self._submit(key, dialect, draft, limits, dialect_params)

    def check_draft(self, draft: RequestDraft) -> ModelLimits:
        """The checks that need no image and no I/O, in order: text lengths, the reference-image count, the
        model (ModelNotFound), then every range against its limits (sizes included). Cheap: a dialect that does
        work of its own before `submit` (A1111 resizes its init image) calls it first. The limits applied."""
        draft.check_lengths(self.settings.limits.max_prompt_chars, self.settings.limits.max_text_chars)
        check_reference_count(draft, self.settings.limits.max_reference_images)
        limits = self.registry.get(draft.model_id).limits
        if draft.max_side and draft.max_side < limits.max_size:  # the dialect's cap (realtime: 1024...)
            limits = limits.model_copy(update={"max_size": draft.max_side})
        draft.check(limits)
        return limits

    async def _submit(self, key: ApiKey, dialect: str, draft: RequestDraft, limits: ModelLimits,
                      dialect_params: dict[str, Any] | None) -> Job:
        """Validate against the model (`limits`: check_draft's), fetch and store the images, create and enqueue
        the job."""
        entry = self.registry.get(draft.model_id)
        self.registry.check_request(draft)  # LoRA / embedding / VAE / IP-Adapter ids, families, ip image
        # the model's family decides which controls apply; prompts enhanced here so meta shows them
        draft = await self.offload(resolve_controls, draft, entry)
        if draft.webhook:  # the same network rules as image URLs, refused before anything is fetched
            policy = UrlPolicy(allow_private=self.settings.allow_private_urls)
            await self.offload(check_webhook_url, draft.webhook, policy)
        token = new_output_token()
        if draft.mode == "txt2img":  # no init image: the size asked for, else the model's default
            default_width, default_height = limits.default_size()
            width, height = draft.width or default_width, draft.height or default_height
            init_key = ""
        else:
            init = await self._image(key, draft.init_image, draft.init_image_field)
            await self.offload(check_init_image, entry, init, self.faces)  # e.g. PuLID needs a face
            width, height = output_size(init.width, init.height, draft.width, draft.height, limits)
            init_key = input_key(token, temp=draft.temp)
        check_batch_pixels(draft.samples or 1, width, height, self.settings.limits.max_batch_pixels)
        stored: list[str] = []  # input files written so far: removed again if the request fails after them
        try:
            if init_key:
                await self._store_image(init_key, init, (width, height), stored)
            mask_key = None
            if draft.mode == "inpaint" and draft.mask_image:
                mask_key = input_key(token, "mask", temp=draft.temp)
                mask = await self._image(key, draft.mask_image, draft.mask_field)
                await self._store_image(mask_key, mask.convert("L"), (width, height), stored)
            extra_keys = []
            for i, ref in enumerate(draft.extra_images):
                extra_keys.append(input_key(token, f"ref{i}", temp=draft.temp))
                ref_image = await self._image(key, ref, draft.extra_images_field)
                await self._store_image(extra_keys[-1], ref_image, None, stored)
            ip_key = None
            if draft.ip_adapter_image:
                ip_key = input_key(token, "ip", temp=draft.temp)
                img = await self._image(key, draft.ip_adapter_image, "ip_adapter_image")
                await self._store_image(ip_key, img, None, stored)
            seed = draft.seed if draft.seed is not None else secrets.randbelow(2**32)
            request = draft.resolve(limits, init_image_key=init_key, width=width, height=height, seed=seed,
                                    extra_image_keys=extra_keys, ip_adapter_image_key=ip_key, mask_image_key=mask_key)
            job = await anyio.to_thread.run_sync(
                lambda: self.jobs.create(key_id=key.key_id, dialect=dialect, request=request,
                                         output_token=token, dialect_params=dialect_params))
        except BaseException:  # a later image refused, the store down, the client gone: no orphan files
            with anyio.CancelScope(shield=True):
                await self.offload(self._delete_inputs, stored)
            raise
        await anyio.to_thread.run_sync(self.queue.enqueue, job.id)
        return job

    async def wait(self, job_id: int, timeout: float, gone: Callable[[], Awaitable[bool]] | None = None) -> Job:
        """The job once terminal, or as it is when `timeout` runs out or `gone()` says the client left (asked
        every `_GONE_CHECK_S`). The job is read again only when the watch saw it change."""
        deadline = time.monotonic() + timeout
        with self.watch.follow(job_id) as follower:
            while True:
                job = await self.offload(self.jobs.get, job_id)
                assert job is not None
                while True:
                    remaining = deadline - time.monotonic()
                    if job.status.is_terminal() or remaining <= 0 or (gone is not None and await gone()):
                        return job
                    if await follower.changed(min(_GONE_CHECK_S, remaining)):
                        break

    async def wait_for_client(self, job_id: int, gone: Callable[[], Awaitable[bool]]) -> Job:
        """A synchronous answer's wait (A1111, OpenAI: the answer is the images; the client gets no id to fetch
        them later): at most `limits.max_sync_wait_s`, and only while the client is connected. A job left
        unfinished is cancelled -- nobody could ask for its images through that dialect -- which frees its worker
        and the key's queue slot (A1111 itself keeps generating for a client that left; we do not). Unavailable
        (503) when the wait ran out; the terminal job otherwise."""
        limit = self.settings.limits.max_sync_wait_s
        job = await self.wait(job_id, limit, gone)
        if job.status.is_terminal():
            return job
        left = await gone()
        reason = CLIENT_LEFT if left else f"Not finished within {limit:g} s (limits.max_sync_wait_s)"
        log.info("job %s cancelled: %s", job_id, reason)
        job = await self.cancel(job, reason)
        if job.status is JobStatus.SUCCEEDED:
            return job  # it finished meanwhile
        raise Unavailable(f"{reason}; the job was cancelled")

    async def get_for_key(self, job_id: int | None, key: ApiKey) -> Job:
        """A key sees only its own jobs; another key's job is reported as not found."""
        valid = job_id is not None and 0 < job_id < 2**63
        job = await self.offload(self.jobs.get, job_id) if valid else None
        if job is None or job.key_id != key.key_id:
            raise NotFound(f"Request not found: {job_id}")
        return job

    async def eta(self, job: Job) -> float:
        """Seconds until the job should be done (see live_state)."""
        return await self._eta(job, await self.progress_of(job))

    async def _eta(self, job: Job, progress: Progress | None) -> float:
        """Running with progress: its remaining steps times its own measured time per step. Otherwise: jobs
        ahead of it times the recent median run time."""
        if job.status is JobStatus.RUNNING and progress and progress.step_s and progress.total:
            return round(max(0, progress.total - progress.step) * progress.step_s, 2)
        durations = await self.offload(self.jobs.recent_durations)
        per_job = statistics.median(durations) if durations else DEFAULT_ETA_S
        ahead = await self.offload(self.jobs.position, job.id)
        live = len(await self.offload(self.workers.live)) if self.workers else self.settings.worker.count
        workers = max(1, live)
        return round(per_job * (1 + ahead / workers), 2)

    async def progress_of(self, job: Job) -> Progress | None:
        if self.progress is None:
            return None
        return await self.offload(self.progress.get, job.id)

    async def live_state(self, job: Job) -> LiveState:
        """How far the job is, read once: steps done of the steps the call runs (num_inference_steps x
        strength until the worker reports the real count), eta (None once it ended), whether a preview exists."""
        progress = await self.progress_of(job)
        total = progress.total if progress and progress.total else int(job.request.steps * job.request.strength)
        step = total if job.status is JobStatus.SUCCEEDED else (progress.step if progress else 0)
        eta = None if job.status.is_terminal() else await self._eta(job, progress)
        return LiveState(step, total, eta, bool(progress and progress.has_preview))

    async def cancel(self, job: Job, reason: str = CANCELLED_BY_CLIENT) -> Job:
        """A queued job is dropped at once; a running one is asked to stop (its worker sees it between two
        steps and ends it `cancelled`). The job as it is now."""
        if not job.status.is_terminal():
            dropped = await anyio.to_thread.run_sync(self.queue.cancel, job.id)  # only if no worker took it
            if not (dropped and await anyio.to_thread.run_sync(self.jobs.cancel, job.id, reason)):
                if self.progress is not None:
                    await self.offload(self.progress.request_cancel, job.id)
        return await self.offload(self.jobs.get, job.id)

    async def _store_image(self, key: str, img: Image.Image, size: tuple[int, int] | None,
                           stored: list[str]) -> None:
        png = await self.offload(_fit_png, img, *(size or img.size))
        await self.offload(self.storage.put, key, png)
        stored.append(key)

    def _delete_inputs(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self.storage.delete(key)
            except Exception:  # noqa: BLE001 - best effort: the request's own error is the one to report
                log.warning("could not delete input %s of a refused request", key, exc_info=True)

    async def _image(self, key: ApiKey, value: str, field: str) -> Image.Image:
        """One input image, decoded. A URL is fetched (and decoded) on a fetch slot of `fetches`: a slow image
        host costs a slot of its own bounded pool (per key and in total, RateLimited past them), never a thread
        of anyio's default pool that every other request uses (media/slots.py)."""
        if is_base64_image(value):
            return await self.offload(self._load_image, value, field)
        return await self.fetches.run(key.key_id, lambda: self._load_image(value, field))

    def _load_image(self, value: str, field: str) -> Image.Image:
        return load_image(value, field=field, limits=self.settings.images,
                          allow_private=self.settings.allow_private_urls, client=self.http)


def _fit_png(img: Image.Image, width: int, height: int) -> bytes:
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
