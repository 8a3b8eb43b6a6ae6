"""What every dialect calls: submit a draft as a job, wait for it, read it back.

Dialects translate at the edge; this is the one path from a validated draft to a queued job.
"""

from __future__ import annotations

import io
import logging
import statistics
import time
import weakref
from dataclasses import dataclass, field
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
from PIL import Image

from diffserve.service.admission import QueueCaps
from diffserve.service.validation import (BlockingInputs, InputImage, Inputs, check_draft, inline_images, validate,
                                          validate_blocking)
from diffserve.service.watch import JobWatch
from diffserve.config import Settings
from diffserve.core.errors import CANCELLED_BY_CLIENT, NotFound, Unavailable
from diffserve.core.job import Job, JobStatus
from diffserve.core.offload import Offload
from diffserve.core.request import GenerationRequest, ModelLimits, RequestDraft
from diffserve.engine.identity.faces import SubmitFaceCheck
from diffserve.engine.models.registry import ModelRegistry
from diffserve.media.inputs import is_base64_image, load_image_source
from diffserve.media.slots import FetchSlots
from diffserve.jobqueue.base import JobQueue
from diffserve.jobqueue.signals import CompletionBroadcaster
from diffserve.storage.base import Storage
from diffserve.store.jobs import JobStore, new_output_token
from diffserve.store.ledger import Ledger
from diffserve.store.keys import ApiKey
from diffserve.store.progress import Progress, ProgressStore
from diffserve.store.workers import WorkerStore

_GONE_CHECK_S = 0.5  # how often a synchronous wait asks whether its client is still there
CLIENT_LEFT = "The client disconnected before the job finished"
DEFAULT_ETA_S = 10.0
LIVE_COUNT_S = 1.0  # the live worker count an ETA divides by is read at most this often
_FRESH_ETAS = 1024  # ETAs computed with a creation and not asked for yet, at most (oldest dropped)
BASE_URL_PARAM = "base_url"  # in a job's dialect_params: the base of the links its submission's answer held


