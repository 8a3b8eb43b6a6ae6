"""Local queue backend: a table in the job store's SQLite database.

Durable across restarts (the row is there until ack), atomic claims across worker processes
(SQLite serialises writers; the UPDATE ... RETURNING picks one row for one worker).

Load balancing (several workers): each row carries the job's model id and, when the job asked for a
GPU class (Qolaba `inference_type`), a label that only workers with that label may take. A free
worker takes, in this order:

1. the oldest job that has waited `affinity_wait_s` or more (so no job ever starves);
2. else the oldest job for a model it has loaded (no load at all);
3. else the oldest job whose model no other live worker (that may take it) has loaded;
4. else nothing: the remaining jobs are for models another worker holds, and that worker takes them
   when it is free, or any worker does once they have waited `affinity_wait_s`.

Only the oldest `SCAN_LIMIT` waiting rows are considered per claim. Rules 1 and 2 are first tried as one
statement (`_claim_statement`, built once per shape: the oldest waiting job that is overdue or for a loaded
model, taken with `FOR UPDATE SKIP LOCKED` on PostgreSQL so that workers claiming at once take different rows);
a job's `enqueued_at` follows its id, so the oldest such job is the one the rules name. On PostgreSQL the same
statement answers whether any job waits for this worker at all, so an empty queue costs one statement. Only
when jobs wait that it did not take are the waiting rows read (rule 3, and the answer "nothing for you").

A claim hands out a job id; the worker then starts it through the ledger (store/ledger.py `start`), which
counts the attempt (the started job's `attempts`) that fences every later write of that run -- or, on
PostgreSQL, a claim with `start=True` that takes its job by rules 1-2 starts it in the same statement (the
ledger's `pg_start_claimed`: one round trip for both; `started` hands the worker that answer). Ending and
giving back a job are the ledger's too: its transaction deletes or releases this table's row with the job's
own change, and tells the backend afterwards (`enqueued`, `forgotten`). `ack` and `release` here take the
attempt as a fence for any other caller.

A worker running a batch (workers/batcher.py) tops it up between two steps with `claim_batch`: waiting jobs
of the batch's key (core/batching.py), oldest first -- rule 2 above, for one model and size -- but none at
all once a job it may take that cannot join is overdue (rule 1), so that job is next.
"""

from __future__ import annotations

import functools
import time
from datetime import timedelta
from typing import Callable, NamedTuple, Sequence

from sqlalchemy import DateTime, Engine, Integer, Select, String, Update, bindparam, case, delete, exists, func, insert
from sqlalchemy import any_, literal, or_, select, true, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from diffserve.core.batching import BatchKey, batch_key
from diffserve.store.db import JobRow, QueueRow, WorkerRow, autocommit, utcnow
from diffserve.store.ledger import Started, pg_start_claimed, started_from
from diffserve.jobqueue.signals import WorkerPipes

_POLL_MIN_S = 0.01
_POLL_MAX_S = 0.1
SCAN_LIMIT = 200
_LOCKED_RETRIES = 20
LIVE_WORKER_S = 15.0  # default: a worker whose heartbeat is older is not counted as holding its models
ANY_LABEL = object()  # _try_claim: jobs of every class this worker may take (else: only jobs with this label)


class Claimed(NamedTuple):
    """What one claim statement answers: the job taken (None: none), whether jobs this worker may take are
    waiting still (for a Celery message: give it back or drop it), and the holder of the message's job when
    that holder is gone (its heartbeat is stale: the job is an orphan to give back)."""

    job_id: int | None
    waiting: bool = False
    orphan_of: str | None = None
    started: Started | None = None  # the claim started the job too (PostgreSQL, claim(start=True))


def _label_mode(labels: Sequence[str], label_class: object = ANY_LABEL) -> str:
    """Which rows by label a worker with these labels may take: "class" (a `label_class`: only the rows of that
    one class), "none" (unlabelled only: no labels, or the class None), "any" (unlabelled and this worker's
    labels): the shape of a prebuilt statement (_label_cond; its parameters: _label_params)."""
    if label_class is not ANY_LABEL:
        return "none" if label_class is None else "class"
    return "any" if labels else "none"


def _one_of(column, name: str, pg: bool):
    """column IN (the list bound as `name`): on PostgreSQL `= ANY(<one array parameter>)`, a statement whose text
    never changes (an expanding IN is rendered again for each execution, a sixth of a claim's Python)."""
    if pg:
        return column == any_(bindparam(name, type_=ARRAY(String)))
    return column.in_(bindparam(name, expanding=True))


