"""Orders from the API to every worker, as an append-only log in the shared database.

The API posts an event (`clear_cache`, `restart`); each worker remembers the id of
the last event it applied and, between jobs, applies the newer ones in order. A worker that starts
later begins after the latest event (old orders do not apply to it). Works the same for local worker
processes and for workers on other machines that share the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from diffserve.store.db import ControlEventRow, autocommit, utcnow

CLEAR_CACHE = "clear_cache"  # payload {"models": null (all) | [model_id, ...]}
RESTART = "restart"  # exit cleanly after the current job; the supervisor starts a fresh process
# A model or asset added / deleted through the API (engine/models/registrations.py): payload {"section":
# "models" | "loras" | ..., "id", "entry" (register only), "object": storage key of its weights or null}
REGISTER_MODEL = "register_model"
UNREGISTER_MODEL = "unregister_model"
REGISTRATIONS = (REGISTER_MODEL, UNREGISTER_MODEL)
KINDS = (CLEAR_CACHE, RESTART, *REGISTRATIONS)


@dataclass(frozen=True)
class ControlEvent:
    id: int
    kind: str
    payload: dict[str, Any]


class ControlLog:
    def __init__(self, db: Engine) -> None:
        self._db = db
        self._read = autocommit(db)  # every worker asks before each job: one statement, no transaction

    def post(self, kind: str, payload: dict[str, Any] | None = None) -> int:
        if kind not in KINDS:
            raise ValueError(f"unknown control event {kind!r}")
        with Session(self._db) as s, s.begin():
            row = ControlEventRow(kind=kind, payload=payload or {}, created_at=utcnow())
            s.add(row)
            s.flush()
            return row.id

    def registrations(self, up_to: int) -> list[ControlEvent]:
        """The last register/unregister event of every model or asset id, up to event `up_to`: what a process
        that starts now must apply to know every model added through the API (and none deleted since)."""
        last: dict[tuple[str, str], ControlEvent] = {}
        for event in self.since(0, REGISTRATIONS):
            if event.id <= up_to:
                last[(event.payload.get("section", ""), event.payload.get("id", ""))] = event
        return sorted(last.values(), key=lambda e: e.id)

    def latest_id(self) -> int:
        with self._read.connect() as c:
            return int(c.scalar(select(func.max(ControlEventRow.id))) or 0)

    def since(self, after_id: int, kinds: tuple[str, ...] | None = None) -> list[ControlEvent]:
        q = select(ControlEventRow.id, ControlEventRow.kind, ControlEventRow.payload).where(
            ControlEventRow.id > after_id)
        if kinds is not None:
            q = q.where(ControlEventRow.kind.in_(kinds))
        with self._read.connect() as c:
            return [ControlEvent(i, kind, dict(payload or {})) for i, kind, payload in c.execute(q.order_by(
                ControlEventRow.id))]
