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

import functools
import logging
import uuid
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import (
    CTE,
    JSON,
    Connection,
    DateTime,
    Engine,
    Insert,
    Integer,
    Select,
    String,
    Text,
    bindparam,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from diffserve.core.job import Job, JobStatus
from diffserve.core.request import GenerationRequest
from diffserve.store.db import (
    ControlEventRow,
    JobRow,
    ProgressRow,
    QueueRow,
    WebhookDeliveryRow,
    WorkerRow,
    autocommit,
    utcnow,
)
from diffserve.store.notify import CHANNEL, notify_done
from diffserve.store.outcomes import ClaimLost, Outcome, Started  # noqa: F401 - callers import them from here
from diffserve.store.storage_config import version_now

log = logging.getLogger(__name__)

QUEUED, RUNNING = JobStatus.QUEUED.value, JobStatus.RUNNING.value
UNFINISHED = (QUEUED, RUNNING)
TERMINAL = tuple(s.value for s in JobStatus if s.is_terminal())


class QueueEvents(Protocol):
    """What the queue backend does once a ledger change is committed (jobqueue/local.py, celery.py)."""

    def enqueued(self, job_id: int, label: str | None) -> None:
        """A queue row was written or released: wake a worker (local pipe) or send a broker message."""

    def forgotten(self, job_id: int) -> None:
        """This process's hold on the job ended (finished, refused, given back): acknowledge its message."""


class _Refused(Exception):
    """Inside a transaction: a compare-and-set found the job changed; roll back, change nothing."""


class Ledger:
    def __init__(self, db: Engine, events: QueueEvents | None = None) -> None:
        self._db = db
        self._read = autocommit(db)  # single-statement reads
        self._events = events
        self._job_by_id = select(*JobRow.__table__.columns).where(JobRow.id == bindparam("job_id"))  # polled

    def using(self, events: QueueEvents | None) -> Ledger:
        """The same ledger, telling this queue backend of committed changes."""
        return Ledger(self._db, events)

    # -- the API side -------------------------------------------------------------------------------------
    def create(self, *, key_id: str, dialect: str, request: GenerationRequest, output_token: str,
               dialect_params: dict[str, Any] | None = None, enqueue: bool = True) -> Job:
        """The job row and (enqueue=True) its queue row, in one transaction; then the queue is told."""
        now = utcnow()
        params, hook = dict(dialect_params or {}), "pending" if request.webhook else ""
        row = {"v_key_id": key_id, "v_dialect": dialect, "v_status": QUEUED,
               "v_request": request.model_dump(mode="json"), "v_dialect_params": params,
               "v_output_token": output_token, "v_outputs": [], "v_nsfw": [],
               "v_attempts": 0, "v_webhook_status": hook, "v_created_at": now,
               "p_model": request.model_id, "p_label": request.worker_label}
        if enqueue and self._db.dialect.name == "postgresql":
            with self._read.begin() as c:  # one statement in autocommit: the job row and its queue row, atomic
                job_id = c.execute(_create(True), row).scalar_one()
        else:  # prebuilt Core statements: neither the ORM's unit of work nor a statement built per call
            with self._db.begin() as c:
                job_id = c.execute(_create(False), row).scalar_one()
                if enqueue:
                    c.execute(_enqueue(), {**row, "p_job": job_id})
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
        started = self.begin(job_id, worker_id, worker_row=worker_row)
        return started.job if started is not None else None

    def begin(self, job_id: int, worker_id: str, *, worker_row: dict[str, Any] | None = None) -> Started | None:
        """`start`, answering also what the worker would otherwise read before the run (Started). One
        transaction; on PostgreSQL one statement (data-modifying CTEs): one round trip."""
        now = utcnow()
        if self._db.dialect.name == "postgresql":
            result = self._begin_pg(job_id, worker_id, worker_row, now)
        else:
            result = self._begin_here(job_id, worker_id, worker_row, now)
        if result is None and self._events is not None:
            self._events.forgotten(job_id)
        return result

    def _begin_here(self, job_id: int, worker_id: str, worker_row: dict[str, Any] | None,
                    now: datetime) -> Started | None:
        """`begin` as statements in one transaction (SQLite: no data-modifying CTEs)."""
        someone_else = exists().where(QueueRow.job_id == job_id,
                                      or_(QueueRow.claimed_by.is_(None), QueueRow.claimed_by != worker_id))
        with self._db.begin() as s:
            row = s.execute(
                update(JobRow).where(JobRow.id == job_id, JobRow.status == QUEUED, ~someone_else)
                .values(status=RUNNING, worker_id=worker_id, started_at=now, attempts=JobRow.attempts + 1)
                .returning(*JobRow.__table__.columns)).first()
            if row is None:  # not this worker's to start; a finished job's leftover claim goes
                ended = exists().where(JobRow.id == job_id, JobRow.status.in_(TERMINAL))
                s.execute(delete(QueueRow).where(QueueRow.job_id == job_id, QueueRow.claimed_by == worker_id, ended))
                return None
            cancel = s.execute(update(ProgressRow).where(ProgressRow.job_id == job_id)
                               .values(step=0, total=0, step_s=None, preview=None, updated_at=now)
                               .returning(ProgressRow.cancel_requested)).scalar()
            self._worker_row(s, worker_id, worker_row)
            head = s.scalar(select(func.max(ControlEventRow.id)))
            return Started(to_job(row), bool(cancel), int(head or 0))

    def _begin_pg(self, job_id: int, worker_id: str, worker_row: dict[str, Any] | None,
                  now: datetime) -> Started | None:
        """`begin` on PostgreSQL: one statement (_pg_begin) in autocommit: atomic, one round trip."""
        params = {"p_job": job_id, "p_worker": worker_id, "p_now": now,
                  **{f"w_{k}": v for k, v in (worker_row or {}).items()}}
        with self._read.begin() as c:  # autocommit: the statement alone is the transaction
            row = c.execute(_pg_begin(tuple(worker_row) if worker_row is not None else None), params).first()
        return started_from(row)

    def finish(self, job_id: int, attempt: int | None, outcome: Outcome, *, worker_id: str | None = None,
               worker_row: dict[str, Any] | None = None) -> bool:
        """End the job as `outcome`, if `attempt` still owns it (running, same attempt number; None: any
        unfinished job, for management and tests). One transaction: the job row (outputs point at this
        attempt's files), its queue row deleted (the ack), the progress preview dropped, the webhook delivery
        row when the job has a webhook (the dispatcher sends it), PostgreSQL NOTIFY; plus the worker's row
        (worker_row values) either way. True when this wrote the end; False: refused, nothing of the job
        changed (the claim was lost, or it ended already)."""
        if self._db.dialect.name == "postgresql":
            done = self._finish_pg(job_id, attempt, outcome, worker_id, worker_row)
        else:
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
            row = c.execute(self._job_by_id, {"job_id": job_id}).first()
            return to_job(row) if row else None

    def holds(self, job_id: int, attempt: int) -> bool:
        """Does this attempt still own the job (running, same attempt)? The worker's heartbeat asks."""
        with self._read.connect() as s:
            return s.scalar(select(JobRow.id).where(JobRow.id == job_id, JobRow.status == RUNNING,
                                                    JobRow.attempts == attempt)) is not None

    def _finish_pg(self, job_id: int, attempt: int | None, outcome: Outcome, worker_id: str | None,
                   worker_row: dict[str, Any] | None) -> bool:
        """`finish` on PostgreSQL: one statement (_pg_finish) in autocommit: atomic, one round trip."""
        now = utcnow()
        row = worker_row if worker_id is not None else None
        params = {"p_job": job_id, "p_attempt": attempt, "p_now": now, "p_worker": worker_id,
                  "p_delivery": f"msg_{uuid.uuid4().hex}", "v_status": outcome.status.value,
                  "v_outputs": list(outcome.outputs), "v_nsfw": list(outcome.nsfw), "v_error": outcome.error,
                  "v_storage_version": outcome.storage_version, "v_run": {"run": outcome.run},
                  **{f"w_{k}": v for k, v in (row or {}).items()}}
        stmt = _pg_finish(attempt is None, bool(outcome.run), tuple(row) if row is not None else None)
        with self._read.begin() as c:  # autocommit: the statement alone is the transaction
            return c.execute(stmt, params).first() is not None

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


# -- PostgreSQL: a start and a finish as one statement each (data-modifying CTEs) ---------------------------
# Built once per shape with bind parameters: building and keying a statement this size costs more Python than
# running it.


_JOB_VALUES = ("key_id", "dialect", "status", "request", "dialect_params", "output_token", "outputs", "nsfw",
               "attempts", "webhook_status", "created_at")


@functools.lru_cache(maxsize=None)
def _create(with_queue_row: bool) -> Select | Insert:
    """INSERT INTO jobs (...) RETURNING id; with_queue_row (PostgreSQL): WITH j AS (that), q AS (INSERT INTO
    local_queue SELECT j.id, ... FROM j) SELECT j.id -- both rows in one statement."""
    jobs = JobRow.__table__
    insert_job = insert(jobs).values({k: bindparam(f"v_{k}", type_=jobs.c[k].type) for k in _JOB_VALUES})
    if not with_queue_row:
        return insert_job.returning(jobs.c.id)
    j = insert_job.returning(jobs.c.id).cte("j")
    q = insert(QueueRow.__table__).from_select(
        ["job_id", "model_id", "label", "enqueued_at"],
        select(j.c.id, bindparam("p_model", type_=String), bindparam("p_label", type_=String),
               bindparam("v_created_at", type_=DateTime)))
    return select(j.c.id).add_cte(q.cte("q"))


@functools.lru_cache(maxsize=None)
def _enqueue() -> Insert:
    return insert(QueueRow.__table__).values(job_id=bindparam("p_job", type_=Integer),
                                             model_id=bindparam("p_model", type_=String),
                                             label=bindparam("p_label", type_=String),
                                             enqueued_at=bindparam("v_created_at", type_=DateTime))


def _row_values(keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: bindparam(f"w_{k}", type_=WorkerRow.__table__.c[k].type) for k in keys}


@functools.lru_cache(maxsize=None)
def _pg_begin(row_keys: tuple[str, ...] | None) -> Select:
    """WITH j AS (UPDATE jobs: queued -> running, if no other worker holds its queue row, RETURNING *), d (the
    leftover claim of a finished job dropped), p (the progress row reset, RETURNING cancel_requested), w (the
    worker row) -- p and w only where j started the job -- SELECT j.*, the cancel flag, the control log's head, the
    saved storage settings' version."""
    job_id, worker_id = bindparam("p_job", type_=Integer), bindparam("p_worker", type_=String)
    now = bindparam("p_now", type_=DateTime)
    someone_else = exists().where(QueueRow.job_id == job_id,
                                  or_(QueueRow.claimed_by.is_(None), QueueRow.claimed_by != worker_id))
    j = (update(JobRow).where(JobRow.id == job_id, JobRow.status == QUEUED, ~someone_else)
         .values(status=RUNNING, worker_id=worker_id, started_at=now, attempts=JobRow.attempts + 1)
         .returning(*JobRow.__table__.columns).cte("j"))
    started = exists(select(j.c.id))
    ended = exists().where(JobRow.id == job_id, JobRow.status.in_(TERMINAL))
    ctes = [delete(QueueRow).where(QueueRow.job_id == job_id, QueueRow.claimed_by == worker_id, ended).cte("d")]
    p = (update(ProgressRow).where(ProgressRow.job_id == job_id, started)
         .values(step=0, total=0, step_s=None, preview=None, updated_at=now)
         .returning(ProgressRow.cancel_requested).cte("p"))
    ctes.append(p)
    if row_keys is not None:
        ctes.append(update(WorkerRow).where(WorkerRow.worker_id == worker_id, started)
                    .values(heartbeat_at=now, **_row_values(row_keys)).cte("w"))
    cancel = select(func.bool_or(p.c.cancel_requested)).scalar_subquery()
    head = select(func.max(ControlEventRow.id)).scalar_subquery()
    return select(j, cancel.label("cancel_asked"), head.label("orders_head"),
                  version_now().label("settings_version")).add_cte(*ctes)


def pg_start_claimed(claim: CTE) -> tuple[list[CTE], CTE, list]:
    """The start of the job a claim statement takes, in that statement (jobqueue/local.py, PostgreSQL): `claim`
    is its CTE (UPDATE local_queue ... RETURNING job_id). Answers the CTEs to add, j, and the columns to select
    from a LEFT JOIN on j (j's, the cancel flag, the control log's head, the saved storage settings' version:
    `started_from` reads them). j: the job, queued -> running for p_worker, the attempt counted; p: its progress
    row reset (RETURNING cancel_requested); w: the worker row, busy with it -- p and w only where j started it. No
    "someone else holds its queue row" test: the claim in the same statement holds it. The job row is taken with
    SKIP LOCKED (jl): the claim locked the queue row first, the other order than a cancel's (job row, then queue
    row), so it never waits for a job row -- no deadlock. A claimed job that was not queued (a leftover row) or whose
    row was busy starts nothing here: its worker starts it through `begin`, which sorts it out."""
    worker_id, now = bindparam("p_worker", type_=String), bindparam("p_now", type_=DateTime)
    claimed = select(claim.c.job_id).scalar_subquery()
    jl = select(JobRow.id).where(JobRow.id == claimed).with_for_update(skip_locked=True).cte("jl")
    j = (update(JobRow).where(JobRow.id == select(jl.c.id).scalar_subquery(), JobRow.status == QUEUED)
         .values(status=RUNNING, worker_id=worker_id, started_at=now, attempts=JobRow.attempts + 1)
         .returning(*JobRow.__table__.columns).cte("j"))
    started = exists(select(j.c.id))
    p = (update(ProgressRow).where(ProgressRow.job_id == claimed, started)
         .values(step=0, total=0, step_s=None, preview=None, updated_at=now)
         .returning(ProgressRow.cancel_requested).cte("p"))
    w = (update(WorkerRow).where(WorkerRow.worker_id == worker_id, started)
         .values(heartbeat_at=now, state="busy", current_job=select(j.c.id).scalar_subquery()).cte("w"))
    cancel = select(func.bool_or(p.c.cancel_requested)).scalar_subquery()
    head = select(func.max(ControlEventRow.id)).scalar_subquery()
    return [jl, j, p, w], j, [*j.c, cancel.label("cancel_asked"), head.label("orders_head"),
                              version_now().label("settings_version")]


def started_from(row) -> Started | None:  # noqa: ANN001 - a result row of _pg_begin or of pg_start_claimed's columns
    """The Started a start statement answered; None when it started nothing."""
    if row is None or row.id is None:
        return None
    return Started(to_job(row), bool(row.cancel_asked), int(row.orders_head or 0), row.settings_version)


@functools.lru_cache(maxsize=None)
def _pg_finish(unfenced: bool, with_run: bool, row_keys: tuple[str, ...] | None) -> Select:
    """WITH j AS (UPDATE jobs: the end, if the attempt still owns it, RETURNING id, request), q (its queue row
    deleted: the ack), p (the preview dropped), h (the webhook delivery row, when the request has a webhook)
    -- each only for the job j ended -- and w (the worker row, either way); SELECT j.id, pg_notify(...)."""
    job_id, now = bindparam("p_job", type_=Integer), bindparam("p_now", type_=DateTime)
    if unfenced:
        cond = [JobRow.status.in_(UNFINISHED)]
    else:
        cond = [JobRow.status == RUNNING, JobRow.attempts == bindparam("p_attempt", type_=Integer)]
    columns = JobRow.__table__.c
    values: dict[str, Any] = {k: bindparam(f"v_{k}", type_=columns[k].type)
                              for k in ("status", "outputs", "nsfw", "storage_version", "error")}
    values["finished_at"] = now
    if with_run:  # {"run": ...} merged into the stored params by the server: no read before the write
        stored = func.nullif(cast(JobRow.dialect_params, JSONB), cast(literal("null"), JSONB))
        values["dialect_params"] = cast(func.coalesce(stored, cast(literal("{}"), JSONB))
                                        .op("||")(cast(bindparam("v_run", type_=JSON), JSONB)), JSON)
    j = (update(JobRow).where(JobRow.id == job_id, *cond).values(**values)
         .returning(JobRow.id, JobRow.request).cte("j"))
    hook = j.c.request["webhook"].as_string()
    ctes = [
        delete(QueueRow).where(QueueRow.job_id.in_(select(j.c.id))).cte("q"),
        update(ProgressRow).where(ProgressRow.job_id.in_(select(j.c.id))).values(preview=None).cte("p"),
        insert(WebhookDeliveryRow).from_select(
            ["job_id", "delivery_id", "url", "state", "attempts", "next_attempt_at", "created_at"],
            select(j.c.id, bindparam("p_delivery", type_=String), hook, literal("pending"), literal(0), now, now)
            .where(hook.is_not(None), hook != "")).cte("h"),
    ]
    if row_keys is not None:
        ctes.append(update(WorkerRow).where(WorkerRow.worker_id == bindparam("p_worker", type_=String))
                    .values(heartbeat_at=now, **_row_values(row_keys)).cte("w"))
    return select(j.c.id, func.pg_notify(CHANNEL, cast(j.c.id, Text))).add_cte(*ctes)


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
