"""The queue backend Settings ask for: `local` (one machine) or `celery` (a fleet; jobqueue/celery.py)."""

from __future__ import annotations

from typing import Callable

from sqlalchemy import Engine

from diffserve.config import Settings
from diffserve.jobqueue.base import JobQueue
from diffserve.jobqueue.local import LocalQueue
from diffserve.jobqueue.signals import WorkerPipes


def build_queue(settings: Settings, db: Engine, *, notify: Callable[[], None] | None = None,
                wake: WorkerPipes | None = None,
                on_orphan: Callable[[JobQueue, int], None] | None = None) -> JobQueue:
    """notify / wake: the local pipes (API side / worker side); on_orphan: how a worker gives back a job whose
    claimant died, when the broker delivers its message again (the Celery backend)."""
    if settings.queue.backend == "celery":
        from diffserve.jobqueue.celery import CeleryQueue  # Celery is imported only when the fleet uses it

        return CeleryQueue(db, settings.queue, affinity_wait_s=settings.queue.affinity_wait_s,
                           live_worker_s=settings.worker.stale_s, on_orphan=on_orphan)
    return LocalQueue(db, notify=notify, wake=wake, affinity_wait_s=settings.queue.affinity_wait_s,
                      live_worker_s=settings.worker.stale_s)
