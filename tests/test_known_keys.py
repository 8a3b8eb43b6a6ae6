"""Verified API keys kept by an API process that hears revocations (store/keys.py KnownKeys, store/notify.py
StoreListener): a known key needs no store read, a revocation made anywhere is heard at once, and nothing is
kept while revocations could go unheard. No diffserve server: the stores on a real PostgreSQL."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import event, text

from diffserve.store.db import make_db_engine, utcnow
from diffserve.store.keys import ApiKey, KeyStore, KnownKeys
from diffserve.store.notify import StoreListener
from diffserve.store.schema import ensure_schema

from .databases import postgres  # noqa: F401 - the module's PostgreSQL server
from .waiting import wait_until


def _key(key_id: str = "k1") -> ApiKey:
    return ApiKey(key_id, "name", "user", utcnow(), None)


def test_known_keys_are_kept_only_while_revocations_are_heard() -> None:
    known = KnownKeys(size=2)
    known.put("d1", _key("k1"), known.generation())
    assert known.get("d1") is None  # not listening yet: nothing kept
    known.listening(True)
    known.put("d1", _key("k1"), known.generation())
    assert known.get("d1").key_id == "k1"
    known.listening(False)  # the listener lost its connection: a revocation could go unheard
    assert known.get("d1") is None
    known.listening(True)
    assert known.get("d1") is None  # what was kept before the loss is gone, not back


def test_a_read_that_raced_a_revocation_keeps_nothing() -> None:
    known = KnownKeys()
    known.listening(True)
    before = known.generation()  # a verification reads the store...
    known.revoked("k1")  # ...a revocation is heard meanwhile...
    known.put("d1", _key("k1"), before)  # ...what it read may predate the revocation
    assert known.get("d1") is None
    known.put("d1", _key("k1"), known.generation())
    known.revoked("k1")
    assert known.get("d1") is None


def test_known_keys_are_bounded_and_read_again_after_a_while() -> None:
    known = KnownKeys(size=2, ttl_s=0.2)
    known.listening(True)
    for i in range(3):
        known.put(f"d{i}", _key(f"k{i}"), known.generation())
    assert known.get("d0") is None and known.get("d2").key_id == "k2"  # the least recently used went
    time.sleep(0.25)
    assert known.get("d2") is None  # a listener whose connection died silently hears nothing: bounded


@pytest.fixture
def listening(postgres):  # noqa: F811
    """(engine, a KeyStore keeping known keys, its listener) on the module's PostgreSQL, listening."""
    db = make_db_engine(postgres.url)
    ensure_schema(db)
    known = KnownKeys()
    listener = StoreListener(postgres.url, lambda _job_id: None, on_revoked=known.revoked,
                             on_listening=known.listening)
    listener.start()
    try:
        assert listener.listening.wait(10)
        yield db, KeyStore(db, known), listener
    finally:
        listener.stop()


def test_a_known_key_needs_no_store_read_and_a_revocation_anywhere_is_heard(listening, postgres):  # noqa: F811
    db, keys, _ = listening
    key, full = keys.create("alice")
    reads: list[str] = []
    event.listen(db, "before_cursor_execute", lambda *args: reads.append(args[2]))
    assert keys.known(full) is None and keys.verify(full).key_id == key.key_id  # read once...
    assert keys.known(full).key_id == key.key_id and keys.verify(full).key_id == key.key_id  # ...then kept
    assert len(reads) == 1
    assert keys.verify(full[:-1] + ("x" if full[-1] != "x" else "y")) is None  # a wrong secret: refused
    # revoked by another process (the CLI's own store): this process hears it and refuses the key
    assert [k.key_id for k in KeyStore(make_db_engine(postgres.url)).revoke("alice")] == [key.key_id]
    wait_until(lambda: keys.known(full) is None, 10, 0.01, "the revocation to be heard")
    assert keys.verify(full) is None


def test_nothing_is_kept_while_the_listener_is_away(listening):
    db, keys, listener = listening
    key, full = keys.create("bob")
    assert keys.verify(full) is not None and keys.known(full) is not None
    with db.connect() as c:  # the listener's connection is cut (a database restart, a proxy timeout)
        c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'"))
    wait_until(lambda: keys.known(full) is None, 10, 0.01, "the kept keys to be dropped")
    assert listener.listening.wait(10)  # back: keys are verified and kept again
    assert keys.verify(full) is not None and keys.known(full) is not None
