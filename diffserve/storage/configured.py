"""The storage the API and the workers use: local disk or S3, as configured, switchable at run time.

Settings saved by `update_s3` (the database) win over the environment (`DIFFSERVE_STORAGE__*`).
Every process re-reads the saved settings' version at most every `storage.refresh_s` seconds, so a
change reaches the API and every worker without a restart. Objects written before a change stay
where they were (local files are still served at their old URLs); new objects go to the new place.
A re-read that fails (the database away for a moment, a network partition) is no storage error: the
backend in use stays, and the next operation past `refresh_s` reads again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from diffserve.config import Settings
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
    """A Storage that delegates to the backend the current settings name."""

    def __init__(self, settings: Settings, saved: StorageConfigStore | None = None) -> None:
        self.local = LocalStorage(settings.data_dir)
        self._saved = saved
        self._refresh_s = settings.storage.refresh_s
        env = s3_config_from_settings(settings)
        self._env_backend: Storage = S3Storage(env) if env else self.local
        self._backend: Storage = self._env_backend
        self._version = 0
        self._checked_at = float("-inf")
        self._lock = threading.Lock()

    def current(self) -> Storage:
        if self._saved is None:
            return self._backend
        now = time.monotonic()
        if now - self._checked_at < self._refresh_s:
            return self._backend
        with self._lock:
            if now - self._checked_at >= self._refresh_s:
                self._checked_at = now
                try:
                    self._reload()
                except SQLAlchemyError as e:  # transient: a job's image must not fail on reading settings
                    log.warning("storage settings unreadable (%s); %s stays until the next read",
                                type(e).__name__, type(self._backend).__name__)
            return self._backend

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
        return self.current().get(key)

    def delete(self, key: str) -> None:
        self.current().delete(key)

    def url(self, key: str, base_url: str) -> str:
        return self.current().url(key, base_url)

    def list(self, prefix: str) -> Iterator[StoredObject]:
        return self.current().list(prefix)

    def _reload(self) -> None:
        assert self._saved is not None
        version = self._saved.version()
        if version == self._version:
            return
        loaded = self._saved.load()
        if loaded is None:
            return
        version, config = loaded
        self._backend = backend_from_saved(config, self.local, self._env_backend)
        self._version = version
        log.info("storage settings version %s: %s", version, type(self._backend).__name__)


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
