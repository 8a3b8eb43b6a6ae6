"""What a worker does with the API's control events (store/control.py), and which labels it carries.

Applied between jobs, never during one:

* `clear_cache`: drop every loaded pipeline (or only the listed models: a model deleted, replaced or
  reloaded through the API), then report the models it holds now;
* `restart`: stop taking jobs and exit cleanly; the supervisor (or the fleet's process manager)
  starts a fresh worker, and the queue keeps every job that was waiting.

Models added through the API need no event: the registry re-reads the models file when it changes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import Settings
from .store.control import CLEAR_CACHE, RESTART, ControlLog

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger(__name__)


def worker_labels(settings: Settings, worker_id: str) -> tuple[str, ...]:
    """`DIFFSERVE_WORKER_LABELS=a10g,h100` labels worker-0 a10g and worker-1 h100; a single value labels
    every worker; workers past the end of the list have no label."""
    labels = [part.strip().lower() for part in settings.worker_labels.split(",") if part.strip()]
    if not labels:
        return ()
    if len(labels) == 1:
        return (labels[0],)
    index = worker_index(worker_id)
    return (labels[index],) if index is not None and index < len(labels) else ()


def configured_labels(settings: Settings) -> set[str]:
    """Every label a local worker of this server carries."""
    return {label for i in range(settings.workers) for label in worker_labels(settings, f"worker-{i}")}


def worker_index(worker_id: str) -> int | None:
    prefix, _, number = worker_id.rpartition("-")
    return int(number) if prefix and number.isdigit() else None


@dataclass
class WorkerOrders:
    control: ControlLog
    seen: int = field(default=0)

    def start(self) -> None:
        """Orders posted before this worker started do not concern it."""
        self.seen = self.control.latest_id()

    def apply(self, worker: Worker) -> bool:
        """Apply the new events in order. False when the worker must exit (restart)."""
        for event in self.control.since(self.seen):
            self.seen = event.id
            if event.kind == RESTART:
                log.info("restart requested (event %s): exiting between jobs", event.id)
                return False
            if event.kind == CLEAR_CACHE:
                models = event.payload.get("models")
                if models is None:
                    worker.engine.pipelines.clear()
                else:
                    for model_id in models:
                        worker.engine.pipelines.evict(model_id)
                log.info("clear_cache (event %s): models loaded now: %s", event.id, worker.engine.loaded_models())
                worker.workers.update(worker.worker_id, models=worker.engine.loaded_models())
        return True
