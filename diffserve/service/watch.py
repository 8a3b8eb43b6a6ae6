"""One reader of followed jobs for the whole API process: event streams and synchronous waits subscribe
here instead of each polling the store.

Every `interval_s` -- or at once when a job finishes (the CompletionBroadcaster: local workers' pokes,
PostgreSQL NOTIFY) -- one task reads a mark of every followed job in one query (status, attempt, progress
step and its write time: `JobStore.marks`) and wakes the followers of each job whose mark changed. A
follower then reads what it shows (the job, its progress, a preview) once per change, not once per tick:
N streams of one queued job cost one small query per interval, not N. The task runs only while someone
follows a job.

Event streams are also counted per key (`limits.max_streams_per_key`, in this process): one more is
refused with RateLimited (429 in the dialect's shape). Synchronous waits need no such count: each waits
for its own unfinished job, and those are bounded by the key's queue cap.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from diffserve.core.errors import RateLimited
from diffserve.core.offload import Offload
from diffserve.jobqueue.signals import CompletionBroadcaster

log = logging.getLogger(__name__)

Marks = Callable[[Iterable[int]], dict[int, tuple]]


class Follower:
    """One request following one job: `changed` returns True once the job's mark moved."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self._event = asyncio.Event()

    async def changed(self, timeout: float) -> bool:
        """True when the job changed since the last call (or the first read of it); False after `timeout`."""
        try:
            await asyncio.wait_for(self._event.wait(), max(timeout, 0))
        except asyncio.TimeoutError:
            return False
        self._event.clear()
        return True


class StreamSlot:
    """One open event stream of a key; `release` (idempotent) frees it."""

    def __init__(self, counts: Counter[str], key_id: str) -> None:
        self._counts, self._key_id, self._held = counts, key_id, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._counts[self._key_id] -= 1
            if self._counts[self._key_id] <= 0:
                del self._counts[self._key_id]

    def bind(self, stream: Any) -> Any:
        """Release when `stream` (the response's generator) is gone, even if it never started."""
        weakref.finalize(stream, self.release)
        return stream


class JobWatch:
    def __init__(self, marks: Marks, interval_s: float, completions: CompletionBroadcaster | None = None,
                 offload: Offload | None = None) -> None:
        self._marks = marks
        self._offload = offload or Offload()
        self.interval_s = interval_s
        self._completions = completions
        self._followers: defaultdict[int, set[Follower]] = defaultdict(set)
        self._last: dict[int, tuple | None] = {}
        self._streams: Counter[str] = Counter()
        self._task: asyncio.Task | None = None

    def open_stream(self, key_id: str, cap: int) -> StreamSlot:
        """Count one more event stream of `key_id`; RateLimited past `cap`."""
        if self._streams[key_id] >= cap:
            raise RateLimited(f"Too many event streams open for this key (at most {cap}); close one first",
                              retry_after=1)
        self._streams[key_id] += 1
        return StreamSlot(self._streams, key_id)

    @contextmanager
    def follow(self, job_id: int) -> Iterator[Follower]:
        """Follow `job_id` (call from the event loop); its follower is woken whenever the job changes."""
        follower = Follower(job_id)
        self._followers[job_id].add(follower)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="job-watch")
        try:
            yield follower
        finally:
            followers = self._followers.get(job_id)
            if followers is not None:
                followers.discard(follower)
                if not followers:
                    del self._followers[job_id]
                    self._last.pop(job_id, None)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    async def _run(self) -> None:
        while self._followers:
            await self._round()
            if self._completions is not None:
                await self._completions.wait(self.interval_s)  # a finished job wakes it early
            else:
                await asyncio.sleep(self.interval_s)

    async def _round(self) -> None:
        ids = list(self._followers)
        try:
            marks = await self._offload(self._marks, ids)
        except Exception:  # the store is down: followers keep waiting, the next round tries again
            log.exception("reading followed jobs failed")
            return
        for job_id in ids:
            mark = marks.get(job_id)
            if job_id not in self._followers or (job_id in self._last and self._last[job_id] == mark):
                continue  # nobody follows it any more, or nothing changed
            self._last[job_id] = mark
            for follower in self._followers.get(job_id, ()):
                follower._event.set()
