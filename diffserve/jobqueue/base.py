"""The queue interface every caller uses: it carries job ids only; the job store holds everything else.

Two backends implement it: `local.LocalQueue` (a table in the store's database, for one machine) and
`celery.CeleryQueue` (the same table for the claims, Celery messages on Redis for the wake-ups of a fleet).
The job's own state changes are the ledger's (store/ledger.py): it writes and deletes queue rows inside its
transactions and tells the backend afterwards (`enqueued`, `forgotten`).
"""

from __future__ import annotations

from typing import Protocol, Sequence

from diffserve.core.batching import BatchKey
from diffserve.store.ledger import Started


class JobQueue(Protocol):
    # -- the API side ---------------------------------------------------------------------------------------
    def enqueue(self, job_id: int) -> None:
        """Queue a job already in the store (the ledger's `create` does this itself, in its transaction)."""

    def cancel(self, job_id: int) -> bool:
        """Drop a job that no worker has claimed yet. True if it was dropped."""

    def resend_missing(self) -> int:
        """Re-send the wake-ups a broker lost (Celery); how many were sent. The local table loses none: 0."""

    # -- what the ledger tells the backend once its transaction committed ----------------------------------
    def enqueued(self, job_id: int, label: str | None) -> None:
        """A queue row was written or released: wake a worker that may take it."""

    def forgotten(self, job_id: int) -> None:
        """This process's hold on the job ended (finished, cancelled or handed on): e.g. ack its message."""

    # -- the worker side ------------------------------------------------------------------------------------
    def claim(self, worker_id: str, timeout: float, *, loaded: Sequence[str] = (),
              labels: Sequence[str] = (), start: bool = False) -> int | None:
        """Take a job id for this worker, waiting up to `timeout` seconds: the oldest one, preferring
        jobs for the models it has `loaded` and taking only jobs its `labels` allow (see local.py). start: the
        claim may start the job in the same statement (PostgreSQL), answered by `started`."""

    def started(self, job_id: int) -> Started | None:
        """The start of a job this worker's claim(start=True) took, as the store answered it (the ledger's
        Started), once; None: not started by its claim -- the worker starts it (Ledger.begin)."""

    def claim_batch(self, worker_id: str, key: BatchKey, rows: int, *, labels: Sequence[str] = ()) -> list[int]:
        """Without waiting, for a batch this worker runs: take waiting jobs whose core.batching.batch_key equals
        `key`, oldest first, while they fit in `rows` (a job counts its samples; a later job never overtakes
        one that does not fit yet). Nothing while a job this worker may take that cannot join has waited
        past the affinity wait: the batch drains and the worker's next `claim` takes that job, so a batch
        never starves another model's jobs."""

    def ack(self, job_id: int, attempt: int | None = None) -> bool:
        """Drop the job's queue row (fenced: only while `attempt` owns the job). True if a row was dropped."""

    def release(self, job_id: int, attempt: int | None = None) -> bool:
        """Put a claimed job back for any worker (fenced like `ack`). True if a row was released."""

    # -- what recovery, management and metrics read ---------------------------------------------------------
    def claimed_by(self, worker_id: str) -> list[int]:
        """Job ids a worker holds (to release them when it dies)."""

    def claims(self) -> list[tuple[int, str]]:
        """(job id, worker id) of every claimed job."""

    def claimed_by_any(self) -> list[int]:
        """Job ids some worker holds."""

    def depth(self) -> list[tuple[str | None, str | None, str, int]]:
        """(model id, label, "waiting" | "running", job count) for every queued group (metrics)."""

    def pending(self) -> list[int]:
        """Job ids waiting or claimed, oldest first."""
