"""Local-disk storage under the data dir; the API serves `generations/` at `<base_url>/generations/`."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from diffserve.core.errors import NotFound
from diffserve.storage.base import StoredObject

PUBLIC_PREFIX = "generations"


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, key: str, data: bytes, content_type: str = "image/png") -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # a random name of our own (tempfile.mkstemp's name search cost ~50 us more per file here)
        tmp = path.parent / f".tmp-{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)  # readers never see a half-written file
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"No such object: {key}") from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def url(self, key: str, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/{key}"

    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Files under the folder part of `prefix` whose key starts with it (half-written temp files skipped)."""
        parts = PurePosixPath(prefix).parts
        folder = self.root.joinpath(*(parts if prefix.endswith("/") else parts[:-1]))
        if not folder.is_dir():
            return
        for path in folder.rglob("*"):
            key = path.relative_to(self.root).as_posix()
            if not key.startswith(prefix) or path.name.startswith(".tmp-"):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:  # deleted meanwhile
                continue
            if path.is_file():
                yield StoredObject(key, datetime.fromtimestamp(stat.st_mtime, timezone.utc).replace(tzinfo=None))

    def _path(self, key: str) -> Path:
        parts = PurePosixPath(key).parts
        if not parts or any(p in ("..", "") or p.startswith("/") for p in parts):
            raise NotFound(f"No such object: {key}")
        return self.root.joinpath(*parts)
