"""The API process's one way off the event loop: `await offload(fn, *args)`.

The job store, the key store, storage (local disk or S3) and request-sized image work are synchronous; a handler
never calls them on the event loop. It awaits them through the one `Offload` the app state holds, which runs the
call on a bounded pool of threads of its own (`server.blocking_threads`), so a burst of slow store or S3 calls
queues for those threads instead of taking every thread of anyio's default pool, and one place says how much
blocking work the process runs at once. Image URL fetches keep their own per-key pool (media/slots.py).

    job = await ds.offload(ds.service.jobs.get, job_id)
    jobs = await ds.offload(ds.service.jobs.list_for_key, key.key_id, limit=50)

A cancelled caller (a client gone) waits for its call to return: a store write is never abandoned half way.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import ParamSpec, TypeVar

import anyio

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_THREADS = 32


class Offload:
    """Awaitable calls of blocking functions on a bounded thread pool (`threads` at once)."""

    def __init__(self, threads: int = DEFAULT_THREADS) -> None:
        if threads < 1:
            raise ValueError(f"`threads` has to be at least 1 but is {threads}")
        self.threads = threads
        self._limiter: anyio.CapacityLimiter | None = None  # made in the event loop, on first use

    @property
    def busy(self) -> int:
        """Calls running now (the rest wait for a thread)."""
        return self._limiter.borrowed_tokens if self._limiter else 0

    async def __call__(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.threads)
        return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=self._limiter)
