"""The payload hook: each dialect registers how its webhook body looks; delivery only calls it.

A renderer gets the finished job, the storage (for URLs and base64 outputs) and the server's public
base URL, and returns the JSON object to POST. The job's `dialect` picks the renderer; a dialect
with none gets the default one (set by whoever builds the registry: the app).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffserve.core.job import Job
from diffserve.storage.base import Storage

PayloadRenderer = Callable[[Job, Storage, str], dict[str, Any]]


class PayloadRenderers:
    def __init__(self, default: PayloadRenderer | None = None) -> None:
        self._default = default
        self._by_dialect: dict[str, PayloadRenderer] = {}

    def register(self, dialect: str, renderer: PayloadRenderer) -> None:
        self._by_dialect[dialect] = renderer

    def render(self, job: Job, storage: Storage, base_url: str) -> dict[str, Any]:
        renderer = self._by_dialect.get(job.dialect, self._default)
        if renderer is None:
            raise LookupError(f"no webhook payload renderer for dialect {job.dialect!r}")
        return renderer(job, storage, base_url)

    def dialects(self) -> list[str]:
        return sorted(self._by_dialect)
