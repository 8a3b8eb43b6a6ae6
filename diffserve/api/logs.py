"""The API process's log lines are written by threads of their own: the event loop only queues each record.

A write to stderr or stdout (a file, a pipe to journald or docker) takes as long as the disk or the reader
takes -- an ext4 journal commit while the workers write images and the database, a slow log collector -- and on
the event loop that stalls every request in flight; uvicorn's access line is one such write per request. Each
logger that has handlers (root, uvicorn.error, uvicorn.access) keeps them, behind a queue and a
`logging.handlers.QueueListener` thread that formats and writes in order; `stop()` writes what is left."""

from __future__ import annotations

import logging
import queue
from logging.handlers import QueueHandler, QueueListener

LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")


class _Handoff(QueueHandler):
    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """The record as it is: the writing thread's handlers format it (uvicorn's access formatter reads
        `record.args`, which QueueHandler's own prepare would merge into the message and drop)."""
        return record


class LogWriters:
    def __init__(self, names: tuple[str, ...] = LOGGERS) -> None:
        self._listeners: list[QueueListener] = []
        for name in names:
            logger = logging.getLogger(name)
            if not logger.handlers:
                continue
            records: queue.SimpleQueue = queue.SimpleQueue()
            self._listeners.append(QueueListener(records, *logger.handlers, respect_handler_level=True))
            logger.handlers = [_Handoff(records)]

    def start(self) -> LogWriters:
        for listener in self._listeners:
            listener.start()
        return self

    def stop(self) -> None:
        for listener in self._listeners:
            listener.stop()
