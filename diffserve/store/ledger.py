"""The job ledger: the one owner of a job's life. Every state change of a job is one method here and one
database transaction over everything that goes with it.

    create (+ enqueue)  the job row and its queue row
    start               queued -> running for the worker holding the claim; the attempt number is counted
    finish              running -> succeeded | failed | cancelled, for one attempt: job row, queue row deleted
                        (the ack), progress preview dropped, the webhook delivery row, PostgreSQL NOTIFY
    cancel              a queued job no worker holds -> cancelled (same companions as finish)
    requeue             a job whose worker is gone (or gave it back) -> queued again, its claim released
                        in the same transaction; or failed once it used its attempts

**Fencing.** `start` increments `jobs.attempts`; that number is the attempt. Every later write by a worker
names it (`finish(job_id, attempt, ...)`, `ProgressStore.report(..., attempt=)`, `holds(job_id, attempt)`)
and changes nothing once the job was handed on (requeued, and maybe started again: a new attempt): a late
finisher's `finish` returns False, its progress write raises `ClaimLost`. The queue ack is part of `finish`,
so a refused finish never deletes the queue row another attempt holds.

**After commit.** What lives outside the database follows a committed change through `QueueEvents` (the
queue backend: a wake-up pipe poke, a Celery message sent or acknowledged); metrics are the caller's.
A crash at any point leaves a job either not finished, or finished with all of the above.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, delete, exists, insert, or_, select, update
from sqlalchemy.orm import Session

from diffserve.core.job import Job, JobStatus
from diffserve.core.request import GenerationRequest
from diffserve.store.db import JobRow, ProgressRow, QueueRow, WebhookDeliveryRow, WorkerRow, autocommit, utcnow
from diffserve.store.notify import notify_done

log = logging.getLogger(__name__)

QUEUED, RUNNING = JobStatus.QUEUED.value, JobStatus.RUNNING.value
UNFINISHED = (QUEUED, RUNNING)
TERMINAL = tuple(s.value for s in JobStatus if s.is_terminal())


class ClaimLost(Exception):
    """This attempt no longer owns the job: it was handed on (requeued, maybe started again elsewhere), or it
    ended meanwhile. The worker drops the job silently: it writes nothing more for it."""

    def __init__(self, job_id: int, attempt: int | None) -> None:
        super().__init__(f"job {job_id}: attempt {attempt} lost its claim")
        self.job_id, self.attempt = job_id, attempt


class QueueEvents(Protocol):
    """What the queue backend does once a ledger change is committed (jobqueue/local.py, celery.py)."""

    def enqueued(self, job_id: int, label: str | None) -> None:
        """A queue row was written or released: wake a worker (local pipe) or send a broker message."""

    def forgotten(self, job_id: int) -> None:
        """This process's hold on the job ended (finished, refused, given back): acknowledge its message."""


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: succeeded (outputs, nsfw flags, `run`: device/dtype for the job's meta,
    `storage_version`: the storage settings the outputs were written under), failed or cancelled (error: the
    reason the client reads)."""

    status: JobStatus
    outputs: tuple[str, ...] = ()
    nsfw: tuple[bool, ...] = ()
    error: str | None = None
    run: dict[str, Any] | None = field(default=None, compare=False)
    storage_version: int | None = None

    @classmethod
    def succeeded(cls, outputs, nsfw, run: dict[str, Any] | None = None,
                  storage_version: int | None = None) -> Outcome:
        return cls(JobStatus.SUCCEEDED, tuple(outputs), tuple(nsfw), None, run, storage_version)

    @classmethod
    def failed(cls, error: str) -> Outcome:
        return cls(JobStatus.FAILED, error=error)

    @classmethod
    def cancelled(cls, reason: str) -> Outcome:
        return cls(JobStatus.CANCELLED, error=reason)


class _Refused(Exception):
    """Inside a transaction: a compare-and-set found the job changed; roll back, change nothing."""


class Ledger:
    def __init__(self, db: Engine, events: QueueEvents | None = None) -> None:
        self._db = db
        self._read = autocommit(db)  # single-statement reads
        self._events = events

    def using(self, events: QueueEvents | None) -> Ledger:
        """The same ledger, telling this queue backend of committed changes."""
        return Ledger(self._db, events)

    # -- the API side -------------------------------------------------------------------------------------
    def create(self, *, key_id: str, dialect: str, request: GenerationRequest, output_token: str,
               dialect_params: dict[str, Any] | None = None, enqueue: bool = True) -> Job:
        """The job row and (enqueue=True) its queue row, in one transaction; then the queue is told."""
        now = utcnow()
        params, hook = dict(dialect_params or {}), "pending" if request.webhook else ""
        with self._db.begin() as c:  # Core statements: the ORM's unit of work costs more than the insert
            job_id = c.execute(insert(JobRow).values(
                key_id=key_id, dialect=dialect, status=QUEUED, request=request.model_dump(mode="json"),
                dialect_params=params, output_token=output_token, outputs=[], nsfw=[], attempts=0,
                webhook_status=hook, created_at=now).returning(JobRow.id)).scalar_one()
            if enqueue:
                c.execute(insert(QueueRow).values(job_id=job_id, model_id=request.model_id,
                                                  label=request.worker_label, enqueued_at=now))
        job = Job(id=job_id, key_id=key_id, dialect=dialect, status=JobStatus.QUEUED, request=request,
                  output_token=output_token, dialect_params=params, webhook_status=hook, created_at=now)
        if enqueue and self._events is not None:
            self._events.enqueued(job.id, request.worker_label)
        return job

    def cancel(self, job_id: int, reason: str) -> bool:
        """A queued job no worker holds -> cancelled, its queue row dropped. False when a worker holds it (ask
        it to stop: ProgressStore.request_cancel) or it already ended."""
        held = exists().where(QueueRow.job_id == job_id, QueueRow.claimed_by.is_not(None))
        with Session(self._db) as s, s.begin():
            return self._end(s, job_id, [JobRow.status == QUEUED, ~held], Outcome.cancelled(reason))

    # -- the worker side ----------------------------------------------------------------------------------
    def start(self, job_id: int, worker_id: str, *, worker_row: dict[str, Any] | None = None) -> Job | None:
        """queued -> running for `worker_id`, which claimed it (or no queue row exists); counts the attempt:
        the returned Job's `attempts` is the number every later write of this run names. None when it is not
        this worker's to start (cancelled or finished meanwhile, requeued to another, already running): then a
        finished job's leftover queue row held by this worker is dropped. worker_row: WorkerRow values written
        in the same transaction when it starts (state, current_job)."""
        now = utcnow()
        someone_else = exists().where(QueueRow.job_id == job_id,
                                      or_(QueueRow.claimed_by.is_(None), QueueRow.claimed_by != worker_id))
        with self._db.begin() as s:
            row = s.execute(
                update(JobRow).where(JobRow.id == job_id, JobRow.status == QUEUED, ~someone_else)
                .values(status=RUNNING, worker_id=worker_id, started_at=now, attempts=JobRow.attempts + 1)
                .returning(*JobRow.__table__.columns)).first()
            if row is None:
                ended = exists().where(JobRow.id == job_id, JobRow.status.in_(TERMINAL))
                s.execute(delete(QueueRow).where(QueueRow.job_id == job_id, QueueRow.claimed_by == worker_id, ended))
                job = None
            else:
                s.execute(update(ProgressRow).where(ProgressRow.job_id == job_id)
                          .values(step=0, total=0, step_s=None, preview=None, updated_at=now))
                job = to_job(row)
                self._worker_row(s, worker_id, worker_row)
        if job is None and self._events is not None:
            self._events.forgotten(job_id)
        return job

    def finish(self, job_id: int, attempt: int | None, outcome: Outcome, *, worker_id: str | None = None,
               worker_row: dict[str, Any] | None = None) -> bool:
        """End the job as `outcome`, if `attempt` still owns it (running, same attempt number; None: any
        unfinished job, for management and tests). One transaction: the job row (outputs point at this
        attempt's files), its queue row deleted (the ack), the progress preview dropped, the webhook delivery
        row when the job has a webhook (the dispatcher sends it), PostgreSQL NOTIFY; plus the worker's row
        (worker_row values) either way. True when this wrote the end; False: refused, nothing of the job
        changed (the claim was lost, or it ended already)."""
        if attempt is None:
            cond = [JobRow.status.in_(UNFINISHED)]
        else:
            cond = [JobRow.status == RUNNING, JobRow.attempts == attempt]
        with self._db.begin() as s:
            done = self._end(s, job_id, cond, outcome)
            if worker_id is not None:
                self._worker_row(s, worker_id, worker_row)
        if self._events is not None:
            self._events.forgotten(job_id)
        return done

    def requeue(self, job_id: int, max_attempts: int | None, reason: str, *, holder: str | None = None,
                attempt: int | None = None) -> bool:
        """Hand the job on: back to the queue (queued, its claim released or its queue row written again), or
        failed with `reason (n attempts)` once it used `max_attempts` (None: never). holder: only if this worker
        still holds its queue claim (recovery of a gone worker; a worker giving a job back); attempt: only if
        that attempt still owns it (a worker releasing after a transient error). True when it is queued again.
        One transaction; after it the queue is told (a message re-sent, workers woken)."""
        try:
            with Session(self._db) as s, s.begin():
                state = s.execute(select(JobRow.status, JobRow.attempts, JobRow.request)
                                  .where(JobRow.id == job_id)).first()
                if state is None or state[0] in TERMINAL:
                    if holder is not None:  # a leftover claim of a finished job
                        s.execute(delete(QueueRow).where(QueueRow.job_id == job_id, QueueRow.claimed_by == holder))
                    return False
                status, attempts, request = state
                if attempt is not None and (status != RUNNING or attempts != attempt):
                    return False
                # the job row first, then the queue row: the order finish locks them in (no deadlock on PostgreSQL)
                same = [JobRow.status == status, JobRow.attempts == attempts]
                if holder is not None:
                    same.append(exists().where(QueueRow.job_id == job_id, QueueRow.claimed_by == holder))
                if max_attempts is not None and attempts >= max_attempts:
                    if not self._end(s, job_id, same, Outcome.failed(f"{reason} ({attempts} attempts)")):
                        raise _Refused  # changed meanwhile, or not (no longer) this holder's claim
                    requeued = False
                else:
                    if s.execute(update(JobRow).where(JobRow.id == job_id, *same)
                                 .values(status=QUEUED, worker_id=None, started_at=None)).rowcount != 1:
                        raise _Refused
                    claimed = [QueueRow.claimed_by == holder] if holder is not None else []
                    released = s.execute(update(QueueRow).where(QueueRow.job_id == job_id, *claimed)
                                         .values(claimed_by=None, claimed_at=None)).rowcount
                    if released != 1 and holder is not None:
                        raise _Refused  # the claim moved between the two statements
                    if released != 1:  # its queue row was lost (a crash before this release): written again
                        s.execute(insert(QueueRow).values(job_id=job_id, model_id=(request or {}).get("model_id"),
                                                          label=(request or {}).get("worker_label"),
                                                          enqueued_at=utcnow()))
                    requeued = True
        except _Refused:
            return False
        if self._events is not None:
            self._events.forgotten(job_id)
            if requeued:
                self._events.enqueued(job_id, (request or {}).get("worker_label"))
        return requeued

    def drop(self, job_id: int, *, worker_id: str | None = None, worker_row: dict[str, Any] | None = None) -> None:
        """A worker leaves a job its attempt lost (ClaimLost): nothing of the job changes; the worker's row is
        written, and the queue forgets the message that brought the job here."""
        if worker_id is not None and worker_row is not None:
            with Session(self._db) as s, s.begin():
                self._worker_row(s, worker_id, worker_row)
        if self._events is not None:
            self._events.forgotten(job_id)

    def job(self, job_id: int) -> Job | None:
        with self._read.connect() as c:
            row = c.execute(select(*JobRow.__table__.columns).where(JobRow.id == job_id)).first()
            return to_job(row) if row else None

    def holds(self, job_id: int, attempt: int) -> bool:
        """Does this attempt still own the job (running, same attempt)? The worker's heartbeat asks."""
        with self._read.connect() as s:
            return s.scalar(select(JobRow.id).where(JobRow.id == job_id, JobRow.status == RUNNING,
                                                    JobRow.attempts == attempt)) is not None

    # -- inside a transaction -----------------------------------------------------------------------------
    def _end(self, s: Session | Connection, job_id: int, cond: list, outcome: Outcome) -> bool:
        now = utcnow()
        row = s.execute(
            update(JobRow).where(JobRow.id == job_id, *cond)
            .values(status=outcome.status.value, outputs=list(outcome.outputs), nsfw=list(outcome.nsfw),
                    storage_version=outcome.storage_version, error=outcome.error, finished_at=now)
            .returning(JobRow.dialect_params, JobRow.request)).first()
        if row is None:
            return False
        params, request = row
        if outcome.run:
            s.execute(update(JobRow).where(JobRow.id == job_id)
                      .values(dialect_params={**(params or {}), "run": outcome.run}))
        s.execute(delete(QueueRow).where(QueueRow.job_id == job_id))
        s.execute(update(ProgressRow).where(ProgressRow.job_id == job_id).values(preview=None))
        webhook = (request or {}).get("webhook")
        if webhook:  # the dispatcher renders it when it first sends it (store/deliveries.py)
            s.execute(insert(WebhookDeliveryRow).values(
                job_id=job_id, delivery_id=f"msg_{uuid.uuid4().hex}", url=webhook, payload=None, state="pending",
                attempts=0, next_attempt_at=now, created_at=now))
        notify_done(s, job_id)  # PostgreSQL: delivered at commit, wakes waiters in every API process
        return True

    @staticmethod
    def _worker_row(s: Session | Connection, worker_id: str, values: dict[str, Any] | None) -> None:
        if values is not None:
            s.execute(update(WorkerRow).where(WorkerRow.worker_id == worker_id)
                      .values(heartbeat_at=utcnow(), **values))


def to_job(row) -> Job:  # noqa: ANN001 - a JobRow, or a result row of the jobs table's columns
    return Job(
        id=row.id,
        key_id=row.key_id,
        dialect=row.dialect,
        status=JobStatus(row.status),
        request=GenerationRequest.model_validate(row.request),
        output_token=row.output_token,
        dialect_params=dict(row.dialect_params or {}),
        outputs=list(row.outputs or []),
        storage_version=row.storage_version,
        nsfw=list(row.nsfw or []),
        error=row.error,
        attempts=row.attempts,
        worker_id=row.worker_id,
        webhook_status=row.webhook_status or "",
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )
