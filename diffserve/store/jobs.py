"""The job store: the single source of truth for status, timings, outputs and errors."""

from __future__ import annotations

import bisect
import functools
import secrets
import threading
import time
from typing import Any, Callable, Generic, Iterable, TypeVar

from sqlalchemy import Engine, func, select

from diffserve.core.job import Job, JobStatus
from diffserve.core.request import GenerationRequest
from diffserve.store.db import JobRow, ProgressRow, autocommit
from diffserve.store.ledger import Ledger, Outcome, to_job

DURATIONS_FRESH_S = 1.0
POSITIONS_FRESH_S = 1.0  # the unfinished jobs' ids, for queue positions: read at most this often
POSITIONS_MAX = 100_000  # ids read at most (a position past it reads as this many ahead)
_UNFINISHED = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
T = TypeVar("T")


class _Fresh(Generic[T]):
    """A value read through `load` at most once per `max_age_s` (given at each look, so a test may change it): the
    one reader that finds it stale reads it afresh; readers meanwhile wait for its answer."""

    def __init__(self, load: Callable[[], T]) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._value: T | None = None

    def get(self, max_age_s: float) -> T:
        with self._lock:
            now = time.monotonic()
            if self._read_at is None or now - self._read_at >= max_age_s:
                self._value, self._read_at = self._load(), now
            return self._value  # type: ignore[return-value]


class JobStore:
    """Reads of the job store. Every change of a job's state is the ledger's (store/ledger.py); the writing
    methods here are short forms of it (no queue events, unfenced finishes: management and tests)."""

    def __init__(self, db: Engine) -> None:
        self._db = db
        self._read = autocommit(db)  # reads are single statements: no transaction around them
        self.ledger = Ledger(db)
        self._durations: dict[int, _Fresh[list[float]]] = {}  # limit -> the latest run times
        self._durations_lock = threading.Lock()  # (one _Fresh per limit)
        self._unfinished = _Fresh(self._read_unfinished)  # the unfinished jobs' ids, in order

    def create(
        self,
        *,
        key_id: str,
        dialect: str,
        request: GenerationRequest,
        output_token: str,
        dialect_params: dict[str, Any] | None = None,
    ) -> Job:
        """The job row alone (not queued): `ledger.create` writes it with its queue row."""
        return self.ledger.create(key_id=key_id, dialect=dialect, request=request, output_token=output_token,
                                  dialect_params=dialect_params, enqueue=False)

    def get(self, job_id: int) -> Job | None:
        return self.ledger.job(job_id)

    def by_token(self, output_token: str) -> Job | None:
        """The job whose images are named by `output_token` (unique): early links resolve through it."""
        with self._read.connect() as s:
            row = s.execute(select(*JobRow.__table__.columns).where(JobRow.output_token == output_token)).first()
            return to_job(row) if row else None

    def start(self, job_id: int, worker_id: str) -> Job | None:
        """queued -> running, counting the attempt. None if the job is no longer queued (Ledger.start)."""
        return self.ledger.start(job_id, worker_id)

    def succeed(self, job_id: int, outputs: list[str], nsfw: list[bool], run: dict | None = None) -> None:
        """run: how the job ran (device, dtype), merged into its dialect params so `meta` can show it."""
        self.ledger.finish(job_id, None, Outcome.succeeded(outputs, nsfw, run))

    def fail(self, job_id: int, error: str) -> None:
        self.ledger.finish(job_id, None, Outcome.failed(error))

    def cancel(self, job_id: int, reason: str, *, running: bool = False) -> bool:
        """queued (and no worker holds it) -> cancelled; running=True: also a running job, which its worker stopped."""
        if running:
            return self.ledger.finish(job_id, None, Outcome.cancelled(reason))
        return self.ledger.cancel(job_id, reason)

    def list_for_key(self, key_id: str, *, limit: int = 20, before: int | None = None) -> list[Job]:
        """A key's jobs, newest first; `before`: only ids below it (the next page)."""
        q = select(*JobRow.__table__.columns).where(JobRow.key_id == key_id)
        if before is not None:
            q = q.where(JobRow.id < before)
        with self._read.connect() as c:
            return [to_job(row) for row in c.execute(q.order_by(JobRow.id.desc()).limit(limit))]

    def requeue(self, job_id: int, max_attempts: int, reason: str) -> bool:
        """A job whose worker died: queue it again, or fail it once it used its attempts (Ledger.requeue).

        Returns True when the job is queued again.
        """
        return self.ledger.requeue(job_id, max_attempts, reason)

    def marks(self, job_ids: Iterable[int]) -> dict[int, tuple]:
        """A mark per job that changes whenever anything a follower shows changes: status, attempt, progress
        (step, and its write time: a new preview). One query for all of them (service/watch.py)."""
        ids = list(job_ids)
        if not ids:
            return {}
        with self._read.connect() as s:
            rows = s.execute(
                select(JobRow.id, JobRow.status, JobRow.attempts, ProgressRow.step, ProgressRow.updated_at)
                .outerjoin(ProgressRow, ProgressRow.job_id == JobRow.id).where(JobRow.id.in_(ids))
            ).all()
        return {row[0]: tuple(row[1:]) for row in rows}

    def unfinished_ids(self) -> list[int]:
        with self._read.connect() as s:
            return list(
                s.scalars(select(JobRow.id).where(JobRow.status.in_(_UNFINISHED)).order_by(JobRow.id))
            )

    def count_unfinished(self, key_id: str | None = None) -> int:
        q = select(func.count()).select_from(JobRow).where(JobRow.status.in_(_UNFINISHED))
        if key_id is not None:
            q = q.where(JobRow.key_id == key_id)
        with self._read.connect() as s:
            return int(s.scalar(q) or 0)

    def recent_durations(self, limit: int = 20) -> list[float]:
        """Run times (s) of the latest succeeded jobs, for ETA estimates: read at most once per
        DURATIONS_FRESH_S (every answer with an ETA asks; an estimate needs them no fresher)."""
        with self._durations_lock:
            kept = self._durations.get(limit)
            if kept is None:
                kept = self._durations[limit] = _Fresh(functools.partial(self._read_durations, limit))
        return list(kept.get(DURATIONS_FRESH_S))

    def _read_durations(self, limit: int) -> list[float]:
        with self._read.connect() as s:
            rows = s.execute(
                select(JobRow.started_at, JobRow.finished_at)
                .where(JobRow.status == JobStatus.SUCCEEDED.value)
                .order_by(JobRow.id.desc())
                .limit(limit)
            ).all()
        return [(f - st).total_seconds() for st, f in rows if st and f]

    def position(self, job_id: int) -> int:
        """How many unfinished jobs are ahead of this one, as of at most POSITIONS_FRESH_S ago: every queued
        job's fetch asks (an ETA), and one ordered read of the unfinished ids a second serves them all instead of
        a COUNT over the backlog per fetch."""
        return bisect.bisect_left(self._unfinished.get(POSITIONS_FRESH_S), job_id)

    def _read_unfinished(self) -> list[int]:
        with self._read.connect() as s:
            return list(s.scalars(select(JobRow.id).where(JobRow.status.in_(_UNFINISHED))
                                  .order_by(JobRow.id).limit(POSITIONS_MAX)))


def new_output_token() -> str:
    """Unguessable: 128 random bits, URL-safe."""
    return secrets.token_urlsafe(16)
