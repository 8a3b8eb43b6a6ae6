"""Per-key client settings (a table of its own): the A1111 API's options, e.g. the chosen checkpoint."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from diffserve.store.db import KeyOptionsRow


class KeyOptions:
    def __init__(self, db: Engine) -> None:
        self._db = db

    def get(self, key_id: str) -> dict[str, Any]:
        with Session(self._db) as s:
            row = s.get(KeyOptionsRow, key_id)
            return dict(row.options or {}) if row else {}

    def update(self, key_id: str, values: dict[str, Any]) -> dict[str, Any]:
        with Session(self._db) as s, s.begin():
            row = s.get(KeyOptionsRow, key_id, with_for_update=True)
            merged = {**(row.options if row else {}), **values}
            s.merge(KeyOptionsRow(key_id=key_id, options=merged))
            return merged
