"""Wake-ups between the API process and local workers, so neither has to poll to react quickly.

`job_ready` is set when a job is enqueued (workers wake and claim); `job_done` is set when a worker
finishes one (the API's waiting requests re-read their job). Both are cross-process Events from the
spawn context. They only speed things up: every waiter still re-checks the store on a timeout.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import threading
from dataclasses import dataclass
from typing import Any


@dataclass
class LocalSignals:
    job_ready: Any  # multiprocessing.Event
    job_done: Any

    @classmethod
    def create(cls) -> "LocalSignals":
        ctx = mp.get_context("spawn")
        return cls(ctx.Event(), ctx.Event())


class CompletionBroadcaster:
    """One thread turns `job_done` into an asyncio wake-up for every request waiting in this process."""

    def __init__(self, job_done: Any) -> None:
        self._job_done = job_done
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop, self._changed = loop, asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="job-done", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        self._job_done.set()  # unblock the thread
        if self._thread:
            self._thread.join(2)

    async def wait(self, timeout: float) -> None:
        """Return when any job finished, or after `timeout`."""
        if self._changed is None:
            await asyncio.sleep(timeout)
            return
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def _run(self) -> None:
        while not self._halt.is_set():
            if self._job_done.wait(1.0):
                self._job_done.clear()
                if self._loop and not self._halt.is_set():
                    self._loop.call_soon_threadsafe(self._notify)

    def _notify(self) -> None:
        old, self._changed = self._changed, asyncio.Event()
        assert old is not None
        old.set()
