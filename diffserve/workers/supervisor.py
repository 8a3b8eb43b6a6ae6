"""Runs the local worker processes beside the API: starts them, restarts the ones that die,
and gives their jobs back to the queue so no job is lost.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
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


def recover_jobs(jobs: JobStore, queue: LocalQueue, max_attempts: int) -> int:
    """At start-up no local worker is alive: every claimed job goes back to the queue (or fails after
    too many attempts), and every unfinished job that lost its queue entry is queued again."""
    for job_id in queue.claimed_by_any():
        release(jobs, queue, job_id, max_attempts)
    waiting = set(queue.pending())
    missing = [j for j in jobs.unfinished_ids() if j not in waiting]
    for job_id in missing:
        if jobs.requeue(job_id, max_attempts, CRASH_REASON):
            queue.enqueue(job_id)
    return len(missing)


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
        recover_jobs(self.jobs, self.queue, self.settings.max_attempts)
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
        while not self._halt.wait(0.5):
            for worker_id, proc in list(self._procs.items()):
                if proc.is_alive() or self._halt.is_set():
                    continue
                log.warning("%s exited (code %s); restarting it", worker_id, proc.exitcode)
                for job_id in self.queue.claimed_by(worker_id):
                    release(self.jobs, self.queue, job_id, self.settings.max_attempts)
                self.workers.remove(worker_id)
                self._spawn(worker_id)
