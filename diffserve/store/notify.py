"""What API processes hear through PostgreSQL's LISTEN/NOTIFY instead of polling the store: jobs finished on
workers they did not spawn (`diffserve worker`, other machines), and revoked API keys.

`notify_done` runs inside the transaction that finishes a job, `notify_revoked` inside the one that revokes
keys (PostgreSQL delivers them at commit; other databases do nothing). `StoreListener` is a thread with its
own connection that LISTENs to both and calls back on every notification, reconnecting while the database is
away, and says when it starts and stops listening (`on_listening`: what it heard is complete only meanwhile).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from diffserve.core.threads import Background

log = logging.getLogger(__name__)

CHANNEL = "diffserve_job_done"
KEYS_CHANNEL = "diffserve_key_revoked"


def notify_done(session: Session | Connection, job_id: int) -> None:
    _notify(session, CHANNEL, [str(job_id)])


def notify_revoked(session: Session | Connection, key_ids: list[str]) -> None:
    _notify(session, KEYS_CHANNEL, key_ids)


def _notify(session: Session | Connection, channel: str, payloads: list[str]) -> None:
    """pg_notify per payload inside the caller's transaction (delivered at its commit); nothing elsewhere."""
    dialect = session.dialect if isinstance(session, Connection) else session.get_bind().dialect
    if dialect.name == "postgresql":
        for payload in payloads:
            session.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload})


def listens(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


class StoreListener:
    """on_done(job id) for every finished job, on_revoked(key id) for every revoked key, on_listening(True)
    once both are listened to, on_listening(False) when the connection is lost (notifications may be missed
    until it is back)."""

    def __init__(self, url: str, on_done: Callable[[int], None], *,
                 on_revoked: Callable[[str], None] | None = None,
                 on_listening: Callable[[bool], None] | None = None) -> None:
        self._conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._on_done = on_done
        self._on_revoked = on_revoked or (lambda _key_id: None)
        self._on_listening = on_listening or (lambda _fresh: None)
        self.listening = threading.Event()  # set while connected and listening
        self._thread = Background("job-done-listener", self._run)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()

    def _run(self, halt: threading.Event) -> None:
        import psycopg

        while not halt.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    conn.execute(f"LISTEN {KEYS_CHANNEL}")
                    self.listening.set()
                    self._on_listening(True)
                    while not halt.is_set():
                        for note in conn.notifies(timeout=1.0):
                            if note.channel == KEYS_CHANNEL:
                                self._on_revoked(note.payload)
                            else:
                                self._on_done(int(note.payload))
            except Exception:  # noqa: BLE001 - the database went away: listen again once it is back
                self._heard_nothing()
                if not halt.is_set():
                    log.warning("store listener lost its connection; retrying", exc_info=True)
                    halt.wait(1.0)
        self._heard_nothing()

    def _heard_nothing(self) -> None:
        if self.listening.is_set():
            self.listening.clear()
            self._on_listening(False)
