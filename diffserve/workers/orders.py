"""What a worker does with the API's control events (store/control.py).

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

from diffserve.store.control import CLEAR_CACHE, RESTART, ControlLog
from diffserve.store.workers import WorkerStore

if TYPE_CHECKING:  # the model stack is the worker process's only
    from diffserve.engine.generate import Engine

log = logging.getLogger(__name__)


@dataclass
class WorkerOrders:
    control: ControlLog
    seen: int = field(default=0)

    def start(self) -> None:
        """Orders posted before this worker started do not concern it."""
        self.seen = self.control.latest_id()

    def apply(self, engine: Engine, workers: WorkerStore, worker_id: str) -> bool:
        """Apply the new events in order. False when the worker must exit (restart)."""
        for event in self.control.since(self.seen):
            self.seen = event.id
            if event.kind == RESTART:
                log.info("restart requested (event %s): exiting between jobs", event.id)
                return False
            if event.kind == CLEAR_CACHE:
                models = event.payload.get("models")
                if models is None:
                    engine.pipelines.clear()
                else:
                    for model_id in models:
                        engine.pipelines.evict(model_id)
                log.info("clear_cache (event %s): models loaded now: %s", event.id, engine.loaded_models())
                workers.update(worker_id, models=engine.loaded_models())
        return True
