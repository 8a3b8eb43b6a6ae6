"""Per-key cap on queued+running jobs (ModelsLab's 429 "Maximum N queued requests allowed").

The cap is the key's own `max_queued` (`diffserve keys create --max-queued N`), else the server's
`limits.max_queued_per_key`; 0 means no cap. A submission reserves a slot before its images are
fetched and holds it until its job is in the database, so concurrent submissions from one key in
this process cannot overshoot (they may, at worst, be refused a moment early). Several API processes
share only the database count, so across processes the cap can be exceeded by the submissions in
flight at the same moment.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from diffserve.core.errors import RateLimited
from diffserve.core.offload import Offload
from diffserve.store.jobs import JobStore
from diffserve.store.keys import ApiKey

DEFAULT_RETRY_AFTER_S = 10


def rate_limit_message(cap: int) -> str:
    return f"Rate limit exceeded. Maximum {cap} queued requests allowed."


class QueueCaps:
    def __init__(self, jobs: JobStore, default_cap: int, offload: Offload | None = None) -> None:
        self.jobs = jobs
        self.offload = offload or Offload()  # the app's one pool (set by GenerationService)
        self.default_cap = default_cap
        # per key, on the event loop: submissions admitted whose job may not be counted yet, and a lock
        # that makes "count, compare, reserve" one step and orders releases after it
        self._reserved: Counter[str] = Counter()
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def cap_for(self, key: ApiKey) -> int:
        return self.default_cap if key.max_queued is None else key.max_queued

    async def processing_count(self, key: ApiKey) -> int:
        return await self.offload(self.jobs.count_unfinished, key.key_id)

    @asynccontextmanager
    async def admit(self, key: ApiKey) -> AsyncIterator[None]:
        """Hold a slot for one submission; RateLimited if the key is at its cap."""
        cap = self.cap_for(key)
        if cap <= 0:
            yield
            return
        key_id = key.key_id
        async with self._locks[key_id]:
            unfinished = await self.processing_count(key)
            if unfinished + self._reserved[key_id] >= cap:
                raise RateLimited(rate_limit_message(cap), retry_after=await self.retry_after())
            self._reserved[key_id] += 1
        try:
            yield
        finally:
            # A task, not an await: it must run even when this request is being cancelled. Under the
            # lock, so a count that started before this job was committed still sees the reservation.
            asyncio.get_running_loop().create_task(self._release(key_id))

    async def _release(self, key_id: str) -> None:
        async with self._locks[key_id]:
            self._reserved[key_id] -= 1
            if self._reserved[key_id] <= 0:
                del self._reserved[key_id]

    async def retry_after(self) -> int:
        """Seconds until a slot is likely free: the median run time of recent jobs (at least 1)."""
        durations = await self.offload(self.jobs.recent_durations)
        if not durations:
            return DEFAULT_RETRY_AFTER_S
        return max(1, math.ceil(statistics.median(durations)))
