"""API keys: stored as SHA-256 hashes, checked in constant time.

A key is `<key_id><secret>`: 12 public characters that find the row, then 40 secret ones.
Both are random alphanumerics, so a key looks like any vendor key to a client.

An API process told of every revocation (PostgreSQL NOTIFY: store/notify.py StoreListener) keeps the keys it
verified in `KnownKeys`, so a request with a key it knows needs no store read (and no thread hop: `known`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, bindparam, or_, select
from sqlalchemy.orm import Session

from diffserve.store.db import KeyRow, autocommit, utcnow
from diffserve.store.notify import notify_revoked

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


KNOWN_KEYS = 1024  # verified keys kept at most (the least recently used dropped)
KNOWN_KEY_S = 30.0  # a kept key is read again after this long, whatever the listener heard


class KnownKeys:
    """Keys verified lately, by the SHA-256 of their full text: valid while `fresh` -- the process listens for
    revocations (set by the listener once it LISTENs, cleared with everything kept when it loses its
    connection) -- and for at most KNOWN_KEY_S each (a listener whose connection died without an error hears
    nothing; that bounds how long a revocation can go unheard). A revocation heard drops the key at once, and a
    verification that read the store before a revocation or a reconnect keeps nothing (`generation`).
    Thread-safe: the event loop reads it, offload threads fill it, the listener's thread empties it."""

    def __init__(self, size: int = KNOWN_KEYS, ttl_s: float = KNOWN_KEY_S) -> None:
        self._keys: OrderedDict[str, tuple[ApiKey, float]] = OrderedDict()
        self._size, self._ttl_s = size, ttl_s
        self._lock = threading.Lock()
        self._generation = 0  # moves with every revocation heard and every change of `fresh`
        self._fresh = False

    def get(self, digest: str) -> ApiKey | None:
        with self._lock:
            kept = self._keys.get(digest)
            if kept is None or not self._fresh:
                return None
            if time.monotonic() - kept[1] >= self._ttl_s:
                del self._keys[digest]
                return None
            self._keys.move_to_end(digest)
            return kept[0]

    def generation(self) -> int:
        """Taken before a store read: `put` keeps what that read found only if nothing changed since."""
        return self._generation

    def put(self, digest: str, key: ApiKey, generation: int) -> None:
        with self._lock:
            if not self._fresh or generation != self._generation:
                return
            self._keys[digest] = (key, time.monotonic())
            self._keys.move_to_end(digest)
            while len(self._keys) > self._size:
                self._keys.popitem(last=False)

    def revoked(self, key_id: str) -> None:
        """The listener heard that `key_id` was revoked (in any process)."""
        with self._lock:
            self._generation += 1
            for digest in [d for d, (key, _) in self._keys.items() if key.key_id == key_id]:
                del self._keys[digest]

    def listening(self, fresh: bool) -> None:
        """The listener LISTENs now (True) or lost its connection (False): either way what was kept goes."""
        with self._lock:
            self._generation += 1
            self._fresh = fresh
            self._keys.clear()


class KeyStore:
    def __init__(self, db: Engine, known: KnownKeys | None = None) -> None:
        self._db = db
        self.known_keys = known  # None: every check reads the store (no listener hears revocations)
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

    def known(self, full_key: str) -> ApiKey | None:
        """The key, if this process verified it lately and no revocation was heard since (KnownKeys); no I/O,
        for the event loop. None: ask `verify`."""
        if self.known_keys is None or len(full_key) != _ID_LEN + _SECRET_LEN:
            return None
        return self.known_keys.get(_hash(full_key))

    def verify(self, full_key: str | None) -> ApiKey | None:
        """The live key this text is, or None. Constant-time comparison of hashes."""
        if not full_key or len(full_key) != _ID_LEN + _SECRET_LEN:
            return None
        digest, known = _hash(full_key), self.known_keys
        if known is not None:
            key = known.get(digest)
            if key is not None:
                return key
            generation = known.generation()
        with self._read.connect() as c:  # one statement, no transaction around it
            row = c.execute(self._by_id, {"key_id": full_key[:_ID_LEN]}).first()
        candidate = row.secret_hash if row is not None else _hash("")
        ok = hmac.compare_digest(candidate, digest)
        if row is None or not ok or row.revoked_at is not None:
            return None
        key = _to_key(row)
        if known is not None:
            known.put(digest, key, generation)
        return key

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
            notify_revoked(s, [r.key_id for r in rows])  # PostgreSQL: API processes drop it at commit
            return [_to_key(r) for r in rows]


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _to_key(row: KeyRow) -> ApiKey:
    return ApiKey(row.key_id, row.name, row.role, row.created_at, row.revoked_at, row.max_queued)
