"""What a worker does with the API's control events (store/control.py).

Applied between jobs, never during one:

* `clear_cache`: drop every loaded pipeline (or only the listed models: a model deleted, replaced or
  reloaded through the API), then report the models it holds now;
* `restart`: stop taking jobs and exit cleanly; the supervisor (or, for `diffserve worker`, the
  process itself) starts a fresh worker, and the queue keeps every job that was waiting;
* `register_model` / `unregister_model`: a model or asset added / deleted through the API of any API
  process: into / out of this worker's own models file, the weights fetched from the shared storage
  (engine/models/registrations.py). A worker that starts applies every registration still standing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from diffserve.engine.models.registrations import register, unregister
from diffserve.engine.models.registry import ModelRegistry
from diffserve.storage.base import Storage
from diffserve.store.control import CLEAR_CACHE, REGISTER_MODEL, REGISTRATIONS, RESTART, ControlEvent, ControlLog
from diffserve.store.workers import WorkerStore

if TYPE_CHECKING:  # the model stack is the worker process's only
    from diffserve.engine.generate import Engine

log = logging.getLogger(__name__)


@dataclass
class WorkerOrders:
    control: ControlLog
    registry: ModelRegistry | None = None  # this worker's models file (register_model / unregister_model)
    storage: Storage | None = None  # where an API put the weights it downloaded (register_model's `object`)
    downloads: Path | None = None  # where this worker keeps them
    seen: int = field(default=0)

    def start(self, engine: Engine) -> None:
        """Orders posted before this worker started do not concern it -- but the models registered through the
        API that still stand do."""
        self.seen = self.control.latest_id()
        for event in self.control.registrations(self.seen):
            self._registration(engine, event)

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
            if event.kind in REGISTRATIONS:
                self._registration(engine, event)
                workers.update(worker_id, models=engine.loaded_models())
        return True

    def _registration(self, engine: Engine, event: ControlEvent) -> None:
        if self.registry is None:
            return
        try:
            if event.kind == REGISTER_MODEL:
                register(self.registry, event.payload, fetch=self._fetch if self.storage else None,
                         downloads=self.downloads or Path("downloads"))
            elif unregister(self.registry, event.payload) and event.payload.get("section") == "models":
                engine.pipelines.evict(event.payload["id"])
        except Exception:  # noqa: BLE001 - a bad registration must not stop the worker; its jobs fail clearly
            log.exception("could not apply %s (event %s)", event.kind, event.id)

    def _fetch(self, key: str, path: Path) -> None:
        path.write_bytes(self.storage.get(key))
