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
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
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
_FINISHING_POLL_S = 0.02  # no row to tick, rows finishing on the side thread: how often to look for new jobs
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
    # every job of the open batch not yet ended (starting on the side thread, in the batch, finishing): the
    # worker row names one of them while any is left. Written by both threads, under _lock.
    _live: dict[int, _Active] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def run(self, job: Job) -> bool:
        """Run the started `job` in a batch, with whatever joins it; False (nothing done) when it cannot batch.

        Two threads: this one runs the denoising ticks; a side thread starts joining rows (prompt and VAE
        encode) and finishes leaving ones (VAE decode, safety checker, PNG, storage, the job's end), one at a
        time in the order given, so that work overlaps the next ticks instead of stalling them. The batch stays
        open while rows finish: jobs arriving meanwhile join it at once."""
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
        self._live = {}
        limit = self._rows_limit(job)
        side_work: list[Future[None]] = []
        with batch, ThreadPoolExecutor(1, thread_name_prefix="batch-side") as side:
            joining: dict[int, tuple[Job, Future[_Active | None]]] = {}  # job id -> rows started on the side

            def join(j: Job) -> None:
                joining[j.id] = j, side.submit(self._start, batch, j)

            def top_up() -> int:
                if self.stop.is_set() or self._orders_pending():
                    return 0
                room = limit - batch.size - sum(j.request.samples for j, _ in joining.values())
                jobs = self.runner.claim_batch(key, room) if room >= 1 else []
                for j in jobs:
                    join(j)
                return len(jobs)

            join(job)
            deadline = time.monotonic() + self.settings.max_wait_ms / 1000
            while len(joining) == 1 and time.monotonic() < deadline and not self.stop.is_set():
                if not top_up():  # a lone job waits a moment for company before its first step
                    time.sleep(_COMPANY_POLL_S)
            while True:
                top_up()
                for job_id, (_, started) in list(joining.items()):  # rows started on the side join between ticks
                    if started.done():
                        del joining[job_id]
                        a = started.result()
                        if a is not None:
                            batch.add(a.row)
                if not batch.rows:
                    with self._lock:
                        live = bool(self._live)
                    if not live and not joining:
                        break
                    if joining:  # rows still starting (or finishing): the next tick waits for one to join
                        wait([f for _, f in joining.values()], timeout=_COMPANY_POLL_S, return_when=FIRST_COMPLETED)
                    else:  # only rows finishing: look for new jobs less often (the side thread needs the GIL)
                        time.sleep(_FINISHING_POLL_S)
                    continue
                rows = batch.size
                try:
                    left = batch.tick()
                except Exception as e:  # the shared forward itself failed: every row of it fails
                    if not isinstance(e, DiffserveError):
                        log.exception("a batch of %d rows failed", len(batch.rows))
                    for row in list(batch.rows):
                        batch.leave(row)
                        self._end(self._of(row), e)
                    for _, started in joining.values():  # rows still starting were to share it: they fail too
                        a = started.result()
                        if a is not None:
                            self._end(a, e)
                    break
                if self.runner.metrics is not None:
                    self.runner.metrics.batch_rows.labels(job.request.model_id).observe(rows)
                for row in left:
                    side_work.append(side.submit(self._leave, batch, row))
        for done in side_work:  # what the side thread could not end (the store away past its outage) stands
            done.result()
        return True

    def _rows_limit(self, job: Job) -> int:
        pixels = job.request.width * job.request.height
        return max(1, min(self.settings.max_batch, self.settings.max_pixels // pixels))

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

    def _of(self, row: Row) -> _Active:
        with self._lock:
            return next(a for a in self._live.values() if a.row is row)

    def _start(self, batch: Batch, job: Job) -> _Active | None:
        """(side thread) The job's row started, not yet in the batch; None when the job ended instead."""
        reporter = self.runner.reporter(job)
        a = _Active(job, None, reporter)  # type: ignore[arg-type]
        with self._lock:
            self._live[job.id] = a
        try:
            if reporter:
                reporter.check_cancelled()
            a.row = batch.start(job.request, self.runner.image(job.request.init_image_key), reporter)
        except Exception as e:  # noqa: BLE001 - this job alone ends (cancelled, failed, lost, given back)
            self._end(a, e)
            return None
        return a

    def _leave(self, batch: Batch, row: Row) -> None:
        """(side thread) A row out of the batch: decoded, stored and ended -- or ended with its own error."""
        a = self._of(row)
        if row.error is not None:
            self._end(a, row.error)
            return
        try:
            images, nsfw = batch.finish(row)
            keys = self.runner.write_outputs(a.job, [_png(image) for image in images])
        except Exception as e:  # noqa: BLE001
            self._end(a, e)
            return
        run = {"device": batch.device, "dtype": batch.dtype, "batch_size": row.batch_size,
               "step_cache": row.cache.describe() if row.cache is not None else "off",  # full / cached steps
               **(a.reporter.run_meta() if a.reporter else {})}  # stopped_at_step: a "finish now" ended it
        self._end(a, Outcome.succeeded(keys, nsfw, run))

    def _end(self, a: _Active, result: Outcome | BaseException) -> None:
        """The job's end, through the runner (as the single path): the worker row stays busy with another job
        of the batch while one is left."""
        with self._lock:
            self._live.pop(a.job.id, None)
            still_running = next(iter(self._live), None)
        self.runner.end(a.job, result, a.started, a.reporter.steps if a.reporter else 0,
                        rows=0,  # rows per denoising call: observed per tick above
                        still_running=still_running)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
