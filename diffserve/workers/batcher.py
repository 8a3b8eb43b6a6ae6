"""Step-level (continuous) batching in the worker: jobs that may share a denoising tick run together.

The worker hands its claimed, started job here when batching is on and the engine can batch it
(`Engine.open_batch`). The batcher waits up to `max_wait_ms` for company, then loops: tops the batch up
from the queue between two ticks (`claim_batch`: same key, oldest first, bounded by `max_batch` rows and
`max_pixels`), runs one tick, and finishes every row whose last step is done at once -- decode, safety
checker, storage, job succeeded, ack -- without waiting for the others. A row whose client cancelled
leaves at the tick its progress report sees it; a row that fails (its start, its step, its decode, its
storage) fails alone. Store writes go through the worker's `_stored` (retried while the database is
away). Every claimed job ends succeeded, failed or cancelled in the store; a worker killed
mid-batch leaves its claims to the supervisor, which releases them by worker id.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image
from sqlalchemy.exc import SQLAlchemyError

from diffserve.config import BatchingSettings
from diffserve.core.batching import BatchKey, batch_key
from diffserve.core.errors import Cancelled, DiffserveError
from diffserve.core.job import Job, JobStatus
from diffserve.workers.progress import ProgressReporter

if TYPE_CHECKING:
    from diffserve.engine.batching import Batch
    from diffserve.engine.families.batched import Row

log = logging.getLogger(__name__)

_COMPANY_POLL_S = 0.005
ORDERS_CHECK_S = 0.5  # how often a running batch looks for the API's orders


@dataclass
class _Active:
    job: Job
    row: Row
    reporter: ProgressReporter | None
    started: float = field(default_factory=time.monotonic)


@dataclass
class Batcher:
    worker: Any  # the workers/worker.py Worker it runs for: its store, queue, storage, engine, reporters
    settings: BatchingSettings
    stop: threading.Event = field(default_factory=threading.Event)  # the worker's: take no new jobs once set
    _orders_checked: float = field(default=0.0, init=False)
    _orders_seen: bool = field(default=False, init=False)  # an order waits: this batch takes no new jobs

    def run(self, job: Job) -> bool:
        """Run the started `job` in a batch, with whatever joins it; False (nothing done) when it cannot batch."""
        engine = self.worker.engine
        try:
            batch = engine.open_batch(job.request)
        except Exception:  # noqa: BLE001 - e.g. the request's LoRA does not load: today's path reports it
            log.info("job %s cannot open a batch; it runs alone", job.id, exc_info=True)
            return False
        if batch is None:
            return False
        key = batch_key(job.request.model_dump(mode="json"))
        self._orders_seen = False
        with batch:
            active: dict[int, _Active] = {}
            self._join(batch, job, active)
            self._wait_for_company(batch, key, active)
            while active:
                self._top_up(batch, key, active)
                rows = batch.size
                try:
                    left = batch.tick()
                except Exception as e:  # the shared forward itself failed: every row of it fails
                    if not isinstance(e, DiffserveError):
                        log.exception("batch of jobs %s failed", list(active))
                    for a in list(active.values()):
                        self._end(a, JobStatus.FAILED, active, error=self._message(e))
                    break
                if self.worker.metrics is not None:
                    self.worker.metrics.batch_rows.labels(job.request.model_id).observe(rows)
                for row in left:
                    self._leave(batch, row, active)
        return True

    def _rows_limit(self, job: Job) -> int:
        pixels = job.request.width * job.request.height
        return max(1, min(self.settings.max_batch, self.settings.max_pixels // pixels))

    def _wait_for_company(self, batch: Batch, key: BatchKey, active: dict[int, _Active]) -> None:
        deadline = time.monotonic() + self.settings.max_wait_ms / 1000
        while len(active) == 1 and time.monotonic() < deadline and not self.stop.is_set():
            if not self._top_up(batch, key, active):
                time.sleep(_COMPANY_POLL_S)

    def _top_up(self, batch: Batch, key: BatchKey, active: dict[int, _Active]) -> int:
        """Claim and join what fits; how many jobs joined. Nothing once the worker is stopping or the API posted
        an order (clear_cache, restart: applied between jobs), so the batch drains and the worker applies it."""
        if self.stop.is_set() or not active or self._orders_pending():
            return 0
        first = next(iter(active.values())).job
        room = self._rows_limit(first) - batch.size
        if room < 1:
            return 0
        w = self.worker
        joined = 0
        for job_id in w._stored(w.queue.claim_batch, w.worker_id, key, room, labels=w.labels):
            job = w._stored(w.jobs.start, job_id, w.worker_id)
            if job is None:  # cancelled or finished meanwhile
                w._stored(w.queue.ack, job_id)
                continue
            joined += self._join(batch, job, active)
        return joined

    def _orders_pending(self) -> bool:
        orders, now = self.worker.orders, time.monotonic()
        if orders is None or self._orders_seen:
            return self._orders_seen
        if now - self._orders_checked >= ORDERS_CHECK_S:
            self._orders_checked = now
            try:
                self._orders_seen = orders.control.latest_id() > orders.seen
            except SQLAlchemyError:  # the store is away a moment: look again at the next check
                pass
        return self._orders_seen

    def _join(self, batch: Batch, job: Job, active: dict[int, _Active]) -> int:
        w = self.worker
        reporter = w._reporter(job)
        a = _Active(job, None, reporter)  # type: ignore[arg-type]
        try:
            if reporter:
                reporter.check_cancelled()
            a.row = batch.join(job.request, w._image(job.request.init_image_key), reporter)
        except Cancelled as e:
            self._end(a, JobStatus.CANCELLED, active, error=e.message)
            return 0
        except Exception as e:  # noqa: BLE001 - this job fails alone
            if not isinstance(e, DiffserveError):
                log.exception("job %s failed to join its batch", job.id)
            self._end(a, JobStatus.FAILED, active, error=self._message(e))
            return 0
        active[job.id] = a
        w._stored(w.workers.update, w.worker_id, state="busy", current_job=job.id)
        return 1

    def _leave(self, batch: Batch, row: Row, active: dict[int, _Active]) -> None:
        a = next(a for a in active.values() if a.row is row)
        if isinstance(row.error, Cancelled):
            self._end(a, JobStatus.CANCELLED, active, error=row.error.message)
            return
        if row.error is not None:
            log.error("job %s failed in its batch", a.job.id, exc_info=row.error)
            self._end(a, JobStatus.FAILED, active, error=self._message(row.error))
            return
        try:
            images, nsfw = batch.finish(row)
            keys = a.job.output_keys()
            for key, image in zip(keys, images, strict=True):
                self.worker.storage.put(key, _png(image))
        except Exception as e:  # noqa: BLE001
            if not isinstance(e, DiffserveError):
                log.exception("job %s failed", a.job.id)
            self._end(a, JobStatus.FAILED, active, error=self._message(e))
            return
        run = {"device": batch.device, "dtype": batch.dtype, "batch_size": row.batch_size}
        self._end(a, JobStatus.SUCCEEDED, active, outputs=(keys, nsfw, run))

    def _end(self, a: _Active, status: JobStatus, active: dict[int, _Active], *, error: str = "",
             outputs: tuple | None = None) -> None:
        """The job's terminal state in the store, its claim acked, the API told -- as Worker.run_job does."""
        w, job_id = self.worker, a.job.id
        active.pop(job_id, None)
        try:
            if status is JobStatus.SUCCEEDED:
                w._stored(w.jobs.succeed, job_id, *outputs[:2], run=outputs[2])
            elif status is JobStatus.CANCELLED:
                if not w._stored(w.jobs.cancel, job_id, error, running=True):
                    status = JobStatus.FAILED
            else:
                w._stored(w.jobs.fail, job_id, error)
        finally:
            if w.progress is not None:
                w._stored(w.progress.finish, job_id)
            if w.metrics is not None:
                w._count(a.job, status, time.monotonic() - a.started, a.reporter.steps if a.reporter else 0,
                         rows=0)  # rows per denoising call: observed per tick above
            w._stored(w.queue.ack, job_id)
            if w.pipes is not None:
                w.pipes.job_done()
            w._stored(w.workers.update, w.worker_id, state="busy" if active else "idle",
                      current_job=next(iter(active), None), models=w.engine.loaded_models())

    @staticmethod
    def _message(e: BaseException) -> str:
        return e.message if isinstance(e, DiffserveError) else f"Image generation failed: {type(e).__name__}"


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