def _label_params(labels: Sequence[str], label_class: object = ANY_LABEL) -> dict:
    return {"p_labels": list(labels), "p_label": label_class if isinstance(label_class, str) else None}


def _label_cond(mode: str, pg: bool = False):
    """The rows of label mode `mode` (_label_mode), with bind parameters p_label / p_labels (_label_params)."""
    if mode == "class":
        return QueueRow.label == bindparam("p_label", type_=String)
    if mode == "any":
        return or_(QueueRow.label.is_(None), _one_of(QueueRow.label, "p_labels", pg))
    return QueueRow.label.is_(None)


@functools.lru_cache(maxsize=None)
def gone_holder() -> Select:
    """The "holder gone" rule: the worker that claimed job p_message_job, when it is another than p_worker and its
    heartbeat is older than p_stale (or its row is gone). Inside the claim statement on PostgreSQL; alone on
    SQLite (jobqueue/celery.py)."""
    return (select(QueueRow.claimed_by).outerjoin(WorkerRow, WorkerRow.worker_id == QueueRow.claimed_by)
            .where(QueueRow.job_id == bindparam("p_message_job", type_=Integer), QueueRow.claimed_by.is_not(None),
                   QueueRow.claimed_by != bindparam("p_worker", type_=String),
                   or_(WorkerRow.heartbeat_at.is_(None),
                       WorkerRow.heartbeat_at < bindparam("p_stale", type_=DateTime))))


@functools.lru_cache(maxsize=None)
def _claim_statement(pg: bool, mode: str, with_loaded: bool, orphan: bool, start: bool = False) -> Select | Update:
    """Rules 1 and 2 as one statement, built once per shape with bind parameters (building and keying a
    statement costs more Python than running it): UPDATE local_queue SET claimed_by WHERE job_id = (the oldest
    waiting job that is overdue or for a loaded model, FOR UPDATE SKIP LOCKED) RETURNING job_id. On PostgreSQL it
    answers in the same round trip whether jobs still wait for this worker (nothing waiting: no scan) and, for
    a Celery message (`orphan`), who holds the message's job if that worker is gone; with `start`, the claimed
    job is started in the same statement (store/ledger.py pg_start_claimed): claim and start, one round trip."""
    takeable = QueueRow.enqueued_at <= bindparam("p_overdue", type_=DateTime)
    if with_loaded:
        takeable = or_(takeable, _one_of(QueueRow.model_id, "p_loaded", pg))
    first = (select(QueueRow.job_id)
             .where(QueueRow.claimed_by.is_(None), _label_cond(mode, pg), takeable)
             .order_by(QueueRow.job_id).limit(1)
             .with_for_update(skip_locked=True)  # PostgreSQL: a row another claim holds is passed over
             .scalar_subquery())
    claim = (update(QueueRow.__table__).where(QueueRow.job_id == first, QueueRow.claimed_by.is_(None))
             .values(claimed_by=bindparam("p_worker", type_=String), claimed_at=bindparam("p_now", type_=DateTime))
             .returning(QueueRow.job_id))
    if not pg:
        return claim
    c = claim.cte("c")
    columns = [select(c.c.job_id).scalar_subquery().label("claimed"),
               exists().where(QueueRow.claimed_by.is_(None), _label_cond(mode, pg)).label("waiting")]
    if orphan:  # the message's job, claimed by another worker whose heartbeat is stale (or gone)
        columns.append(gone_holder().scalar_subquery().label("orphan_of"))
    if not start:
        return select(*columns).add_cte(c)
    ctes, j, started = pg_start_claimed(c)
    one = select(literal(1).label("one")).subquery("one")
    return select(*columns, *started).select_from(one.outerjoin(j, true())).add_cte(c, *ctes)


@functools.lru_cache(maxsize=None)
def _waiting_statement(pg: bool, mode: str) -> Select:
    """The oldest SCAN_LIMIT waiting rows a worker may take by label (rule 3's scan, claim_batch's look)."""
    return (select(QueueRow.job_id, QueueRow.model_id, QueueRow.label, QueueRow.enqueued_at)
            .where(QueueRow.claimed_by.is_(None), _label_cond(mode, pg))
            .order_by(QueueRow.job_id).limit(SCAN_LIMIT))


