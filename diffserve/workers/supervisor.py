"""Runs the local worker processes beside the API: starts them, restarts the ones that die,
and gives their jobs back to the queue so no job is lost.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from diffserve.config import Settings
from diffserve.queue.local import LocalQueue
from diffserve.queue.signals import LocalSignals
from diffserve.store.jobs import JobStore
from diffserve.store.workers import WorkerStore
from diffserve.workers.placement import worker_count
from diffserve.workers.worker import worker_main

log = logging.getLogger(__name__)

CRASH_REASON = "Worker stopped while generating this image"


def recover_jobs(jobs: JobStore, queue: LocalQueue, max_attempts: int, workers: WorkerStore | None = None,
                 stale_s: float = 15.0) -> int:
    """At start-up no local worker is alive: every job they claimed goes back to the queue (or fails after
    too many attempts) -- and so does every job of a standalone worker (`diffserve worker`) whose heartbeat is
    stale; every unfinished job that lost its queue entry is queued again."""
    live = {w.worker_id for w in workers.live(stale_s)} if workers is not None else set()
    release_claims(jobs, queue, max_attempts, lambda worker_id: is_local(worker_id) or worker_id not in live)
    waiting = set(queue.pending())
    missing = [j for j in jobs.unfinished_ids() if j not in waiting]
    for job_id in missing:
        if jobs.requeue(job_id, max_attempts, CRASH_REASON):
            queue.enqueue(job_id)
    return len(missing)


def is_local(worker_id: str) -> bool:
    """The supervisor's own workers are worker-<i>; standalone ones are <host>-<pid>."""
    prefix, _, number = worker_id.rpartition("-")
    return prefix == "worker" and number.isdigit()


def recover_stale(jobs: JobStore, queue: LocalQueue, workers: WorkerStore, max_attempts: int,
                  stale_s: float) -> list[int]:
    """Jobs claimed by a standalone worker that stopped beating (killed, machine gone): run them elsewhere."""
    live = {w.worker_id for w in workers.live(stale_s)}
    return release_claims(jobs, queue, max_attempts,
                          lambda worker_id: not is_local(worker_id) and worker_id not in live)


def release_claims(jobs: JobStore, queue: LocalQueue, max_attempts: int, gone: Callable[[str], bool]) -> list[int]:
    """Give back (or fail) every claimed job whose worker `gone(worker_id)` says is not coming back."""
    released = []
    for job_id, worker_id in queue.claims():
        if gone(worker_id):
            log.warning("worker %s is gone; job %s goes back to the queue", worker_id, job_id)
            release(jobs, queue, job_id, max_attempts)
            released.append(job_id)
    return released


def release(jobs: JobStore, queue: LocalQueue, job_id: int, max_attempts: int) -> None:
    if jobs.requeue(job_id, max_attempts, CRASH_REASON):
        queue.release(job_id)
    else:
        queue.ack(job_id)


@dataclass
class Supervisor:
    settings: Settings
    jobs: JobStore
    queue: LocalQueue
    workers: WorkerStore
    signals: LocalSignals
    _procs: dict[str, mp.process.BaseProcess] = field(default_factory=dict)
    _halt: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        recover_jobs(self.jobs, self.queue, self.settings.max_attempts, self.workers, self.settings.worker_stale_s)
        for i in range(worker_count(self.settings)):
            self._spawn(f"worker-{i}")
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: each worker finishes its current job and exits; past `timeout` it is killed (its
        job is then run again at the next start)."""
        self._halt.set()
        for p in self._procs.values():
            if p.is_alive():
                p.terminate()
        for p in self._procs.values():
            p.join(timeout)
            if p.is_alive():
                p.kill()
                p.join(2)
        for worker_id in self._procs:
            self.workers.remove(worker_id)
        self.signals.close()

    def pids(self) -> dict[str, int | None]:
        return {w: p.pid for w, p in self._procs.items()}

    def _spawn(self, worker_id: str) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that may hold torch threads or sockets
        pipes = self.signals.pipes_for(worker_id)
        proc = ctx.Process(target=worker_main, args=(self.settings, worker_id, pipes), name=worker_id, daemon=True)
        proc.start()
        pipes.ready.close()  # the worker has its own copies now; ours would hide its death from the pipes
        pipes.done.close()
        self._procs[worker_id] = proc
        log.info("started %s (pid %s)", worker_id, proc.pid)

    def _watch(self) -> None:
        ticks = 0
        while not self._halt.wait(0.5):
            ticks += 1
            if ticks % 4 == 0:  # every 2 s: standalone workers that stopped beating
                try:
                    recover_stale(self.jobs, self.queue, self.workers, self.settings.max_attempts,
                                  self.settings.worker_stale_s)
                except Exception:  # noqa: BLE001 - a store hiccup: the next round retries
                    log.warning("stale-worker check failed", exc_info=True)
            for worker_id, proc in list(self._procs.items()):
                if proc.is_alive() or self._halt.is_set():
                    continue
                log.warning("%s exited (code %s); restarting it", worker_id, proc.exitcode)
                for job_id in self.queue.claimed_by(worker_id):
                    release(self.jobs, self.queue, job_id, self.settings.max_attempts)
                self.workers.remove(worker_id)
                self._spawn(worker_id)
