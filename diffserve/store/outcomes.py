"""What the ledger (store/ledger.py) answers a worker: how an attempt ended (`Outcome`), what a start tells the
worker (`Started`), and `ClaimLost`, raised once an attempt no longer owns its job. Plain values, no
database: the ledger, the queue and the runner pass them around."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffserve.core.job import Job, JobStatus


class ClaimLost(Exception):
    """This attempt no longer owns the job: it was handed on (requeued, maybe started again elsewhere), or it
    ended meanwhile. The worker drops the job silently: it writes nothing more for it."""

    def __init__(self, job_id: int, attempt: int | None) -> None:
        super().__init__(f"job {job_id}: attempt {attempt} lost its claim")
        self.job_id, self.attempt = job_id, attempt


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


@dataclass(frozen=True)
class Started:
    """What a worker learns when its start lands, in the same answer: the job (its `attempts` is this run's
    attempt), whether a client asked to cancel it meanwhile (so no read of its own before the run), and the
    id of the latest order in the control log (store/control.py: newer orders apply before the job runs), and the
    saved storage settings' version (store/storage_config.py; None: not read), so the worker's storage needs no
    poll of its own while jobs come (storage/configured.py `noted`)."""

    job: Job
    cancel_requested: bool = False
    orders_head: int = 0
    storage_version: int | None = None