def _owned(job_id: int, attempt: int | None) -> list:
    """The fence of a worker's queue write: its attempt still owns the job (running, same attempt number)."""
    if attempt is None:
        return []
    return [select(JobRow.id).where(JobRow.id == job_id, JobRow.status == "running",
                                    JobRow.attempts == attempt).exists()]


class LocalQueue:
    """Wake-ups (jobqueue/signals.py), so idle workers react at once instead of after a poll interval:
    `notify` is called after each enqueue (the API side pokes the workers); `wake` is this worker's
    end of its `ready` pipe (the worker side waits on it)."""

    def __init__(self, db: Engine, *, notify: Callable[[], None] | None = None,
                 wake: WorkerPipes | None = None, affinity_wait_s: float = 2.0,
                 live_worker_s: float = LIVE_WORKER_S) -> None:
        """live_worker_s: a worker silent longer is gone (DIFFSERVE_WORKER_STALE_S): its models hold no job back."""
        self._db = db
        self._now = autocommit(db)  # single statements: a claim is one atomic UPDATE, no transaction around it
        self._live_worker_s = live_worker_s
        self._notify = notify
        self._wake = wake
        self._affinity_wait_s = affinity_wait_s
        self._pg = db.dialect.name == "postgresql"
        self._delay = _POLL_MIN_S  # the poll's back-off without a wake-up pipe, kept across claims
        self._started: dict[int, Started] = {}  # job id -> its start, answered by the claim (claim(start=True))

    def enqueue(self, job_id: int) -> None:
        """Queue a job already in the store, with its routing (model id, worker label) read from the job row.
        The ledger's `create` writes the job and its queue row in one transaction (store/ledger.py); this is
        for a job created without (tools, tests)."""
        self.enqueued(job_id, self._insert(job_id))

    # -- what the ledger tells the queue once a change is committed (store/ledger.py QueueEvents) -------------
    def enqueued(self, job_id: int, label: str | None) -> None:
        """A queue row was written or released: wake an idle local worker."""
        if self._notify is not None:
            self._notify()

    def forgotten(self, job_id: int) -> None:
        """This process's hold on the job ended: nothing to acknowledge here (the table row went with the
        ledger's transaction); the Celery backend acknowledges the job's message."""
        self._started.pop(job_id, None)

    def _insert(self, job_id: int) -> str | None:
        """The queue row (once: enqueueing twice is a no-op); returns the job's worker label."""
        with Session(self._db) as s, s.begin():
            row = s.get(QueueRow, job_id)
            if row is not None:
                return row.label
            request = s.scalar(select(JobRow.request).where(JobRow.id == job_id)) or {}
            s.execute(insert(QueueRow).values(job_id=job_id, model_id=request.get("model_id"),
                                              label=request.get("worker_label"), enqueued_at=utcnow()))
            return request.get("worker_label")

    def resend_missing(self) -> int:
        """Nothing to re-send: this table is the whole queue (the Celery backend re-sends lost messages)."""
        return 0

    def claim(self, worker_id: str, timeout: float, *, loaded: Sequence[str] = (),
              labels: Sequence[str] = (), start: bool = False) -> int | None:
        """`loaded`: models this worker holds; `labels`: its labels (GPU class), see the module doc; `start`: on
        PostgreSQL the claim starts the job too (its answer: `started`), else the worker starts it. Without a
        wake-up pipe (a worker this process did not spawn) the store is polled, backing off from 10 to 100 ms
        while nothing comes -- across calls: an idle worker's back-off is not reset by its loop's next call."""
        deadline = time.monotonic() + timeout
        while True:
            if self._wake is not None:
                self._wake.clear_ready()  # drained before looking: an enqueue after this pokes again
            job_id = self._try_claim(worker_id, loaded, labels, start=start)
            remaining = deadline - time.monotonic()
            if job_id is not None:
                self._delay = _POLL_MIN_S
                return job_id
            if remaining <= 0:
                return None
            if self._wake is not None:
                self._wake.wait_ready(remaining)
            else:
                time.sleep(min(self._delay, remaining))
                self._delay = min(self._delay * 2, _POLL_MAX_S)

    def started(self, job_id: int) -> Started | None:
        """What the claim that took this job answered of its start (claim(start=True) on PostgreSQL), once;
        None: the worker starts it (store/ledger.py begin)."""
        return self._started.pop(job_id, None)

    def _try_claim(self, worker_id: str, loaded: Sequence[str], labels: Sequence[str],
                   label_class: object = ANY_LABEL, start: bool = False) -> int | None:
        return self._claim_retried(worker_id, loaded, labels, label_class, start=start).job_id

    def _claim_retried(self, worker_id: str, loaded: Sequence[str], labels: Sequence[str],
                       label_class: object = ANY_LABEL, message_job: int | None = None,
                       start: bool = False) -> Claimed:
        for attempt in range(_LOCKED_RETRIES):
            try:
                claimed = self._claim_one(worker_id, loaded, labels, label_class, message_job, start)
                if claimed.started is not None:
                    self._started[claimed.started.job.id] = claimed.started
                return claimed
            except OperationalError as e:
                # SQLite (WAL): another process wrote after this transaction read, so it cannot upgrade to
                # a write ("database is locked" at once, whatever the busy timeout). Nothing was claimed.
                if "locked" not in str(e) or attempt == _LOCKED_RETRIES - 1:
                    raise
                time.sleep(_POLL_MIN_S)
        return Claimed(None)

    def _claim_one(self, worker_id: str, loaded: Sequence[str], labels: Sequence[str],
                   label_class: object = ANY_LABEL, message_job: int | None = None, start: bool = False) -> Claimed:
        """One claim: rules 1-2 in one statement (on PostgreSQL also "anything waiting?" and, for a message's
        job, its gone holder), then -- only while jobs wait that it did not take -- the scan for rule 3."""
        now = utcnow()
        pg = self._pg
        mode = _label_mode(labels, label_class)
        params = {"p_worker": worker_id, "p_now": now, "p_overdue": now - timedelta(seconds=self._affinity_wait_s),
                  "p_loaded": list(loaded), **_label_params(labels, label_class), "p_message_job": message_job,
                  "p_stale": now - timedelta(seconds=self._live_worker_s)}
        statement = _claim_statement(pg, mode, bool(loaded), pg and message_job is not None, pg and start)
        # one transaction for the counters (its commit event), statements in autocommit: the claim is the one
        # UPDATE (atomic compare-and-set), one round trip when the first statement claims, no BEGIN/COMMIT
        with self._now.begin() as c:
            if pg:
                row = c.execute(statement, params).one()
                job_id, orphan_of = row.claimed, getattr(row, "orphan_of", None)
                if job_id is not None or not row.waiting:
                    return Claimed(job_id, bool(row.waiting), orphan_of, started_from(row) if start else None)
            else:
                job_id, orphan_of = c.execute(statement, params).scalar_one_or_none(), None
                if job_id is not None:
                    return Claimed(job_id, True)
            waiting = c.execute(_waiting_statement(pg, mode), params).all()
            if not waiting:
                return Claimed(None, False, orphan_of)
            job_id = self._pick(c, worker_id, waiting, set(loaded), now)
            if job_id is not None:
                job_id = c.execute(  # compare-and-set: another worker may have taken it since the read
                    update(QueueRow)
                    .where(QueueRow.job_id == job_id, QueueRow.claimed_by.is_(None))
                    .values(claimed_by=worker_id, claimed_at=now)
                    .returning(QueueRow.job_id)
                ).scalar_one_or_none()
            return Claimed(job_id, True, orphan_of)

    def _pick(self, s, worker_id: str, waiting: list, loaded: set[str], now) -> int | None:
        overdue = now - timedelta(seconds=self._affinity_wait_s)
        for job_id, _, _, enqueued_at in waiting:
            if enqueued_at is None or enqueued_at <= overdue:
                return job_id
        for job_id, model_id, _, _ in waiting:
            if model_id in loaded:
                return job_id
        others = self._other_workers(s, worker_id, now)
        for job_id, model_id, label, _ in waiting:
            better_placed = any(model_id in models and (label is None or label in labels) for models, labels in others)
            if not better_placed:
                return job_id
        return None

    def _other_workers(self, s, worker_id: str, now) -> list[tuple[set[str], set[str]]]:
        """(models loaded, labels) of every other live worker."""
        rows = s.execute(select(WorkerRow.models, WorkerRow.labels).where(
            WorkerRow.worker_id != worker_id, WorkerRow.heartbeat_at >= now - timedelta(seconds=self._live_worker_s),
            WorkerRow.state != "stopped")).all()
        return [(set(models or ()), set(labels or ())) for models, labels in rows]

    def claim_batch(self, worker_id: str, key: BatchKey, rows: int, *, labels: Sequence[str] = ()) -> list[int]:
        for attempt in range(_LOCKED_RETRIES):
            try:
                return self._claim_batch(worker_id, key, rows, labels)
            except OperationalError as e:  # as in _try_claim: nothing was claimed
                if "locked" not in str(e) or attempt == _LOCKED_RETRIES - 1:
                    raise
                time.sleep(_POLL_MIN_S)
        return []

    def _claim_batch(self, worker_id: str, key: BatchKey, rows: int, labels: Sequence[str]) -> list[int]:
        if rows < 1:
            return []
        now = utcnow()
        overdue = now - timedelta(seconds=self._affinity_wait_s)
        model_id = key[0]
        with Session(self._db) as s, s.begin():
            waiting = [(job_id, model, enqueued_at) for job_id, model, _, enqueued_at in s.execute(
                _waiting_statement(self._pg, _label_mode(labels)), _label_params(labels)).all()]
            same_model = [job_id for job_id, model, _ in waiting if model == model_id]
            requests = dict(s.execute(select(JobRow.id, JobRow.request).where(JobRow.id.in_(same_model))).all()) \
                if same_model else {}
            chosen, left = [], rows
            for job_id, _, enqueued_at in waiting:
                request = requests.get(job_id)
                fits = request is not None and batch_key(request) == key
                if not fits:
                    if enqueued_at is None or enqueued_at <= overdue:
                        return []  # an overdue job of another kind goes first: stop topping up
                    continue
                samples = int(request.get("samples") or 1)
                if samples > left:
                    break  # no overtaking: a job of several samples joins once there is room for it
                chosen.append(job_id)
                left -= samples
            if not chosen:
                return []
            claimed = s.execute(
                update(QueueRow)
                .where(QueueRow.job_id.in_(chosen), QueueRow.claimed_by.is_(None))
                .values(claimed_by=worker_id, claimed_at=now)
                .returning(QueueRow.job_id)).scalars().all()
            return sorted(claimed)

    def ack(self, job_id: int, attempt: int | None = None) -> bool:
        """Drop the job's queue row. Workers do not call this: `Ledger.finish` deletes the row in the
        transaction that ends the job. attempt: only while that attempt owns the job (fenced: a late caller
        never deletes the row of the attempt that took over). True if a row was dropped."""
        with Session(self._db) as s, s.begin():
            dropped = s.execute(delete(QueueRow).where(QueueRow.job_id == job_id, *_owned(job_id, attempt))).rowcount
        return dropped == 1

    def release(self, job_id: int, attempt: int | None = None) -> bool:
        """Put a claimed job's row back for any worker (the job row is the ledger's: `Ledger.requeue` does
        both in one transaction). attempt: only while that attempt owns the job. True if a row was released."""
        with Session(self._db) as s, s.begin():
            released = s.execute(
                update(QueueRow).where(QueueRow.job_id == job_id, *_owned(job_id, attempt))
                .values(claimed_by=None, claimed_at=None)
            ).rowcount
        return released == 1

    def cancel(self, job_id: int) -> bool:
        with Session(self._db) as s, s.begin():
            result = s.execute(
                delete(QueueRow).where(QueueRow.job_id == job_id, QueueRow.claimed_by.is_(None))
            )
            return result.rowcount == 1

    def claimed_by(self, worker_id: str) -> list[int]:
        with Session(self._db) as s:
            return list(s.scalars(select(QueueRow.job_id).where(QueueRow.claimed_by == worker_id)))

    def claims(self) -> list[tuple[int, str]]:
        """(job id, worker id) of every claimed job."""
        with Session(self._db) as s:
            return [(j, w) for j, w in s.execute(select(QueueRow.job_id, QueueRow.claimed_by)
                                                 .where(QueueRow.claimed_by.is_not(None)))]

    def claimed_by_any(self) -> list[int]:
        with Session(self._db) as s:
            return list(s.scalars(select(QueueRow.job_id).where(QueueRow.claimed_by.is_not(None))))

    def depth(self) -> list[tuple[str | None, str | None, str, int]]:
        """(model id, label, "waiting" | "running", job count) for every queued group (metrics)."""
        state = case((QueueRow.claimed_by.is_(None), "waiting"), else_="running")
        with Session(self._db) as s:
            rows = s.execute(select(QueueRow.model_id, QueueRow.label, state, func.count())
                             .group_by(QueueRow.model_id, QueueRow.label, state)).all()
        return [(model, label, st, int(n)) for model, label, st, n in rows]

    def pending(self) -> list[int]:
        with Session(self._db) as s:
            return list(s.scalars(select(QueueRow.job_id).order_by(QueueRow.job_id)))
