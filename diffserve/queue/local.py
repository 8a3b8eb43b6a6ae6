"""Local queue backend: a table in the job store's SQLite database.

Durable across restarts (the row is there until ack), atomic claims across worker processes
(SQLite serialises writers; the UPDATE ... RETURNING picks one row for one worker).
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.orm import Session

from ..store.db import QueueRow, utcnow

_POLL_MIN_S = 0.01
_POLL_MAX_S = 0.1


class LocalQueue:
    """`ready`: an optional cross-process Event set on enqueue, so idle workers wake at once
    instead of waiting out their poll interval (see queue/signals.py)."""

    def __init__(self, engine: Engine, ready: Any = None) -> None:
        self._engine = engine
        self._ready = ready

    def enqueue(self, job_id: int) -> None:
        with Session(self._engine) as s, s.begin():
            if s.get(QueueRow, job_id) is None:
                s.execute(insert(QueueRow).values(job_id=job_id))
        if self._ready is not None:
            self._ready.set()

    def claim(self, worker_id: str, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        delay = _POLL_MIN_S
        while True:
            if self._ready is not None:
                self._ready.clear()  # cleared before looking: an enqueue after this sets it again
            job_id = self._try_claim(worker_id)
            remaining = deadline - time.monotonic()
            if job_id is not None or remaining <= 0:
                return job_id
            if self._ready is not None:
                self._ready.wait(remaining)
            else:
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, _POLL_MAX_S)

    def _try_claim(self, worker_id: str) -> int | None:
        oldest = (
            select(QueueRow.job_id)
            .where(QueueRow.claimed_by.is_(None))
            .order_by(QueueRow.job_id)
            .limit(1)
            .scalar_subquery()
        )
        with Session(self._engine) as s, s.begin():
            return s.execute(
                update(QueueRow)
                .where(QueueRow.job_id == oldest, QueueRow.claimed_by.is_(None))
                .values(claimed_by=worker_id, claimed_at=utcnow())
                .returning(QueueRow.job_id)
            ).scalar_one_or_none()

    def ack(self, job_id: int) -> None:
        with Session(self._engine) as s, s.begin():
            s.execute(delete(QueueRow).where(QueueRow.job_id == job_id))

    def release(self, job_id: int) -> None:
        with Session(self._engine) as s, s.begin():
            s.execute(
                update(QueueRow).where(QueueRow.job_id == job_id).values(claimed_by=None, claimed_at=None)
            )

    def cancel(self, job_id: int) -> bool:
        with Session(self._engine) as s, s.begin():
            result = s.execute(
                delete(QueueRow).where(QueueRow.job_id == job_id, QueueRow.claimed_by.is_(None))
            )
            return result.rowcount == 1

    def claimed_by(self, worker_id: str) -> list[int]:
        with Session(self._engine) as s:
            return list(s.scalars(select(QueueRow.job_id).where(QueueRow.claimed_by == worker_id)))

    def claimed_by_any(self) -> list[int]:
        with Session(self._engine) as s:
            return list(s.scalars(select(QueueRow.job_id).where(QueueRow.claimed_by.is_not(None))))

    def pending(self) -> list[int]:
        with Session(self._engine) as s:
            return list(s.scalars(select(QueueRow.job_id).order_by(QueueRow.job_id)))
