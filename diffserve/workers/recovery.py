"""Giving jobs back when their worker is gone, so no job is lost: at start-up, when a local worker process
exits, when a standalone worker stops beating, and when a broker redelivers a dead worker's message.

Each give-back is one ledger transaction (store/ledger.py `requeue`): the job queued again and its claim
released -- only while the gone worker still holds that claim, so a job another worker took meanwhile is
never touched -- or failed once it used its attempts."""

from __future__ import annotations

import logging
from collections.abc import Callable

from diffserve.jobqueue.base import JobQueue
from diffserve.store.jobs import JobStore
from diffserve.store.workers import WorkerStore

log = logging.getLogger(__name__)

CRASH_REASON = "Worker stopped while generating this image"


def recover_jobs(jobs: JobStore, queue: JobQueue, max_attempts: int, workers: WorkerStore | None = None,
                 stale_s: float = 15.0) -> int:
    """At start-up no local worker is alive: every job they claimed goes back to the queue (or fails after
    too many attempts) -- and so does every job of a standalone worker (`diffserve worker`) whose heartbeat is
    stale; every unfinished job that lost its queue entry is queued again."""
    live = {w.worker_id for w in workers.live(stale_s)} if workers is not None else set()
    release_claims(jobs, queue, max_attempts, lambda worker_id: is_local(worker_id) or worker_id not in live)
    waiting = set(queue.pending())
    missing = [j for j in jobs.unfinished_ids() if j not in waiting]
    ledger = jobs.ledger.using(queue)
    for job_id in missing:  # queued again with a new queue row, in the same transaction
        ledger.requeue(job_id, max_attempts, CRASH_REASON)
    return len(missing)


def is_local(worker_id: str) -> bool:
    """The supervisor's own workers are worker-<i>; standalone ones are <host>-<pid>."""
    prefix, _, number = worker_id.rpartition("-")
    return prefix == "worker" and number.isdigit()


def recover_stale(jobs: JobStore, queue: JobQueue, workers: WorkerStore, max_attempts: int,
                  stale_s: float) -> list[int]:
    """Jobs claimed by a standalone worker that stopped beating (killed, machine gone): run them elsewhere."""
    live = {w.worker_id for w in workers.live(stale_s)}
    return release_claims(jobs, queue, max_attempts,
                          lambda worker_id: not is_local(worker_id) and worker_id not in live)


def release_claims(jobs: JobStore, queue: JobQueue, max_attempts: int, gone: Callable[[str], bool]) -> list[int]:
    """Give back (or fail) every claimed job whose worker `gone(worker_id)` says is not coming back."""
    released = []
    for job_id, worker_id in queue.claims():
        if gone(worker_id):
            log.warning("worker %s is gone; job %s goes back to the queue", worker_id, job_id)
            release(jobs, queue, job_id, max_attempts, holder=worker_id)
            released.append(job_id)
    return released


def release(jobs: JobStore, queue: JobQueue, job_id: int, max_attempts: int, holder: str | None = None) -> bool:
    """The job of a gone worker (`holder`: only while it still holds the claim) back to the queue, or failed
    after max_attempts. True when it is queued again."""
    return jobs.ledger.using(queue).requeue(job_id, max_attempts, CRASH_REASON, holder=holder)
