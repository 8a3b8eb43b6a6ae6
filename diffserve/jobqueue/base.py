"""The queue interface: it carries job ids only; the job store holds everything else.

A handful of methods, like arq: enqueue, claim, ack, release, cancel. Backends: `local` (a table
in the job store's database, for one machine) and, for a fleet, Celery + Redis behind the same
methods.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from diffserve.core.batching import BatchKey


class JobQueue(Protocol):
    def enqueue(self, job_id: int) -> None:
        """Make the job available to exactly one worker."""

    def claim(self, worker_id: str, timeout: float, *, loaded: Sequence[str] = (),
              labels: Sequence[str] = ()) -> int | None:
        """Take a job id for this worker, waiting up to `timeout` seconds: the oldest one, preferring
        jobs for the models it has `loaded` and taking only jobs its `labels` allow (see local.py)."""

    def claim_batch(self, worker_id: str, key: BatchKey, rows: int, *, labels: Sequence[str] = ()) -> list[int]:
        """Without waiting, for a batch this worker runs: take waiting jobs whose core.batching.batch_key equals
        `key`, oldest first, while they fit in `rows` (a job counts its samples; a later job never overtakes
        one that does not fit yet). Nothing while a job this worker may take that cannot join has waited
        past the affinity wait: the batch drains and the worker's next `claim` takes that job, so a batch
        never starves another model's jobs."""

    def ack(self, job_id: int) -> None:
        """The job reached a terminal state: forget it."""

    def release(self, job_id: int) -> None:
        """Put a claimed job back (its worker died or gave it up)."""

    def cancel(self, job_id: int) -> bool:
        """Drop a job that no worker has claimed yet. True if it was dropped."""

    def claimed_by(self, worker_id: str) -> list[int]:
        """Job ids a worker holds (to release them when it dies)."""

    def pending(self) -> list[int]:
        """Job ids waiting or claimed, oldest first."""
