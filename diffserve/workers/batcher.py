"""Step-level (continuous) batching in the worker: jobs that may share a denoising tick run together.

The worker hands its claimed, started job here when batching is on and the engine can batch it
(`Engine.open_batch`). The batcher works through the worker's job runner (workers/runner.py): it starts
the jobs that join, reads their images, and ends every job through `JobRunner.end`, the same end the single
path writes. The batcher waits up to `max_wait_ms` for company, then loops: tops the batch up
from the queue between two ticks (`claim_batch`: same key, oldest first, bounded by `max_batch` rows and
`max_pixels`), runs one tick, and finishes every row whose last step is done at once -- decode, safety
checker, storage, job succeeded, ack -- without waiting for the others. A row whose client cancelled
leaves at the tick its progress report sees it; a row that fails (its start, its step, its decode, its
storage) fails alone; a row whose claim was handed on (its progress write says ClaimLost) leaves silently.
Every claimed job ends succeeded, failed or cancelled in the store (or goes back to the queue after a
transient error); a worker killed mid-batch leaves its claims to the supervisor, which releases them by
worker id.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from PIL import Image
from sqlalchemy.exc import SQLAlchemyError

from diffserve.config import BatchingSettings
from diffserve.core.batching import BatchKey, batch_key
from diffserve.core.errors import DiffserveError
from diffserve.core.job import Job
from diffserve.store.ledger import Outcome
from diffserve.workers.orders import WorkerOrders
from diffserve.workers.progress import ProgressReporter
from diffserve.workers.runner import JobRunner

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
    runner: JobRunner  # the worker's job runner: starts, reads inputs, writes outputs, ends every job
    settings: BatchingSettings
    orders: WorkerOrders | None = None  # the API's orders: a batch that sees one takes no new jobs
    stop: threading.Event = field(default_factory=threading.Event)  # the worker's: take no new jobs once set
    _orders_checked: float = field(default=0.0, init=False)
    _orders_seen: bool = field(default=False, init=False)  # an order waits: this batch takes no new jobs

    def run(self, job: Job) -> bool:
        """Run the started `job` in a batch, with whatever joins it; False (nothing done) when it cannot batch."""
        engine = self.runner.engine
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
                        self._end(a, e, active)
                    break
                if self.runner.metrics is not None:
                    self.runner.metrics.batch_rows.labels(job.request.model_id).observe(rows)
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
        return sum(self._join(batch, job, active) for job in self.runner.claim_batch(key, room))

    def _orders_pending(self) -> bool:
        orders, now = self.orders, time.monotonic()
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
        reporter = self.runner.reporter(job)
        a = _Active(job, None, reporter)  # type: ignore[arg-type]
        try:
            if reporter:
                reporter.check_cancelled()
            a.row = batch.join(job.request, self.runner.image(job.request.init_image_key), reporter)
        except Exception as e:  # noqa: BLE001 - this job alone ends (cancelled, failed, lost, given back)
            self._end(a, e, active)
            return 0
        active[job.id] = a
        return 1

    def _leave(self, batch: Batch, row: Row, active: dict[int, _Active]) -> None:
        a = next(a for a in active.values() if a.row is row)
        if row.error is not None:
            self._end(a, row.error, active)
            return
        try:
            images, nsfw = batch.finish(row)
            keys = self.runner.write_outputs(a.job, [_png(image) for image in images])
        except Exception as e:  # noqa: BLE001
            self._end(a, e, active)
            return
        run = {"device": batch.device, "dtype": batch.dtype, "batch_size": row.batch_size,
               "step_cache": row.cache.describe() if row.cache is not None else "off",  # full / cached steps
               **(a.reporter.run_meta() if a.reporter else {})}  # stopped_at_step: a "finish now" ended it
        self._end(a, Outcome.succeeded(keys, nsfw, run), active)

    def _end(self, a: _Active, result: Outcome | BaseException, active: dict[int, _Active]) -> None:
        """The job's end, through the runner (as the single path): the worker row stays busy with the next one."""
        active.pop(a.job.id, None)
        self.runner.end(a.job, result, a.started, a.reporter.steps if a.reporter else 0,
                        rows=0,  # rows per denoising call: observed per tick above
                        still_running=next(iter(active), None))


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
