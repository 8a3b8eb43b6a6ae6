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
statement (`_claim_first`: the oldest waiting job that is overdue or for a loaded model, taken with `FOR UPDATE
SKIP LOCKED` on PostgreSQL so that workers claiming at once take different rows); a job's `enqueued_at` follows
its id, so the oldest such job is the one the rules name. Only when it finds none are the waiting rows read
(rule 3, and the answer "nothing for you").

A claim hands out a job id; the worker then starts it through the ledger (store/ledger.py `start`), which
counts the attempt (the started job's `attempts`) that fences every later write of that run. Ending and
giving back a job are the ledger's too: its transaction deletes or releases this table's row with the job's
own change, and tells the backend afterwards (`enqueued`, `forgotten`). `ack` and `release` here take the
attempt as a fence for any other caller.

A worker running a batch (workers/batcher.py) tops it up between two steps with `claim_batch`: waiting jobs
of the batch's key (core/batching.py), oldest first -- rule 2 above, for one model and size -- but none at
all once a job it may take that cannot join is overdue (rule 1), so that job is next.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Callable, Sequence

from sqlalchemy import Engine, case, delete, func, insert, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from diffserve.core.batching import BatchKey, batch_key
from diffserve.store.db import JobRow, QueueRow, WorkerRow, autocommit, utcnow
from diffserve.jobqueue.signals import WorkerPipes

_POLL_MIN_S = 0.01
_POLL_MAX_S = 0.1
SCAN_LIMIT = 200
_LOCKED_RETRIES = 20
LIVE_WORKER_S = 15.0  # default: a worker whose heartbeat is older is not counted as holding its models
ANY_LABEL = object()  # _try_claim: jobs of every class this worker may take (else: only jobs with this label)


def _label_ok(labels: Sequence[str], label_class: object = ANY_LABEL):
    """The rows a worker with these labels may take: unlabelled ones, and those of its labels; with a
    `label_class`, only the rows of that one class (None: the unlabelled ones)."""
    if label_class is not ANY_LABEL:
        return QueueRow.label.is_(None) if label_class is None else QueueRow.label == label_class
    label_ok = QueueRow.label.is_(None)
    return or_(label_ok, QueueRow.label.in_(list(labels))) if labels else label_ok


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
              labels: Sequence[str] = ()) -> int | None:
        """`loaded`: models this worker holds; `labels`: its labels (GPU class), see the module doc."""
        deadline = time.monotonic() + timeout
        delay = _POLL_MIN_S
        while True:
            if self._wake is not None:
                self._wake.clear_ready()  # drained before looking: an enqueue after this pokes again
            job_id = self._try_claim(worker_id, loaded, labels)
            remaining = deadline - time.monotonic()
            if job_id is not None or remaining <= 0:
                return job_id
            if self._wake is not None:
                self._wake.wait_ready(remaining)
            else:
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, _POLL_MAX_S)

    def _try_claim(self, worker_id: str, loaded: Sequence[str], labels: Sequence[str],
                   label_class: object = ANY_LABEL) -> int | None:
        for attempt in range(_LOCKED_RETRIES):
            try:
                return self._claim_one(worker_id, loaded, labels, label_class)
            except OperationalError as e:
                # SQLite (WAL): another process wrote after this transaction read, so it cannot upgrade to
                # a write ("database is locked" at once, whatever the busy timeout). Nothing was claimed.
                if "locked" not in str(e) or attempt == _LOCKED_RETRIES - 1:
                    raise
                time.sleep(_POLL_MIN_S)
        return None

    def _claim_one(self, worker_id: str, loaded: Sequence[str], labels: Sequence[str],
                   label_class: object = ANY_LABEL) -> int | None:
        now = utcnow()
        # one transaction for the counters (its commit event), statements in autocommit: the claim is the one
        # UPDATE (atomic compare-and-set), one round trip when the first statement claims, no BEGIN/COMMIT
        with self._now.begin() as c:
            job_id = self._claim_first(c, worker_id, loaded, labels, label_class, now)
            if job_id is not None:
                return job_id
            waiting = c.execute(
                select(QueueRow.job_id, QueueRow.model_id, QueueRow.label, QueueRow.enqueued_at)
                .where(QueueRow.claimed_by.is_(None), _label_ok(labels, label_class))
                .order_by(QueueRow.job_id)
                .limit(SCAN_LIMIT)
            ).all()
            if not waiting:
                return None
            job_id = self._pick(c, worker_id, waiting, set(loaded), now)
            if job_id is None:
                return None
            return c.execute(  # compare-and-set: another worker may have taken it since the read
                update(QueueRow)
                .where(QueueRow.job_id == job_id, QueueRow.claimed_by.is_(None))
                .values(claimed_by=worker_id, claimed_at=now)
                .returning(QueueRow.job_id)
            ).scalar_one_or_none()

    def _claim_first(self, c, worker_id: str, loaded: Sequence[str], labels: Sequence[str], label_class: object,
                     now) -> int | None:
        """Rules 1 and 2 in one statement: the oldest waiting job that is overdue or for a loaded model."""
        takeable = QueueRow.enqueued_at <= now - timedelta(seconds=self._affinity_wait_s)
        if loaded:
            takeable = or_(takeable, QueueRow.model_id.in_(list(loaded)))
        first = (select(QueueRow.job_id)
                 .where(QueueRow.claimed_by.is_(None), _label_ok(labels, label_class), takeable)
                 .order_by(QueueRow.job_id).limit(1)
                 .with_for_update(skip_locked=True)  # PostgreSQL: a row another claim holds is passed over
                 .scalar_subquery())
        return c.execute(
            update(QueueRow).where(QueueRow.job_id == first, QueueRow.claimed_by.is_(None))
            .values(claimed_by=worker_id, claimed_at=now).returning(QueueRow.job_id)).scalar_one_or_none()

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
            waiting = s.execute(
                select(QueueRow.job_id, QueueRow.model_id, QueueRow.enqueued_at)
                .where(QueueRow.claimed_by.is_(None), _label_ok(labels))
                .order_by(QueueRow.job_id).limit(SCAN_LIMIT)).all()
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
