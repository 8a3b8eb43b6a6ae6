"""Wake-ups between the API process and local workers, so neither has to poll to react quickly.

Each worker gets two one-way pipes from the supervisor: `ready` (API -> worker: a job was enqueued)
and `done` (worker -> API: a job finished). Writes are non-blocking and lossy by design: a full pipe
already holds a wake-up, and a dead reader just means nobody is waiting. Nothing here takes a lock
another process could die holding (multiprocessing.Event does: its set() waits forever for a waiter
that was SIGKILLed). They only speed things up: every waiter still re-checks the store on a timeout.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from diffserve.core.threads import Background

_POKE = b"!"


def poke(conn: Connection) -> None:
    """Send a wake-up without ever blocking (5 bytes: one atomic pipe write)."""
    try:
        conn.send_bytes(_POKE)
    except (BlockingIOError, BrokenPipeError, OSError):
        pass  # already poked, or the other side is gone


def drain(conn: Connection) -> bool:
    """Read every pending wake-up; False if the other side has closed its end."""
    try:
        while conn.poll(0):
            conn.recv_bytes()
    except (EOFError, OSError):
        return False
    return True


@dataclass
class WorkerPipes:
    """The worker's ends: it waits on `ready` and pokes `done`."""

    ready: Connection
    done: Connection

    def wait_ready(self, timeout: float) -> None:
        try:
            self.ready.poll(timeout)
        except (EOFError, OSError):
            pass

    def clear_ready(self) -> None:
        drain(self.ready)

    def job_done(self) -> None:
        poke(self.done)


class LocalSignals:
    """The API/supervisor side: pokes every worker's `ready`, waits on every worker's `done`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: dict[str, Connection] = {}  # our writing ends
        self._done: dict[str, Connection] = {}  # our reading ends

    def pipes_for(self, worker_id: str) -> WorkerPipes:
        """New pipes for a (re)spawned worker; the previous ones of that worker are closed."""
        ready_r, ready_w = mp.Pipe(duplex=False)
        done_r, done_w = mp.Pipe(duplex=False)
        os.set_blocking(ready_w.fileno(), False)
        os.set_blocking(done_w.fileno(), False)  # the worker's copy shares this flag
        with self._lock:
            for old in (self._ready.pop(worker_id, None), self._done.pop(worker_id, None)):
                if old is not None:
                    old.close()
            self._ready[worker_id], self._done[worker_id] = ready_w, done_r
        return WorkerPipes(ready_r, done_w)

    def job_ready(self) -> None:
        with self._lock:
            writers = list(self._ready.values())
        for w in writers:
            poke(w)

    def wait_done(self, timeout: float) -> bool:
        """True when some worker finished a job within `timeout`."""
        with self._lock:
            readers = list(self._done.values())
        if not readers:
            time.sleep(timeout)
            return False
        try:
            ready = wait(readers, timeout)
        except OSError:  # a reader was closed by a respawn meanwhile
            return False
        for r in ready:
            drain(r)
        return bool(ready)

    def close(self) -> None:
        with self._lock:
            for conn in (*self._ready.values(), *self._done.values()):
                conn.close()
            self._ready.clear()
            self._done.clear()


class CompletionBroadcaster:
    """One thread turns workers' `done` pokes into an asyncio wake-up for every request waiting here;
    `job_done_elsewhere` does the same for a job another process reports (store/notify.py). A job that
    finishes while nobody is in `wait` wakes nothing (the event loop is not disturbed per finished job)."""

    def __init__(self, signals: LocalSignals | None) -> None:
        self._signals = signals
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._waiting = 0  # calls in `wait` now (changed on the event loop, read by the poking threads)
        self._thread = Background("job-done", self._run, join_s=2)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop, self._changed = loop, asyncio.Event()
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()

    async def wait(self, timeout: float) -> None:
        """Return when any job finished, or after `timeout`."""
        if self._changed is None:
            await asyncio.sleep(timeout)
            return
        self._waiting += 1
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self._waiting -= 1

    def job_done_elsewhere(self, _job_id: int) -> None:
        """Thread-safe: a job finished on a worker this process did not spawn."""
        self._poke()

    def _poke(self) -> None:
        # a wake-up set while nobody waits was lost before as well (`wait` waits on the next event)
        if self._waiting and self._loop and not self._thread.halt.is_set():
            self._loop.call_soon_threadsafe(self._notify)

    def _run(self, halt: threading.Event) -> None:
        while not halt.is_set():
            if self._signals is None:
                halt.wait(0.5)
            elif self._signals.wait_done(0.5):
                self._poke()

    def _notify(self) -> None:
        old, self._changed = self._changed, asyncio.Event()
        assert old is not None
        old.set()
