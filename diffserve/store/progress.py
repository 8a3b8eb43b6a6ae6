"""Live progress of running jobs, and cancel requests, in the shared database (any process reads them).

The worker writes a job's step (throttled: engine progress reports come every step, the row every
`interval`), the measured time per step and the latest preview; the API reads them for status, ETA and
the events stream. A client's cancel of a running job sets `cancel_requested`; the worker reads it
at its next write and stops the job between two steps. A "finish now" (`finish_requested`, A1111's /interrupt)
is read the same way: the worker ends the denoising there and the job succeeds with the image so far.
A worker's write names its attempt: once the job was handed on, the write changes nothing and raises ClaimLost (store/ledger.py). When a job ends, the ledger
drops its preview in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session

from diffserve.store.db import JobRow, ProgressRow, autocommit, utcnow
from diffserve.store.ledger import RUNNING, ClaimLost


CANCEL, FINISH = "cancel", "finish"  # what a client asked of a running job (`report` answers it)
Asked = Literal["cancel", "finish"] | None


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    step_s: float | None
    has_preview: bool


class ProgressStore:
    def __init__(self, db: Engine) -> None:
        self._db = db
        self._read = autocommit(db)  # reads are single statements: no transaction around them

    def report(self, job_id: int, step: int, total: int, step_s: float | None,
               preview: bytes | None = None, *, attempt: int | None = None) -> Asked:
        """Record progress; what a client asked meanwhile: CANCEL (it wins), FINISH (end now, keep the image) or
        None. attempt: the worker's attempt (fenced: raises store.ledger.ClaimLost, writing nothing, once the
        job was handed on or ended)."""
        now = utcnow()
        values = {"step": step, "total": total, "step_s": step_s, "updated_at": now}
        if preview is not None:
            values["preview"] = preview
        fence = [select(JobRow.id).where(JobRow.id == job_id, JobRow.status == RUNNING,
                                         JobRow.attempts == attempt).exists()] if attempt is not None else []
        with self._db.begin() as c:  # the row's update and the fence, one statement in the usual case
            asked = c.execute(update(ProgressRow).where(ProgressRow.job_id == job_id, *fence).values(**values)
                              .returning(ProgressRow.cancel_requested, ProgressRow.finish_requested)).first()
            if asked is None:  # no row yet, or the fence refused: tell them apart
                if fence and c.scalar(select(fence[0])) is not True:
                    raise ClaimLost(job_id, attempt)
                c.execute(insert(ProgressRow).values(job_id=job_id, cancel_requested=False, finish_requested=False,
                                                     **values))
                return None
        cancel, finish = asked
        return CANCEL if cancel else FINISH if finish else None

    def get(self, job_id: int) -> Progress | None:
        with self._read.connect() as s:
            row = s.execute(select(ProgressRow.step, ProgressRow.total, ProgressRow.step_s,
                                   ProgressRow.preview.is_not(None)).where(ProgressRow.job_id == job_id)).first()
            return Progress(row[0], row[1], row[2], bool(row[3])) if row else None

    def preview(self, job_id: int) -> bytes | None:
        with self._read.connect() as s:
            return s.scalar(select(ProgressRow.preview).where(ProgressRow.job_id == job_id))

    def request_cancel(self, job_id: int) -> None:
        self._ask(job_id, cancel_requested=True)

    def request_finish(self, job_id: int) -> None:
        """Ask the worker to end the denoising at its next step and keep the image so far (the job succeeds)."""
        self._ask(job_id, finish_requested=True)

    def _ask(self, job_id: int, **flag: bool) -> None:
        with Session(self._db) as s, s.begin():
            updated = s.execute(update(ProgressRow).where(ProgressRow.job_id == job_id).values(**flag)).rowcount
            if not updated:
                s.add(ProgressRow(**{"job_id": job_id, "step": 0, "total": 0, "cancel_requested": False,
                                     "finish_requested": False, "updated_at": utcnow(), **flag}))

    def cancel_requested(self, job_id: int) -> bool:
        with self._read.connect() as s:
            return bool(s.scalar(select(ProgressRow.cancel_requested).where(ProgressRow.job_id == job_id)))
