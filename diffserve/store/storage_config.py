"""Storage settings saved at run time (ModelsLab's `update_s3`): one row, read by the API and the workers, and
every version ever saved (`config_at`): a job's outputs are read through the version they were written under."""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import ColumnElement, Engine, Select, func, select
from sqlalchemy.orm import Session

from diffserve.store.db import StorageConfigRow, StorageConfigVersionRow, autocommit, utcnow

_ROW_ID = 1


@functools.lru_cache(maxsize=None)
def _version() -> Select:
    """Built once: a statement built per call costs more Python than the read, which every process polls once
    a second."""
    return select(StorageConfigRow.__table__.c.version).where(StorageConfigRow.__table__.c.id == _ROW_ID)


def version_now() -> ColumnElement[int]:
    """The saved settings' version (the poll's statement) as a column of another statement (0 until settings are
    saved, as `version`): a job's start answers it (store/ledger.py), so a busy worker's storage needs no poll of
    its own."""
    return func.coalesce(_version().scalar_subquery(), 0)


class StorageConfigStore:
    def __init__(self, db: Engine) -> None:
        self._db = db
        self._read = autocommit(db)  # the poll is one read: no transaction around it

    def version(self) -> int:
        """0 until settings are saved; grows by one on every save (cheap to poll: one statement)."""
        with self._read.connect() as c:
            return int(c.execute(_version()).scalar() or 0)

    def load(self) -> tuple[int, dict[str, Any]] | None:
        with Session(self._db) as s:
            row = s.get(StorageConfigRow, _ROW_ID)
            return (row.version, dict(row.config)) if row else None

    def config_at(self, version: int) -> dict[str, Any] | None:
        """The settings saved as `version` (kept for good: objects written under them stay there); None if none."""
        with Session(self._db) as s:
            row = s.get(StorageConfigVersionRow, version)
            return dict(row.config) if row else None

    def save(self, config: dict[str, Any]) -> int:
        """The new settings, current from now on and kept as their version (one transaction); the version."""
        with Session(self._db) as s, s.begin():
            row = s.get(StorageConfigRow, _ROW_ID, with_for_update=True)
            if row is None:
                row = StorageConfigRow(id=_ROW_ID, version=1, config=config, updated_at=utcnow())
                s.add(row)
            else:
                row.version += 1
                row.config = config
                row.updated_at = utcnow()
            s.flush()
            s.add(StorageConfigVersionRow(version=row.version, config=config, saved_at=row.updated_at))
            return row.version
