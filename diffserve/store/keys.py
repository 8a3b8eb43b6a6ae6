"""API keys: stored as SHA-256 hashes, checked in constant time.

A key is `<key_id><secret>`: 12 public characters that find the row, then 40 secret ones.
Both are random alphanumerics, so a key looks like any vendor key to a client.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, bindparam, or_, select
from sqlalchemy.orm import Session

from diffserve.store.db import KeyRow, autocommit, utcnow

_ALPHABET = string.ascii_letters + string.digits
_ID_LEN = 12
_SECRET_LEN = 40
ROLES = ("user", "admin")


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None
    max_queued: int | None = None  # queued+running jobs allowed; None: the server's default

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class KeyStore:
    def __init__(self, db: Engine) -> None:
        self._db = db
        self._read = autocommit(db)  # every request's key check: one statement
        # built once: every request runs it (a statement built per call cost more than SQLite's lookup)
        self._by_id = select(*KeyRow.__table__.columns).where(KeyRow.key_id == bindparam("key_id"))

    def create(self, name: str | None = None, role: str = "user", max_queued: int | None = None) -> tuple[ApiKey, str]:
        """Returns the stored key and the full key text (shown once, never stored)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        if max_queued is not None and max_queued < 0:
            raise ValueError("max_queued must be >= 0 (0: no cap)")
        key_id = _random(_ID_LEN)
        full = key_id + _random(_SECRET_LEN)
        row = KeyRow(
            key_id=key_id,
            name=name or f"key-{key_id[:6]}",
            secret_hash=_hash(full),
            role=role,
            max_queued=max_queued,
            created_at=utcnow(),
        )
        with Session(self._db) as s, s.begin():
            s.add(row)
            s.flush()
            return _to_key(row), full

    def verify(self, full_key: str | None) -> ApiKey | None:
        """The live key this text is, or None. Constant-time comparison of hashes."""
        if not full_key or len(full_key) != _ID_LEN + _SECRET_LEN:
            return None
        with self._read.connect() as c:  # one statement, no transaction around it
            row = c.execute(self._by_id, {"key_id": full_key[:_ID_LEN]}).first()
            candidate = row.secret_hash if row is not None else _hash("")
            ok = hmac.compare_digest(candidate, _hash(full_key))
            if row is None or not ok or row.revoked_at is not None:
                return None
            return _to_key(row)

    def list(self) -> list[ApiKey]:
        with Session(self._db) as s:
            return [_to_key(r) for r in s.scalars(select(KeyRow).order_by(KeyRow.created_at))]

    def revoke(self, key_or_name: str) -> list[ApiKey]:
        """Revoke by full key, key id or name. Returns what was revoked."""
        with Session(self._db) as s, s.begin():
            rows = s.scalars(
                select(KeyRow).where(
                    KeyRow.revoked_at.is_(None),
                    or_(
                        KeyRow.key_id == key_or_name[:_ID_LEN],
                        KeyRow.name == key_or_name,
                    ),
                )
            ).all()
            # a 12+ char prefix match on key_id only counts when the text is that id or the full key
            rows = [
                r
                for r in rows
                if r.name == key_or_name
                or key_or_name == r.key_id
                or hmac.compare_digest(r.secret_hash, _hash(key_or_name))
            ]
            now = utcnow()
            for r in rows:
                r.revoked_at = now
            return [_to_key(r) for r in rows]


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _to_key(row: KeyRow) -> ApiKey:
    return ApiKey(row.key_id, row.name, row.role, row.created_at, row.revoked_at, row.max_queued)
