"""Runs the local worker processes beside the API: starts them, restarts the ones that die,
and gives their jobs back to the queue so no job is lost.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from dataclasses import dataclass, field

from diffserve.config import Settings
from diffserve.core.threads import Background, periodic
from diffserve.jobqueue.base import JobQueue
from diffserve.jobqueue.signals import LocalSignals, WorkerPipes
from diffserve.store.jobs import JobStore
from diffserve.store.workers import WorkerStore
from diffserve.workers.placement import local_worker_id, worker_count
from diffserve.workers.recovery import recover_jobs, recover_stale, release
from diffserve.workers.worker import worker_main

log = logging.getLogger(__name__)

NICE = 10  # cpu_priority "low"


def lower_priority(priority: str) -> None:
    """This process's CPU scheduling per `worker.cpu_priority`: nice 10 (low) or SCHED_IDLE (idle), for every thread
    it has now; the threads it starts later (torch's) inherit it."""
    if priority == "normal":
        return
    for task in os.listdir("/proc/self/task"):
        tid = int(task)
        if priority == "idle":
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.setpriority(os.PRIO_PROCESS, tid, max(NICE, os.getpriority(os.PRIO_PROCESS, tid)))


def run_worker(settings: Settings, worker_id: str, pipes: WorkerPipes) -> None:
    """A spawned worker: its CPU priority lowered before torch starts, then worker_main."""
    lower_priority(settings.worker.cpu_priority)
    worker_main(settings, worker_id, pipes)


@dataclass
class Supervisor:
    settings: Settings
    jobs: JobStore
    queue: JobQueue
    workers: WorkerStore
    signals: LocalSignals
    _procs: dict[str, mp.process.BaseProcess] = field(default_factory=dict)
    _watcher: Background | None = None
    _ticks: int = 0

    def start(self) -> None:
        recover_jobs(self.jobs, self.queue, self.settings.worker.max_attempts, self.workers, self.settings.worker.stale_s)
        for i in range(worker_count(self.settings)):
            self._spawn(local_worker_id(self.settings, i))
        self._watcher = periodic("supervisor", self._watch, 0.5, first_now=False)
        self._watcher.start()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: each worker finishes its current job and exits; past `timeout` it is killed (its
        job is then run again at the next start)."""
        if self._watcher:
            self._watcher.halt.set()  # no restarts from here on; the round in progress ends on its own
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
        proc = ctx.Process(target=run_worker, args=(self.settings, worker_id, pipes), name=worker_id, daemon=True)
        proc.start()
        pipes.ready.close()  # the worker has its own copies now; ours would hide its death from the pipes
        pipes.done.close()
        self._procs[worker_id] = proc
        log.info("started %s (pid %s)", worker_id, proc.pid)

    def _watch(self) -> None:
        """Every 0.5 s: restart workers that died; every 2 s the stale-worker check, every
        resend_interval_s the broker check."""
        self._ticks += 1
        ticks = self._ticks
        resend_ticks = max(1, round(self.settings.queue.resend_interval_s / 0.5))
        if ticks % 4 == 0:  # every 2 s: standalone workers that stopped beating
            try:
                recover_stale(self.jobs, self.queue, self.workers, self.settings.worker.max_attempts,
                              self.settings.worker.stale_s)
            except Exception:  # noqa: BLE001 - a store hiccup: the next round retries
                log.warning("stale-worker check failed", exc_info=True)
        if ticks % resend_ticks == 0:  # the fleet's broker lost messages (restarted without its data...)
            try:
                self.queue.resend_missing()
            except Exception:  # noqa: BLE001 - the broker or the store is away: the next round retries
                log.warning("re-sending missing job messages failed", exc_info=True)
        for worker_id, proc in list(self._procs.items()):
            if proc.is_alive() or self._watcher.halt.is_set():
                continue
            log.warning("%s exited (code %s); restarting it", worker_id, proc.exitcode)
            for job_id in self.queue.claimed_by(worker_id):
                release(self.jobs, self.queue, job_id, self.settings.worker.max_attempts, holder=worker_id)
            self.workers.remove(worker_id)
            self._spawn(worker_id)
