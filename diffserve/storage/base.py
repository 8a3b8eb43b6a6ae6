"""Where images live: keys like `generations/<token>-0.png` map to bytes and to a client URL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str = "image/png") -> None: ...

    def get(self, key: str) -> bytes: ...

    def delete(self, key: str) -> None: ...

    def url(self, key: str, base_url: str) -> str:
        """The URL a client fetches the object from; `base_url` is this server as the client reaches it
        (local storage serves objects itself; a bucket with its own URLs ignores it)."""

    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Every object whose key starts with `prefix`, with its last-modified time (for expiry)."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    modified: datetime  # naive UTC, like the job store's timestamps