def job_base_url(job: Job, default: str) -> str:
    """The one base-URL rule for what is sent without a request to answer (webhooks): the base the job's own
    answers used (recorded at submission: `submit(base_url=...)`, from AppState.base_url), else `default`
    (the configured base URL, for jobs submitted without one)."""
    recorded = job.dialect_params.get(BASE_URL_PARAM)
    return recorded if isinstance(recorded, str) and recorded else default

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
    _live_count: tuple[float, int] | None = field(default=None, init=False, repr=False)  # (read at, workers)
    # job id -> (the Job `submit` returned, its ETA read in the same thread hop as its creation): the submission's
    # answer asks for that ETA next, with that very object (a job read again later gets a fresh estimate)
    _fresh_etas: dict[int, tuple[Job, float]] = field(default_factory=dict, init=False, repr=False)
    _ledger: Ledger = field(init=False, repr=False)  # the job store's ledger, telling `queue` (built once)

    def __post_init__(self) -> None:
        self.fetches = FetchSlots(self.settings.images)
        self._ledger = self.jobs.ledger.using(self.queue)
        self.watch = JobWatch(self.jobs.marks, self.settings.limits.watch_interval_s, self.completions,
                              self.offload)

    async def submit(self, key: ApiKey, dialect: str, draft: RequestDraft,
                     dialect_params: dict[str, Any] | None = None, *, base_url: str | None = None) -> Job:
        """Validate (service/validation.py, in its stated order), store the input images, create and enqueue
        the job. The checks without I/O run before the key's queue cap (a 400 before a 429). `base_url`: the
        base of the links this request's answer holds, recorded so the job's webhook carries the same links
        (job_base_url)."""
        checked = self.check_draft(draft)
        if base_url:
            dialect_params = {**(dialect_params or {}), BASE_URL_PARAM: base_url}
        if self.caps is None:
            return await self._submit(key, dialect, draft, dialect_params, checked)
        async with self.caps.admit(key):  # RateLimited past the cap
            return await self._submit(key, dialect, draft, dialect_params, checked)

    def check_draft(self, draft: RequestDraft) -> ModelLimits:
        """Validation's steps without I/O (text lengths, reference count, model, ranges, assets): cheap, for a
        dialect that works on its images before `submit` (A1111 resizes its init image). The limits applied."""
        return check_draft(draft, self.registry, self.settings)

    async def _submit(self, key: ApiKey, dialect: str, draft: RequestDraft,
                      dialect_params: dict[str, Any] | None, checked: ModelLimits) -> Job:
        token = new_output_token()
        stored: list[str] = []  # input files written so far: removed again if the request fails after them
        sent = Sent()  # the client's own PNG bytes of the image decoded last (kept as sent)

        def create(request: GenerationRequest) -> tuple[Job, float | None]:
            job = self._ledger.create(  # the job and its queue row, one transaction
                key_id=key.key_id, dialect=dialect, request=request, output_token=token,
                dialect_params=dialect_params)  # (store/ledger.py)
            return job, self._created_eta(job)

        try:
            if inline_images(draft, is_base64_image):  # nothing to fetch: validated, stored, created in one hop
                entry = self.registry.get(draft.model_id)
                inputs = BlockingInputs(lambda value, field: self._load_image(value, field, sent=sent),
                                        lambda image: self._keep(image, stored, sent), self.faces, token)
                job, eta = await self.offload(
                    lambda: create(validate_blocking(draft, entry, checked, self.settings, inputs)))
            else:
                async def keep(image: InputImage) -> None:
                    await self.offload(self._keep, image, stored, sent)  # encoded and written in one hop

                async_inputs = Inputs(lambda value, field: self._image(key, value, field, sent=sent), keep,
                                      self.offload, self.faces, token,
                                      load_checked=lambda value, field, check: self._image(key, value, field, check,
                                                                                           sent=sent))
                request = await validate(draft, self.registry, self.settings, async_inputs, checked=checked)
                job, eta = await self.offload(create, request)
        except BaseException:  # a later image refused, the store down, the client gone: no orphan files
            with anyio.CancelScope(shield=True):
                await self.offload(self._delete_inputs, stored)
            raise
        if eta is not None:
            self._keep_fresh_eta(job, eta)
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
        return self._owned(job, job_id, key)

    def job_for_key(self, job_id: int | None, key: ApiKey) -> Job:
        """get_for_key, blocking (for a handler's one offloaded call that reads the key, the job and more)."""
        valid = job_id is not None and 0 < job_id < 2**63
        return self._owned(self.jobs.get(job_id) if valid else None, job_id, key)

    @staticmethod
    def _owned(job: Job | None, job_id: int | None, key: ApiKey) -> Job:
        if job is None or job.key_id != key.key_id:
            raise NotFound(f"Request not found: {job_id}")
        return job

    async def eta(self, job: Job) -> float:
        """Seconds until the job should be done (see live_state)."""
        fresh = self._fresh_eta(job)
        return fresh if fresh is not None else await self.offload(self.eta_now, job)

    def _created_eta(self, job: Job) -> float | None:
        """In the creation's thread hop: the new job's ETA, which its submission's answer asks for next (no hop
        of its own then). A read that fails leaves it to be read when asked (the job is created either way)."""
        try:
            return self._eta_of(job, None)
        except Exception:  # noqa: BLE001 - the answer's own read reports the store's error, as before
            return None

    def _keep_fresh_eta(self, job: Job, eta: float) -> None:
        """On the event loop (the only thread that touches `_fresh_etas`)."""
        fresh = self._fresh_etas
        fresh[job.id] = (job, eta)
        while len(fresh) > _FRESH_ETAS:  # answers that never asked (a synchronous dialect waited instead)
            fresh.pop(next(iter(fresh)), None)

    def _fresh_eta(self, job: Job) -> float | None:
        """The ETA read with the job's creation, once, and only for the Job object `submit` returned."""
        kept = self._fresh_etas.pop(job.id, None)
        return kept[1] if kept is not None and kept[0] is job else None

    def eta_now(self, job: Job) -> float:
        """eta, blocking: every store read it needs in one call (one thread hop for the API); the progress row
        only for a running job, the only one whose ETA uses it (a queued job's fetch: one query fewer)."""
        running = job.status is JobStatus.RUNNING and self.progress is not None
        return self._eta_of(job, self.progress.get(job.id) if running else None)

    async def _eta(self, job: Job, progress: Progress | None) -> float:
        if job.status is JobStatus.RUNNING and progress and progress.step_s and progress.total:
            return self._eta_of(job, progress)  # from its own progress: no store read
        fresh = self._fresh_eta(job) if progress is None else None
        if fresh is not None:
            return fresh
        return await self.offload(self._eta_of, job, progress)

    def _eta_of(self, job: Job, progress: Progress | None) -> float:
        """Running with progress: its remaining steps times its own measured time per step. Otherwise: jobs
        ahead of it times the recent median run time."""
        if job.status is JobStatus.RUNNING and progress and progress.step_s and progress.total:
            return round(max(0, progress.total - progress.step) * progress.step_s, 2)
        durations = self.jobs.recent_durations()
        per_job = statistics.median(durations) if durations else DEFAULT_ETA_S
        ahead = self.jobs.position(job.id)
        return round(per_job * (1 + ahead / self._live_workers()), 2)

    def _live_workers(self) -> int:
        """Live workers for ETAs (at least 1): counted at most once per LIVE_COUNT_S, as every answer with an
        ETA asks (a read of every worker row per submission before; an estimate needs it no fresher)."""
        if self.workers is None:
            return max(1, self.settings.worker.count)
        now = time.monotonic()
        if self._live_count is None or now - self._live_count[0] >= LIVE_COUNT_S:
            self._live_count = (now, max(1, len(self.workers.live())))
        return self._live_count[1]

    async def progress_of(self, job: Job) -> Progress | None:
        if self.progress is None:
            return None
        return await self.offload(self.progress.get, job.id)

    async def live_state(self, job: Job, *, created: bool = False) -> LiveState:
        """How far the job is, read once: steps done of the steps the call runs (num_inference_steps x
        strength until the worker reports the real count), eta (None once it ended), whether a preview exists.
        created: `job` is what `submit` just returned (queued, no progress written yet: nothing to read)."""
        progress = None if created else await self.progress_of(job)
        total = progress.total if progress and progress.total else int(job.request.steps * job.request.strength)
        step = total if job.status is JobStatus.SUCCEEDED else (progress.step if progress else 0)
        eta = None if job.status.is_terminal() else await self._eta(job, progress)
        return LiveState(step, total, eta, bool(progress and progress.has_preview))

    async def cancel(self, job: Job, reason: str = CANCELLED_BY_CLIENT) -> Job:
        """A queued job is dropped at once; a running one is asked to stop (its worker sees it between two
        steps and ends it `cancelled`). The job as it is now."""
        if not job.status.is_terminal():
            # cancelled with its queue row dropped, in one transaction -- only if no worker took it
            if not await self.offload(self.jobs.ledger.cancel, job.id, reason):
                if self.progress is not None:
                    await self.offload(self.progress.request_cancel, job.id)
        return await self.offload(self.jobs.get, job.id)

    def _keep(self, image: InputImage, stored: list[str], sent: Sent) -> None:
        """Store an input image that passed (fitted to its size: as the client sent it when that is a PNG of
        this very image at this size, else encoded) and note its key for clean-up; blocking."""
        size = image.size or image.image.size
        self.storage.put(image.key, sent.png_of(image.image, size) or _fit_png(image.image, *size))
        stored.append(image.key)

    def _delete_inputs(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self.storage.delete(key)
            except Exception:  # noqa: BLE001 - best effort: the request's own error is the one to report
                log.warning("could not delete input %s of a refused request", key, exc_info=True)

    async def _image(self, key: ApiKey, value: str, field: str,
                     check: Callable[[Image.Image], None] | None = None, *, sent: Sent) -> Image.Image:
        """One input image, decoded (and `check`ed, in the same call off the loop). A URL is fetched (and
        decoded) on a fetch slot of `fetches`: a slow image host costs a slot of its own bounded pool (per key
        and in total, RateLimited past them), never a thread of anyio's default pool that every other request
        uses (media/slots.py)."""
        if is_base64_image(value):
            return await self.offload(self._load_image, value, field, check, sent=sent)
        return await self.fetches.run(key.key_id, lambda: self._load_image(value, field, check, sent=sent))

    def _load_image(self, value: str, field: str, check: Callable[[Image.Image], None] | None = None, *,
                    sent: Sent) -> Image.Image:
        image, png = load_image_source(value, field=field, limits=self.settings.images,
                                       allow_private=self.settings.allow_private_urls, client=self.http)
        if check is not None:
            check(image)
        if png is not None:
            sent.add(image, png)
        return image


class Sent:
    """The client's bytes of the image this request decoded last, when they are a PNG of exactly that image
    (decode_image_source), so storing it as decoded needs no encoding. Validation keeps each image right after
    loading it (service/validation.py), so one slot is enough; the image is matched by identity (an image changed
    on the way is a new object: converted, resized -- encoded as before) and held weakly (validation's bound of
    one decoded image at a time stands)."""

    def __init__(self) -> None:
        self._last: tuple[weakref.ref[Image.Image], bytes] | None = None

    def add(self, image: Image.Image, png: bytes) -> None:
        self._last = (weakref.ref(image), png)

    def png_of(self, image: Image.Image, size: tuple[int, int]) -> bytes | None:
        last = self._last
        return last[1] if last is not None and last[0]() is image and image.size == size else None


def _fit_png(img: Image.Image, width: int, height: int) -> bytes:
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
