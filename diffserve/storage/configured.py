"""The storage the API and the workers use: local disk or S3, as configured, switchable at run time.

Settings saved by `update_s3` (the database) win over the environment (`DIFFSERVE_STORAGE__*`).
Every process re-reads the saved settings' version at most every `storage.refresh_s` seconds, so a
change reaches the API and every worker without a restart. A re-read that fails (the database away for a
moment, a network partition) is no storage error: the backend in use stays, and the next operation past
`refresh_s` reads again.

**Versions.** Each saved settings version is kept (store/storage_config.py; version 0 is the environment's).
A worker may write a job's images under settings a switch already replaced (for up to `refresh_s`), so
the job's record names the version they went to: `pinned()` gives a worker one backend and its version
for all of a job's images, the ledger writes the version with the outputs (`Job.storage_version`), and
readers resolve a job's outputs through `holding(storage, job)`: the backend of that version, current or
not. Old backends stay readable for the objects stored there; new objects go to the current one. A key
missing from the current backend (an input the API wrote just after a switch this process has not read
yet) makes `get` re-read the settings at once and try the newer backend.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from diffserve.config import Settings
from diffserve.core.errors import NotFound
from diffserve.core.job import Job
from diffserve.store.storage_config import StorageConfigStore
from diffserve.storage.base import Storage, StoredObject
from diffserve.storage.local import LocalStorage
from diffserve.storage.s3 import S3Config, S3Storage

log = logging.getLogger(__name__)


def s3_config_from_settings(settings: Settings) -> S3Config | None:
    st = settings.storage
    if st.backend != "s3":
        return None
    if not st.bucket:
        raise ValueError("DIFFSERVE_STORAGE__BUCKET is required when DIFFSERVE_STORAGE__BACKEND=s3")
    return S3Config(
        bucket=st.bucket, endpoint_url=st.endpoint_url, region=st.region, access_key_id=st.access_key_id,
        secret_access_key=st.secret_access_key.get_secret_value() if st.secret_access_key else None,
        prefix=st.prefix, public_url=st.public_url, presign_expiry_s=st.presign_expiry_s,
    )


class ConfiguredStorage:
    """A Storage that delegates to the backend the current settings name (and reads older versions' objects)."""

    def __init__(self, settings: Settings, saved: StorageConfigStore | None = None) -> None:
        self.local = LocalStorage(settings.data_dir)
        self._saved = saved
        self._refresh_s = settings.storage.refresh_s
        env = s3_config_from_settings(settings)
        self._env_backend: Storage = S3Storage(env) if env else self.local
        self._pinned: tuple[int, Storage] = (0, self._env_backend)  # (version, its backend), swapped whole
        self._older: dict[int, Storage] = {0: self._env_backend}  # every version this process met
        self._checked_at = float("-inf")
        self._lock = threading.Lock()

    def current(self) -> Storage:
        return self.pinned()[1]

    def pinned(self) -> tuple[int, Storage]:
        """The current settings version and its backend, together: a worker writes all of a job's images to this
        backend and records this version with them (workers/runner.py)."""
        if self._saved is None:
            return self._pinned
        now = time.monotonic()
        if now - self._checked_at < self._refresh_s:
            return self._pinned
        with self._lock:
            if now - self._checked_at >= self._refresh_s:
                self._checked_at = now
                try:
                    self._reload()
                except SQLAlchemyError as e:  # transient: a job's image must not fail on reading settings
                    log.warning("storage settings unreadable (%s); %s stays until the next read",
                                type(e).__name__, type(self._pinned[1]).__name__)
            return self._pinned

    def noted(self, version: int | None) -> None:
        """The saved settings' version, as a statement of this process read it just now (a job's start answers it:
        store/ledger.py): the same as in use counts as a fresh read (no poll of its own for `refresh_s`), another
        makes the next operation read the settings. None: nothing read."""
        if version is None or self._saved is None:
            return
        if version == self._pinned[0]:
            self._checked_at = max(self._checked_at, time.monotonic())
        else:
            self.invalidate()

    def at(self, version: int | None) -> Storage:
        """The backend of settings `version` (0: the environment's), current or replaced since; None (not
        recorded: a job finished before versions were): the current one. A version no longer known (its row
        gone) is logged and read through the current backend."""
        pinned = self.pinned()
        if version is None or version == pinned[0]:
            return pinned[1]
        with self._lock:
            known = self._older.get(version)
        if known is not None:
            return known
        config = self._saved.config_at(version) if self._saved is not None else None
        if config is None:
            log.warning("storage settings version %s is unknown; reading through the current ones", version)
            return pinned[1]
        backend = backend_from_saved(config, self.local, self._env_backend)
        with self._lock:
            return self._older.setdefault(version, backend)

    def invalidate(self) -> None:
        """Re-read the saved settings on the next operation (this process just saved new ones)."""
        self._checked_at = float("-inf")

    def backends(self) -> list[Storage]:
        """Local disk and the current backend (for clean-ups that must reach both)."""
        current = self.current()
        return [self.local] if current is self.local else [self.local, current]

    def put(self, key: str, data: bytes, content_type: str = "image/png") -> None:
        self.current().put(key, data, content_type)

    def get(self, key: str) -> bytes:
        version, backend = self.pinned()
        try:
            return backend.get(key)
        except NotFound:
            if self._saved is None:
                raise
            self.invalidate()  # written under settings this process has not read yet? read them now
            newer, backend = self.pinned()
            if newer == version:
                raise
            return backend.get(key)

    def delete(self, key: str) -> None:
        self.current().delete(key)

    def url(self, key: str, base_url: str) -> str:
        return self.current().url(key, base_url)

    def list(self, prefix: str) -> Iterator[StoredObject]:
        return self.current().list(prefix)

    def _reload(self) -> None:
        assert self._saved is not None
        version = self._saved.version()
        if version == self._pinned[0]:
            return
        loaded = self._saved.load()
        if loaded is None:
            return
        version, config = loaded
        backend = self._older.get(version) or backend_from_saved(config, self.local, self._env_backend)
        self._older[version] = backend
        self._pinned = (version, backend)
        log.info("storage settings version %s: %s", version, type(backend).__name__)


def pinned(storage: Storage) -> tuple[int | None, Storage]:
    """Where a job's images go and the settings version to record with them: ConfiguredStorage's pinned backend;
    a fixed backend (a test's own): itself, no version."""
    return storage.pinned() if isinstance(storage, ConfiguredStorage) else (None, storage)


def noted(storage: Storage, version: int | None) -> None:
    """ConfiguredStorage.noted; a fixed backend (a test's own) follows no settings."""
    if isinstance(storage, ConfiguredStorage):
        storage.noted(version)


def stored_at(storage: Storage, version: int | None) -> Storage:
    """The backend of settings `version` (ConfiguredStorage.at); a fixed backend: itself."""
    return storage.at(version) if isinstance(storage, ConfiguredStorage) else storage


def holding(storage: Storage, job: Job) -> Storage:
    """The backend holding `job`'s outputs (the settings version they were written under): every reader of a
    job's outputs (URLs, bytes, copies beside them) goes through it."""
    return stored_at(storage, job.storage_version)


def backend_from_saved(config: dict[str, Any], local: LocalStorage, env_backend: Storage) -> Storage:
    """The saved dict is {"backend": "s3", **S3Config fields} or {"backend": "local"}."""
    kind = config.get("backend")
    if kind == "local":
        return local
    if kind == "s3":
        fields = {k: v for k, v in config.items() if k in S3Config.__dataclass_fields__}
        return S3Storage(S3Config(**fields))
    return env_backend


def build_storage(settings: Settings, db: Any) -> ConfiguredStorage:
    """The Storage every process uses (API and workers), following settings saved in database `db`."""
    return ConfiguredStorage(settings, StorageConfigStore(db))
