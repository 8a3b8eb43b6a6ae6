"""Bounds on image URL fetches in flight in one API process: per key and in total.

A fetch is blocking network I/O (see :mod:`.fetch`) that a slow image host can stretch to
``fetch_timeout_s``. Fetches therefore run on threads counted by their own capacity limiter, never
on anyio's default one (40 threads shared by every other request: /health, store reads, encoding),
so a slow host costs a fetch slot only.

* ``max_fetches_per_key``: fetches one key may have running or waiting. One more is refused at once
  with :class:`RateLimited` (429 in the dialect's shape): a key cannot queue up the whole server.
* ``max_fetches_in_flight``: fetches running at once. When every slot is taken, a submission waits
  for one at most ``fetch_slot_wait_s`` (on the event loop, no thread held), then gets 429 too.

The per-key count lives in this process; several API processes each apply their own bounds.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import anyio

from diffserve.config import ImageLimits
from diffserve.core.errors import RateLimited

T = TypeVar("T")


class FetchSlots:
    def __init__(self, limits: ImageLimits) -> None:
        self.limits = limits
        self._per_key: Counter[str] = Counter()
        # built on first use: anyio's limiters belong to the running event loop
        self._slots: anyio.CapacityLimiter | None = None
        self._threads: anyio.CapacityLimiter | None = None

    async def run(self, key_id: str, fetch: Callable[[], T]) -> T:
        """Run the blocking `fetch` on a fetch thread under both bounds; RateLimited past them."""
        if self._slots is None or self._threads is None:
            self._slots = anyio.CapacityLimiter(self.limits.max_fetches_in_flight)
            # threads are counted on their own limiter (the slots above already bound them); the default
            # limiter is never touched
            self._threads = anyio.CapacityLimiter(self.limits.max_fetches_in_flight)
        per_key = self.limits.max_fetches_per_key
        if self._per_key[key_id] >= per_key:
            raise RateLimited(f"Too many image URL fetches in flight for this key (at most {per_key}); "
                              "retry when one has finished", retry_after=self._retry_after())
        self._per_key[key_id] += 1
        try:
            try:
                with anyio.fail_after(self.limits.fetch_slot_wait_s):
                    await self._slots.acquire()
            except TimeoutError:
                raise RateLimited(f"All {self.limits.max_fetches_in_flight} image URL fetch slots are busy; "
                                  "retry later", retry_after=self._retry_after()) from None
            try:
                return await anyio.to_thread.run_sync(fetch, limiter=self._threads)
            finally:
                self._slots.release()
        finally:
            self._per_key[key_id] -= 1
            if self._per_key[key_id] <= 0:
                del self._per_key[key_id]

    def _retry_after(self) -> int:
        return max(1, math.ceil(self.limits.fetch_timeout_s / 3))
