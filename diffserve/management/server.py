"""Server management, dialect-agnostic: what the enterprise management endpoints do.

Queue and workers: `system_details`, `clear_queue` (cancel every job no worker has started, each with
a reason), `clear_cache` / `drop_models` (workers unload pipelines between jobs), `restart_workers`
(workers exit cleanly between jobs and the supervisor starts fresh ones; queued jobs stay queued).
Orders reach the workers through the control log in the database (store/control.py).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from diffserve.jobqueue.base import JobQueue
from diffserve.service.submit import DEFAULT_ETA_S
from diffserve.store.control import CLEAR_CACHE, RESTART, ControlLog
from diffserve.store.jobs import JobStore
from diffserve.store.workers import WorkerStore

CLEAR_QUEUE_REASON = "Cancelled by the server operator (clear_queue)"


@dataclass
class ServerAdmin:
    jobs: JobStore
    queue: JobQueue
    workers: WorkerStore
    control: ControlLog

    def system_details(self, models_available: int) -> dict[str, Any]:
        live = self.workers.live()
        claimed = set(self.queue.claimed_by_any())
        pending = self.queue.pending()
        waiting = [j for j in pending if j not in claimed]
        durations = self.jobs.recent_durations()
        per_job = statistics.median(durations) if durations else DEFAULT_ETA_S
        busy_workers = max(1, len(live))
        loaded = sorted({m for w in live for m in w.models})
        return {
            "status": "ok",
            "model_count": len(loaded),
            "models_loaded": loaded,
            "models_available": models_available,
            "queue_length": len(waiting),
            "running": len(pending) - len(waiting),
            "queue_time": round(per_job * len(pending) / busy_workers, 2),
            "worker_count": len(live),
            "workers": [{
                "worker_id": w.worker_id, "machine": w.machine, "pid": w.pid, "state": w.state, "current_job": w.current_job,
                "models": w.models, "labels": list(w.labels), "device": w.device, "dtype": w.dtype,
                "model_cache_gb": round(w.cache_budget_bytes / 1024**3, 2) if w.cache_budget_bytes else None,
                "started_at": w.started_at.isoformat() + "Z" if w.started_at else None,
                "heartbeat_at": w.heartbeat_at.isoformat() + "Z",
            } for w in live],
        }

    def clear_queue(self, reason: str = CLEAR_QUEUE_REASON) -> list[int]:
        """Cancel every job still waiting (running jobs finish). The cancelled job ids."""
        cancelled = []
        for job_id in self.queue.pending():
            if self.jobs.ledger.cancel(job_id, reason):  # one transaction; only jobs no worker has claimed
                cancelled.append(job_id)
        return cancelled

    def clear_cache(self) -> int:
        """Every worker unloads every model between jobs. The number of live workers told."""
        self.control.post(CLEAR_CACHE, {"models": None})
        return len(self.workers.live())

    def drop_models(self, model_ids: list[str]) -> None:
        """Workers unload these models (deleted, replaced or to be reloaded from disk)."""
        self.control.post(CLEAR_CACHE, {"models": list(model_ids)})

    def restart_workers(self) -> int:
        self.control.post(RESTART)
        return len(self.workers.live())
