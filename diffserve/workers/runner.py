"""The job runner: how a worker starts a claimed job, runs it alone, and writes its end -- one code path for
the single path (workers/worker.py) and the step-level batcher (workers/batcher.py) alike.

Every state change goes through the ledger (store/ledger.py) and names this run's attempt:

- `start`: queued -> running for this worker (the worker row says busy in the same transaction); the attempt
  number is the started Job's `attempts`, kept in `held`. The same answer (Ledger.begin) says whether a
  client asked to cancel it meanwhile (the reporter's first cancel check reads no store), the control
  log's latest order id (`orders_head`: the worker applies newer orders before the job runs) and, on PostgreSQL,
  the saved storage settings' version (the storage's poll of it waits while jobs come: storage/configured.py).
- `end(job, result)`: the one end of a job. `result` is an Outcome (succeeded with this attempt's output keys,
  failed, cancelled) or the exception that stopped it, classified here:
    * ClaimLost (a progress write or the heartbeat found the job handed on): leave silently, write nothing
      of the job;
    * a transient store / broker / network error (`is_transient`): the job goes back to the queue
      (`Ledger.requeue`, fenced by this attempt), never failed for it;
    * Cancelled: cancelled; a DiffserveError: failed with its message; anything else: failed, logged.
  A finish the ledger refuses (the job was handed on meanwhile) leaves the job as the other attempt ends it;
  this attempt's own files are deleted (the job never points at them). Metrics and the wake-up pipe follow
  the commit.
- `stored(write, ...)`: a store write that must happen, retried while the database is away.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Sequence

from PIL import Image
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from diffserve.core.batching import BatchKey
from diffserve.core.errors import Cancelled, DiffserveError
from diffserve.core.job import Job, JobStatus
from diffserve.jobqueue.signals import WorkerPipes
from diffserve.storage.base import Storage
from diffserve.storage.configured import noted, pinned, stored_at
from diffserve.store.ledger import ClaimLost, Ledger, Outcome, Started
from diffserve.store.progress import ProgressStore
from diffserve.store.workers import WorkerStore
from diffserve.workers.progress import ProgressReporter

if TYPE_CHECKING:  # the model stack is imported by the worker process only
    from diffserve.engine.generate import Engine
    from diffserve.jobqueue.base import JobQueue
    from diffserve.metrics import Metrics

log = logging.getLogger(__name__)

STORE_RETRY_S = 1.0  # while the job store is unreachable, try again this often
STORE_OUTAGE_S = 300.0  # a job's end is retried this long before the process gives up
RELEASE_REASON = "Worker lost its connection to the store, broker or storage"
GIVEN_BACK = "Worker gave the job back"
# connection trouble from botocore (S3) and httpx, told by class name so neither has to be imported here
_TRANSIENT_NAMES = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                    "HTTPClientError", "TransportError", "NetworkError", "TimeoutException"}


def is_transient(e: BaseException) -> bool:
    """An error of the road, not of the job: the store, the broker or the storage was out of reach. The job is
    given back to the queue rather than failed."""
    if isinstance(e, (OperationalError, InterfaceError, DisconnectionError, PoolTimeout, ConnectionError,
                      TimeoutError)):
        return True
    return any(cls.__name__ in _TRANSIENT_NAMES for cls in type(e).__mro__)


def failure_message(e: BaseException) -> str:
    return e.message if isinstance(e, DiffserveError) else f"Image generation failed: {type(e).__name__}"


@dataclass
class JobRunner:
    worker_id: str
    ledger: Ledger  # told of the queue backend (Ledger.using(queue)): messages acked, workers woken
    queue: JobQueue
    storage: Storage
    engine: Engine
    workers: WorkerStore
    labels: tuple[str, ...] = ()
    progress: ProgressStore | None = None
    metrics: Metrics | None = None
    pipes: WorkerPipes | None = None
    max_attempts: int = 3
    held: dict[int, int] = field(default_factory=dict)  # job id -> attempt, for every job running here now
    lost: set[int] = field(default_factory=set)  # held jobs the heartbeat found handed on (check_claims)
    cancel_known: dict[int, bool] = field(default_factory=dict)  # job id -> cancel asked, as its start answered
    orders_head: int = 0  # the control log's latest order id, as the last start answered
    written_under: dict[int, int | None] = field(default_factory=dict)  # job id -> storage version of its images

    # -- starting ------------------------------------------------------------------------------------------
    def start(self, job_id: int) -> Job | None:
        """Start a job this worker claimed (unless its claim started it: queue.started); None when it is not this
        worker's to run any more."""
        started: Started | None = self.queue.started(job_id)
        if started is None:
            started = self.stored(self.ledger.begin, job_id, self.worker_id,
                                  worker_row={"state": "busy", "current_job": job_id})
        if started is None:
            return None
        job = started.job
        self.held[job.id] = job.attempts
        self.cancel_known[job.id] = started.cancel_requested
        self.orders_head = max(self.orders_head, started.orders_head)
        noted(self.storage, started.storage_version)  # the settings' version, read with the start: no poll of its own
        return job

    def claim_batch(self, key: BatchKey, rows: int) -> list[Job]:
        """Claim and start waiting jobs that may join a batch of `key` (jobqueue claim_batch's rules)."""
        ids = self.stored(self.queue.claim_batch, self.worker_id, key, rows, labels=self.labels)
        return [job for job in map(self.start, ids) if job is not None]

    def give_back(self, job_id: int) -> None:
        """A claimed (maybe started) job this worker will not run (a restart order came): back to the queue for
        another, only while this worker still holds its claim."""
        self.held.pop(job_id, None)
        self.cancel_known.pop(job_id, None)
        self.stored(self.ledger.requeue, job_id, None, GIVEN_BACK, holder=self.worker_id)

    # -- running -------------------------------------------------------------------------------------------
    def run(self, job: Job) -> None:
        """Run a started job alone, through the engine, and end it."""
        started = time.monotonic()
        reporter = self.reporter(job)
        try:
            if reporter:
                reporter.check_cancelled()
            req = job.request  # its inputs first (a storage out of reach gives the job back before any step)
            init = self.image(req.init_image_key) if req.init_image_key else None
            extras = [self.image(k) for k in req.extra_image_keys]
            ip_image = self.image(req.ip_adapter_image_key) if req.ip_adapter_image_key else None
            mask = self.image(req.mask_image_key).convert("L") if req.mask_image_key else None
            result = self.engine.generate(req, init, extras, ip_image, progress=reporter, mask_image=mask)
            keys = self.write_outputs(job, result.png_bytes())
            run = {"device": result.device, "dtype": result.dtype, "step_cache": result.step_cache,  # what ran
                   **(reporter.run_meta() if reporter else {})}
            outcome: Outcome | BaseException = Outcome.succeeded(keys, result.nsfw, run)
        except Exception as e:  # noqa: BLE001 - classified by `end`
            outcome = e
        self.end(job, outcome, started, reporter.steps if reporter else 0)

    def reporter(self, job: Job) -> ProgressReporter | None:
        """The job's progress reporter for this attempt (steps, previews in its model's colours, cancel, the
        fence), if progress is kept."""
        if self.progress is None:
            return None
        return ProgressReporter(job.id, self.progress, latent_rgb=self.engine.preview_rgb(job.request.model_id),
                                attempt=self.held.get(job.id, job.attempts), lost=self.lost,
                                cancel_known=self.cancel_known.pop(job.id, None))

    def image(self, key: str) -> Image.Image:
        img = Image.open(io.BytesIO(self.storage.get(key)))
        img.load()
        return img.convert("RGB")

    def write_outputs(self, job: Job, pngs: Sequence[bytes]) -> list[str]:
        """This attempt's images under this attempt's keys (Job.attempt_keys), all to one backend, whose storage
        settings version `end` records with them (storage/configured.py: a switch may be in flight); the keys."""
        keys = job.attempt_keys(self.held.get(job.id, job.attempts))
        version, backend = pinned(self.storage)
        for key, png in zip(keys, pngs, strict=True):
            backend.put(key, png)
        self.written_under[job.id] = version
        return keys

    def check_claims(self) -> None:
        """The heartbeat, and its look at the held jobs in the same statement (WorkerStore.beat): those handed on
        meanwhile go to `lost` (their reporter raises ClaimLost at the next step); the control log's latest
        order id to `orders_head` (an idle worker applies new orders within a beat)."""
        held = dict(self.held)
        beat = self.workers.beat(self.worker_id, held)
        self.orders_head = max(self.orders_head, beat.orders_head)
        for job_id, attempt in held.items():
            if job_id not in beat.owned and self.held.get(job_id) == attempt:  # (not ended meanwhile)
                self.lost.add(job_id)

    # -- the end -------------------------------------------------------------------------------------------
    def end(self, job: Job, result: Outcome | BaseException, started: float, steps: int = 0, *,
            rows: int | None = None, still_running: int | None = None) -> JobStatus | None:
        """Write the job's end once (see the module doc). still_running: another job this worker runs on (a
        batch): the worker row stays busy with it. rows: image rows per denoising call for the metrics (0: the
        batcher observes them per tick). The status written, or None when none was (lost, given back)."""
        attempt = self.held.pop(job.id, job.attempts)
        self.lost.discard(job.id)
        self.cancel_known.pop(job.id, None)
        version = self.written_under.pop(job.id, None)
        if isinstance(result, Outcome) and result.outputs and result.storage_version is None:
            result = replace(result, storage_version=version)
        worker_row: dict[str, Any] = {"state": "busy" if still_running is not None else "idle",
                                      "current_job": still_running, "models": self.engine.loaded_models()}
        outcome = self._outcome(job, result)
        status = None
        if isinstance(result, ClaimLost):
            log.warning("job %s: attempt %s lost its claim (handed on); leaving it", job.id, attempt)
            self.stored(self.ledger.drop, job.id, worker_id=self.worker_id, worker_row=worker_row)
        elif outcome is None:
            log.warning("job %s: %s (%s); giving it back to the queue", job.id, RELEASE_REASON,
                        type(result).__name__)
            self.stored(self.ledger.requeue, job.id, self.max_attempts, RELEASE_REASON, holder=self.worker_id,
                        attempt=attempt)
            self.stored(self.workers.update, self.worker_id, **worker_row)
        elif self.stored(self.ledger.finish, job.id, attempt, outcome, worker_id=self.worker_id,
                         worker_row=worker_row) or self._landed(job.id, attempt):
            status = outcome.status
        else:
            log.warning("job %s: attempt %s was handed on; its end (%s) is not written", job.id, attempt,
                        outcome.status.value)
            self._delete(outcome.outputs, version)
        if status is not None and self.metrics is not None:
            self._count(job, status, time.monotonic() - started, steps, rows)
        if self.pipes is not None:
            self.pipes.job_done()
        return status

    def _outcome(self, job: Job, result: Outcome | BaseException) -> Outcome | None:
        """The outcome to write; None: give the job back (a transient error)."""
        if isinstance(result, Outcome):
            return result
        if isinstance(result, Cancelled):  # a client's cancel, seen between two steps (or before the first)
            return Outcome.cancelled(result.message)
        if isinstance(result, ClaimLost) or is_transient(result):
            return None
        if not isinstance(result, DiffserveError):  # the client gets a reason, the log gets the traceback
            log.error("job %s failed", job.id, exc_info=result)
        return Outcome.failed(failure_message(result))

    def _landed(self, job_id: int, attempt: int) -> bool:
        """After a refused finish: did this attempt's own end land (a commit whose answer the network lost, then
        retried)? Then the job is terminal under this attempt and this worker."""
        job = self.stored(self.ledger.job, job_id)
        return (job is not None and job.status.is_terminal() and job.attempts == attempt
                and job.worker_id == self.worker_id)

    def _delete(self, keys: Sequence[str], version: int | None) -> None:
        backend = stored_at(self.storage, version)
        for key in keys:
            try:
                backend.delete(key)
            except Exception:  # noqa: BLE001 - best effort: the job never points at them
                log.warning("could not delete %s of a lost attempt", key, exc_info=True)

    def _count(self, job: Job, status: JobStatus, run_s: float, steps: int, rows: int | None) -> None:
        model = job.request.model_id
        self.metrics.jobs.labels(job.dialect, model, status.value).inc()
        self.metrics.run_time.labels(model).observe(run_s)
        if job.started_at and job.created_at:
            self.metrics.queue_wait.labels(model).observe((job.started_at - job.created_at).total_seconds())
        if rows != 0:
            self.metrics.batch_rows.labels(model).observe(rows or job.request.samples)
        if steps:
            self.metrics.steps.labels(model).inc(steps)

    # -- store writes that must happen ---------------------------------------------------------------------
    @staticmethod
    def stored(write, *args, **kwargs):
        """A store write that must happen (a job's start, its end): retried while the database is away, up to
        STORE_OUTAGE_S; past that the error stands and the process exits (its jobs then run elsewhere)."""
        deadline = time.monotonic() + STORE_OUTAGE_S
        while True:
            try:
                return write(*args, **kwargs)
            except SQLAlchemyError as e:
                if time.monotonic() > deadline:
                    raise
                log.warning("job store unreachable (%s); retrying %s", type(e).__name__,
                            getattr(write, "__name__", write))
                time.sleep(STORE_RETRY_S)
