"""Which workers are alive and what they are doing (heartbeats in the shared database)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Mapping, NamedTuple

from sqlalchemy import DateTime, Engine, Integer, Select, String, Update, bindparam, delete, exists, func, select
from sqlalchemy import update
from sqlalchemy.orm import Session

from diffserve.core.job import JobStatus
from diffserve.store.db import ControlEventRow, JobRow, WorkerDeviceRow, WorkerRow, autocommit, utcnow

RUNNING = JobStatus.RUNNING.value


@dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    pid: int
    state: str
    current_job: int | None
    models: list[str]
    heartbeat_at: datetime
    labels: tuple[str, ...] = ()
    started_at: datetime | None = None
    device: str | None = None
    dtype: str | None = None
    cache_budget_bytes: int | None = None

    @property
    def machine(self) -> str | None:
        """The host of a standalone worker (`diffserve worker` is <host>-<pid>); None for an API's own."""
        suffix = f"-{self.pid}"
        return self.worker_id[:-len(suffix)] if self.worker_id.endswith(suffix) else None


class Beat(NamedTuple):
    """What a heartbeat answers: the control log's latest order id, and the held jobs still this worker's."""

    orders_head: int
    owned: frozenset[int]


@functools.lru_cache(maxsize=None)
def _beat(n_held: int, write: bool = True) -> Select | Update:
    """UPDATE workers SET heartbeat_at RETURNING (the latest order id), (job 0 still owned by its attempt), ...
    -- built once per number of held jobs; write=False: the same answers as a SELECT."""
    answers = [select(func.max(ControlEventRow.id)).scalar_subquery()]
    for i in range(n_held):
        answers.append(exists().where(JobRow.id == bindparam(f"p_job{i}", type_=Integer), JobRow.status == RUNNING,
                                      JobRow.attempts == bindparam(f"p_attempt{i}", type_=Integer)))
    if not write:
        return select(*answers)
    return (update(WorkerRow).where(WorkerRow.worker_id == bindparam("p_worker", type_=String))
            .values(heartbeat_at=bindparam("p_now", type_=DateTime)).returning(*answers))


class WorkerStore:
    def __init__(self, db: Engine) -> None:
        self._db = db
        self._now = autocommit(db)  # single statements (a heartbeat, a read): no transaction around them

    def register(self, worker_id: str, pid: int, labels: tuple[str, ...] = ()) -> None:
        with Session(self._db) as s, s.begin():
            s.merge(WorkerRow(worker_id=worker_id, pid=pid, state="starting", models=[], current_job=None,
                              labels=list(labels), started_at=utcnow(), heartbeat_at=utcnow()))

    def set_device(self, worker_id: str, device: str, dtype: str, cache_budget_bytes: int | None) -> None:
        with Session(self._db) as s, s.begin():
            s.merge(WorkerDeviceRow(worker_id=worker_id, device=device, dtype=dtype,
                                    cache_budget_bytes=cache_budget_bytes))

    def update(self, worker_id: str, **values) -> None:
        with self._now.connect() as s:
            s.execute(update(WorkerRow).where(WorkerRow.worker_id == worker_id)
                      .values(heartbeat_at=utcnow(), **values))

    def beat(self, worker_id: str, held: Mapping[int, int] | None = None) -> Beat:
        """A heartbeat that answers the id of the latest order in the control log (store/control.py), so an
        idle worker reads the orders only when there is a new one, and which of the `held` jobs (job id ->
        attempt) that attempt still owns (running, same attempt: Ledger.holds's fence), so a job handed on
        meanwhile stops at its next step. One statement (a second only if the worker's row is gone)."""
        jobs = tuple((held or {}).items())
        params = {"p_worker": worker_id, "p_now": utcnow(),
                  **{f"p_job{i}": job_id for i, (job_id, _) in enumerate(jobs)},
                  **{f"p_attempt{i}": attempt for i, (_, attempt) in enumerate(jobs)}}
        with self._now.begin() as s:  # autocommit: the statement alone
            row = s.execute(_beat(len(jobs)), params).first()
            if row is None:  # no row to beat (removed meanwhile): the answers alone
                row = s.execute(_beat(len(jobs), write=False), params).one()
        return Beat(int(row[0] or 0), frozenset(job_id for (job_id, _), owned in zip(jobs, row[1:]) if owned))

    def remove(self, worker_id: str) -> None:
        with Session(self._db) as s, s.begin():
            s.execute(delete(WorkerRow).where(WorkerRow.worker_id == worker_id))
            s.execute(delete(WorkerDeviceRow).where(WorkerDeviceRow.worker_id == worker_id))

    def live(self, max_age_s: float = 15.0) -> list[WorkerInfo]:
        cutoff = utcnow() - timedelta(seconds=max_age_s)
        with self._now.connect() as c:
            rows = c.execute(select(WorkerRow.worker_id, WorkerRow.pid, WorkerRow.state, WorkerRow.current_job,
                                    WorkerRow.models, WorkerRow.heartbeat_at, WorkerRow.labels, WorkerRow.started_at,
                                    WorkerDeviceRow.device, WorkerDeviceRow.dtype, WorkerDeviceRow.cache_budget_bytes)
                             .outerjoin(WorkerDeviceRow, WorkerDeviceRow.worker_id == WorkerRow.worker_id)
                             .where(WorkerRow.heartbeat_at >= cutoff).order_by(WorkerRow.worker_id)).all()
        return [WorkerInfo(r.worker_id, r.pid, r.state, r.current_job, list(r.models or []), r.heartbeat_at,
                           tuple(r.labels or ()), r.started_at, r.device, r.dtype, r.cache_budget_bytes)
                for r in rows]
