"""Job-finished notifications through PostgreSQL's LISTEN/NOTIFY, for API processes whose waiting requests
ran on workers they did not spawn (`diffserve worker`, other machines): no polling of the store.

`notify_done` runs inside the transaction that finishes a job (PostgreSQL delivers it at commit; other
databases do nothing). `JobDoneListener` is a thread with its own connection that LISTENs and calls back on
every notification, reconnecting while the database is away.
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


def notify_done(session: Session | Connection, job_id: int) -> None:
    dialect = session.dialect if isinstance(session, Connection) else session.get_bind().dialect
    if dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, :id)"), {"channel": CHANNEL, "id": str(job_id)})


def listens(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


class JobDoneListener:
    def __init__(self, url: str, on_done: Callable[[int], None]) -> None:
        self._conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._on_done = on_done
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
                    self.listening.set()
                    while not halt.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._on_done(int(note.payload))
            except Exception:  # noqa: BLE001 - the database went away: listen again once it is back
                self.listening.clear()
                if not halt.is_set():
                    log.warning("job-done listener lost its connection; retrying", exc_info=True)
                    halt.wait(1.0)
