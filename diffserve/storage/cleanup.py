"""Deletes expired temporary objects: everything under `temp/` older than `storage.temp_ttl_s`.

Requests with `temp: yes` store their inputs and outputs under `temp/` (core/job.py), and so do
other short-lived uploads. A thread in the API process lists that prefix every
`storage.cleanup_interval_s` on local disk and on the current bucket, and deletes what is older
than the TTL (by the object's last-modified time). Deleting is idempotent, so several API processes
may run it at once.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from diffserve.core.job import TEMP_PREFIX
from diffserve.core.threads import periodic
from diffserve.store.db import utcnow
from diffserve.storage.configured import ConfiguredStorage

log = logging.getLogger(__name__)


class TempCleaner:
    def __init__(self, storage: ConfiguredStorage, ttl_s: float, interval_s: float) -> None:
        self.storage = storage
        self.ttl = timedelta(seconds=ttl_s)
        self.interval_s = interval_s
        self._rounds = periodic("temp-cleanup", self.run_once, interval_s, join_s=5, failure="temp cleanup failed")

    def run_once(self, now: datetime | None = None) -> int:
        """Delete expired temp objects on every backend in use; returns how many."""
        cutoff = (now or utcnow()) - self.ttl
        deleted = 0
        for backend in self.storage.backends():
            for obj in list(backend.list(TEMP_PREFIX)):
                if obj.modified < cutoff:
                    backend.delete(obj.key)
                    deleted += 1
        if deleted:
            log.info("deleted %s expired temp objects", deleted)
        return deleted

    def start(self) -> None:
        self._rounds.start()  # once at start, then every interval

    def stop(self) -> None:
        self._rounds.stop()
