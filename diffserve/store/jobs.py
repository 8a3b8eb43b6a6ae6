"""The job store: the single source of truth for status, timings, outputs and errors."""

from __future__ import annotations

import secrets
from typing import Any, Iterable

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from diffserve.core.job import Job, JobStatus
from diffserve.core.request import GenerationRequest
from diffserve.store.db import JobRow, ProgressRow, utcnow
from diffserve.store.notify import notify_done

_UNFINISHED = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


class JobStore:
    def __init__(self, db: Engine) -> None:
        self._db = db

    def create(
        self,
        *,
        key_id: str,
        dialect: str,
        request: GenerationRequest,
        output_token: str,
        dialect_params: dict[str, Any] | None = None,
    ) -> Job:
        row = JobRow(
            key_id=key_id,
            dialect=dialect,
            status=JobStatus.QUEUED.value,
            request=request.model_dump(mode="json"),
            dialect_params=dialect_params or {},
            output_token=output_token,
            outputs=[],
            nsfw=[],
            attempts=0,
            webhook_status="pending" if request.webhook else "",  # store/deliveries.py takes it from here
            created_at=utcnow(),
        )
        with Session(self._db) as s, s.begin():
            s.add(row)
            s.flush()
            return _to_job(row)

    def get(self, job_id: int) -> Job | None:
        with Session(self._db) as s:
            row = s.get(JobRow, job_id)
            return _to_job(row) if row else None

    def start(self, job_id: int, worker_id: str) -> Job | None:
        """queued -> running, counting the attempt. None if the job is no longer queued."""
        with Session(self._db) as s, s.begin():
            row = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == JobStatus.QUEUED.value)
                .values(
                    status=JobStatus.RUNNING.value,
                    worker_id=worker_id,
                    started_at=utcnow(),
                    attempts=JobRow.attempts + 1,
                )
                .returning(JobRow)
            ).scalar_one_or_none()
            return _to_job(row) if row else None

    def succeed(self, job_id: int, outputs: list[str], nsfw: list[bool], run: dict | None = None) -> None:
        """run: how the job ran (device, dtype), merged into its dialect params so `meta` can show it."""
        self._finish(job_id, JobStatus.SUCCEEDED, outputs=outputs, nsfw=nsfw, run=run)

    def fail(self, job_id: int, error: str) -> None:
        self._finish(job_id, JobStatus.FAILED, error=error)

    def cancel(self, job_id: int, reason: str, *, running: bool = False) -> bool:
        """queued -> cancelled (running=True: also a running job, which its worker stopped)."""
        only_if = _UNFINISHED if running else (JobStatus.QUEUED.value,)
        return self._finish(job_id, JobStatus.CANCELLED, error=reason, only_if=only_if)

    def list_for_key(self, key_id: str, *, limit: int = 20, before: int | None = None) -> list[Job]:
        """A key's jobs, newest first; `before`: only ids below it (the next page)."""
        q = select(JobRow).where(JobRow.key_id == key_id)
        if before is not None:
            q = q.where(JobRow.id < before)
        with Session(self._db) as s:
            return [_to_job(row) for row in s.scalars(q.order_by(JobRow.id.desc()).limit(limit))]

    def requeue(self, job_id: int, max_attempts: int, reason: str) -> bool:
        """A running job whose worker died: queue it again, or fail it once it used its attempts.

        Returns True when the job should go back on the queue.
        """
        with Session(self._db) as s, s.begin():
            row = s.get(JobRow, job_id, with_for_update=True)
            if row is None or JobStatus(row.status).is_terminal():
                return False
            if row.attempts >= max_attempts:
                row.status = JobStatus.FAILED.value
                row.error = f"{reason} ({row.attempts} attempts)"
                row.finished_at = utcnow()
                notify_done(s, job_id)
                return False
            row.status = JobStatus.QUEUED.value
            row.worker_id = None
            row.started_at = None
            return True

    def marks(self, job_ids: Iterable[int]) -> dict[int, tuple]:
        """A mark per job that changes whenever anything a follower shows changes: status, attempt, progress
        (step, and its write time: a new preview). One query for all of them (service/watch.py)."""
        ids = list(job_ids)
        if not ids:
            return {}
        with Session(self._db) as s:
            rows = s.execute(
                select(JobRow.id, JobRow.status, JobRow.attempts, ProgressRow.step, ProgressRow.updated_at)
                .outerjoin(ProgressRow, ProgressRow.job_id == JobRow.id).where(JobRow.id.in_(ids))
            ).all()
        return {row[0]: tuple(row[1:]) for row in rows}

    def unfinished_ids(self) -> list[int]:
        with Session(self._db) as s:
            return list(
                s.scalars(select(JobRow.id).where(JobRow.status.in_(_UNFINISHED)).order_by(JobRow.id))
            )

    def count_unfinished(self, key_id: str | None = None) -> int:
        q = select(func.count()).select_from(JobRow).where(JobRow.status.in_(_UNFINISHED))
        if key_id is not None:
            q = q.where(JobRow.key_id == key_id)
        with Session(self._db) as s:
            return int(s.scalar(q) or 0)

    def recent_durations(self, limit: int = 20) -> list[float]:
        """Run times (s) of the latest succeeded jobs, for ETA estimates."""
        with Session(self._db) as s:
            rows = s.execute(
                select(JobRow.started_at, JobRow.finished_at)
                .where(JobRow.status == JobStatus.SUCCEEDED.value)
                .order_by(JobRow.id.desc())
                .limit(limit)
            ).all()
        return [(f - st).total_seconds() for st, f in rows if st and f]

    def position(self, job_id: int) -> int:
        """How many unfinished jobs are ahead of this one."""
        with Session(self._db) as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(JobRow)
                    .where(JobRow.status.in_(_UNFINISHED), JobRow.id < job_id)
                )
                or 0
            )

    def _finish(
        self,
        job_id: int,
        status: JobStatus,
        *,
        outputs: Iterable[str] = (),
        nsfw: Iterable[bool] = (),
        error: str | None = None,
        only_if: tuple[str, ...] = _UNFINISHED,
        run: dict | None = None,
    ) -> bool:
        with Session(self._db) as s, s.begin():
            values: dict = dict(status=status.value, outputs=list(outputs), nsfw=list(nsfw), error=error,
                                finished_at=utcnow())
            if run:
                params = s.scalar(select(JobRow.dialect_params).where(JobRow.id == job_id))
                values["dialect_params"] = {**(params or {}), "run": run}
            result = s.execute(
                update(JobRow).where(JobRow.id == job_id, JobRow.status.in_(only_if)).values(**values)
            )
            if result.rowcount == 1:
                notify_done(s, job_id)  # PostgreSQL: wakes requests waiting on any API process
            return result.rowcount == 1


def new_output_token() -> str:
    """Unguessable: 128 random bits, URL-safe."""
    return secrets.token_urlsafe(16)


def _to_job(row: JobRow) -> Job:
    return Job(
        id=row.id,
        key_id=row.key_id,
        dialect=row.dialect,
        status=JobStatus(row.status),
        request=GenerationRequest.model_validate(row.request),
        output_token=row.output_token,
        dialect_params=dict(row.dialect_params or {}),
        outputs=list(row.outputs or []),
        nsfw=list(row.nsfw or []),
        error=row.error,
        attempts=row.attempts,
        worker_id=row.worker_id,
        webhook_status=row.webhook_status or "",
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )
